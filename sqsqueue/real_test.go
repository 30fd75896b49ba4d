package sqsqueue

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/internal/testenv"
)

func startSQS(t *testing.T) *testenv.Env {
	t.Helper()
	env, err := testenv.StartSQS(t.TempDir())
	if err != nil {
		if errors.Is(err, testenv.ErrNotInstalled) && os.Getenv("CI") != "true" {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	t.Cleanup(env.Close)
	return env
}

func realQueue(t *testing.T, env *testenv.Env, url string) *Queue {
	t.Helper()
	q, err := New(context.Background(), Config{URL: url, Endpoint: env.SQS, Region: "us-east-1",
		AccessKeyID: testenv.AccessKey, SecretAccessKey: testenv.SecretKey, WaitTime: time.Second, VisibilityTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// Against the local SQS server: a queue that does not exist is a
// permanent error (nothing a retry mends) that names what to fix; receive,
// extend and delete work on one that does; a batch whose entries fail
// (receipt handles that name no received message) is an error, not a
// silent success.
func TestAgainstTheLocalServer(t *testing.T) {
	env := startSQS(t)
	ctx := context.Background()

	missing := realQueue(t, env, strings.TrimSuffix(env.SQS, "/")+"/123456789012/no-such-queue")
	_, err := missing.Receive(ctx)
	if c, reason := engine.Classify(err); c != engine.Permanent || reason != engine.ReasonInvalid || !strings.Contains(err.Error(), "queue.url") {
		t.Fatalf("receive from a missing queue: %v (class %v, reason %s), want permanent, naming queue.url", err, c, reason)
	}

	url, err := env.CreateQueue(ctx, "real-test", 10)
	if err != nil {
		t.Fatal(err)
	}
	q := realQueue(t, env, url)
	if _, err := env.SQSClient().SendMessage(ctx, &sqs.SendMessageInput{QueueUrl: &url, MessageBody: aws.String(eventBody)}); err != nil {
		t.Fatal(err)
	}
	msgs, err := q.Receive(ctx)
	if err != nil || len(msgs) != 1 || string(msgs[0].Body) != eventBody || msgs[0].ReceiveCount != 1 {
		t.Fatalf("receive: %+v, %v", msgs, err)
	}
	if err := q.ExtendVisibility(ctx, msgs, time.Minute); err != nil {
		t.Fatalf("extend: %v", err)
	}
	bogus := []engine.Message{{ID: "x", Handle: "not-a-receipt-handle"}}
	err = q.ExtendVisibility(ctx, append(bogus, msgs...), time.Minute)
	if err == nil || !strings.Contains(err.Error(), "1 of 2 messages failed") {
		t.Fatalf("extend with a bad receipt handle: %v, want the failed entry reported", err)
	}
	if err := q.Delete(ctx, msgs); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if attrs, err := q.Attributes(ctx); err != nil || attrs["ApproximateNumberOfMessages"] != "0" || attrs["ApproximateNumberOfMessagesNotVisible"] != "0" {
		t.Fatalf("after the delete: %v, %v", attrs, err)
	}
}
