package sqsqueue

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/smithy-go"

	"github.com/s3replicad/s3replicad/engine"
)

// cannedSQS answers the JSON protocol's ReceiveMessage with ten messages
// and every other call with success, recording the requests' targets and
// User-Agents; no network.
type cannedSQS struct {
	receive []byte
	mu      sync.Mutex
	targets []string
	agents  []string
}

func newCannedSQS(body string) *cannedSQS {
	sum := md5.Sum([]byte(body))
	var msgs []map[string]any
	for i := range 10 {
		msgs = append(msgs, map[string]any{"MessageId": fmt.Sprintf("m%d", i), "ReceiptHandle": fmt.Sprintf("h%d", i),
			"MD5OfBody": hex.EncodeToString(sum[:]), "Body": body, "Attributes": map[string]string{"ApproximateReceiveCount": "2"}})
	}
	raw, _ := json.Marshal(map[string]any{"Messages": msgs})
	return &cannedSQS{receive: raw}
}

func (c *cannedSQS) Do(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	target := r.Header.Get("X-Amz-Target")
	c.mu.Lock()
	c.targets = append(c.targets, target)
	c.agents = append(c.agents, r.Header.Get("User-Agent"))
	c.mu.Unlock()
	body := []byte(`{}`)
	switch {
	case strings.HasSuffix(target, ".ReceiveMessage"):
		body = c.receive
	case strings.HasSuffix(target, ".DeleteMessageBatch"):
		body = []byte(`{"Successful":[],"Failed":[]}`)
	}
	h := http.Header{}
	h.Set("Content-Type", "application/x-amz-json-1.0")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	return &http.Response{StatusCode: 200, Status: "200 OK", Header: h, ContentLength: int64(len(body)),
		Body: io.NopCloser(bytes.NewReader(body)), Request: r}, nil
}

func newTestQueue(tb testing.TB, hc *cannedSQS) *Queue {
	tb.Helper()
	q, err := New(context.Background(), Config{URL: "https://sqs.us-east-1.amazonaws.com/123456789012/events",
		AccessKeyID: "AK", SecretAccessKey: "SK", WaitTime: time.Second, VisibilityTimeout: time.Minute,
		UserAgent: "s3replicad/test", HTTPClient: hc})
	if err != nil {
		tb.Fatal(err)
	}
	return q
}

const eventBody = `{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k","size":1,"sequencer":"01"}}}]}`

func TestReceiveAndDelete(t *testing.T) {
	hc := newCannedSQS(eventBody)
	q := newTestQueue(t, hc)
	ctx := context.Background()
	msgs, err := q.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 10 || msgs[3].ID != "m3" || msgs[3].Handle != "h3" || msgs[3].ReceiveCount != 2 || string(msgs[3].Body) != eventBody {
		t.Fatalf("received %d messages, the fourth %+v", len(msgs), msgs[3])
	}
	if err := q.Delete(ctx, append(msgs, msgs[:5]...)); err != nil {
		t.Fatal(err)
	}
	if err := q.ExtendVisibility(ctx, msgs, time.Minute); err != nil {
		t.Fatal(err)
	}
	want := []string{"AmazonSQS.ReceiveMessage", "AmazonSQS.DeleteMessageBatch", "AmazonSQS.DeleteMessageBatch", "AmazonSQS.ChangeMessageVisibilityBatch"}
	if strings.Join(hc.targets, " ") != strings.Join(want, " ") {
		t.Fatalf("calls %v, want %v", hc.targets, want)
	}
	for _, ua := range hc.agents {
		if ua != "s3replicad/test" {
			t.Fatalf("User-Agent %q, want the configured one", ua)
		}
	}
}

// BenchmarkQueuePerMessage is the adapter's cost per message of a full
// receive (ten messages) and their deletion in one batch, network aside.
func BenchmarkQueuePerMessage(b *testing.B) {
	q := newTestQueue(b, newCannedSQS(eventBody))
	ctx := context.Background()
	b.ReportAllocs()
	var msgs []engine.Message
	for b.Loop() {
		var err error
		if msgs, err = q.Receive(ctx); err != nil {
			b.Fatal(err)
		}
		if err := q.Delete(ctx, msgs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(msgs)), "ns/message")
}

// Errors are classified where they enter: what no retry mends is
// permanent (the engine says so loudly and tries again slowly), throttling
// is throttling, the rest transient.
func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err    error
		class  engine.Class
		reason string
	}{
		{&smithy.GenericAPIError{Code: "AWS.SimpleQueueService.NonExistentQueue"}, engine.Permanent, engine.ReasonInvalid},
		{&smithy.GenericAPIError{Code: "QueueDoesNotExist"}, engine.Permanent, engine.ReasonInvalid},
		{&smithy.GenericAPIError{Code: "AccessDenied"}, engine.Permanent, engine.ReasonAccessDenied},
		{&smithy.GenericAPIError{Code: "InvalidClientTokenId"}, engine.Permanent, engine.ReasonAccessDenied},
		{&smithy.GenericAPIError{Code: "SignatureDoesNotMatch"}, engine.Permanent, engine.ReasonAccessDenied},
		{&smithy.GenericAPIError{Code: "KMS.AccessDeniedException"}, engine.Permanent, engine.ReasonAccessDenied},
		{&smithy.GenericAPIError{Code: "RequestThrottled"}, engine.Transient, engine.ReasonThrottled},
		{&smithy.GenericAPIError{Code: "InternalError"}, engine.Transient, engine.ReasonOther},
		{fmt.Errorf("dial: %w", syscall.ECONNREFUSED), engine.Transient, engine.ReasonNetwork},
	} {
		err := classify(fmt.Errorf("receive: %w", tc.err))
		if c, reason := engine.Classify(err); c != tc.class || reason != tc.reason {
			t.Errorf("%v: class %v reason %s, want %v %s", tc.err, c, reason, tc.class, tc.reason)
		}
		if !errors.Is(err, tc.err) {
			t.Errorf("%v: the classified error lost its cause", tc.err)
		}
	}
}
