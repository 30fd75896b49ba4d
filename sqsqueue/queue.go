// Package sqsqueue adapts an SQS queue to the engine's Queue interface.
package sqsqueue

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/aws/smithy-go"

	"github.com/s3replicad/s3replicad/awsclient"
	"github.com/s3replicad/s3replicad/engine"
)

// Config describes the queue.
type Config struct {
	URL               string
	Region            string
	Endpoint          string
	AccessKeyID       string
	SecretAccessKey   string
	WaitTime          time.Duration
	VisibilityTimeout time.Duration
	CAFile            string
	// CallTimeout bounds every call but a long poll, which gets WaitTime
	// plus CallTimeout (0: 30s).
	CallTimeout time.Duration
	// UserAgent, when set, is sent instead of the SDK's, which the SDK
	// rebuilds for every request.
	UserAgent string
	// HTTPClient replaces the client built from CAFile (tests use it).
	HTTPClient interface {
		Do(*http.Request) (*http.Response, error)
	}
}

// Queue is an SQS queue.
type Queue struct {
	client *sqs.Client
	cfg    Config
}

var _ engine.Queue = (*Queue)(nil)

// New builds a Queue.
func New(ctx context.Context, c Config) (*Queue, error) {
	if c.Region == "" {
		c.Region = regionFromURL(c.URL)
	}
	awsCfg, err := awsclient.Config(ctx, c.Region, c.AccessKeyID, c.SecretAccessKey, "")
	if err != nil {
		return nil, err
	}
	if c.CallTimeout <= 0 {
		c.CallTimeout = 30 * time.Second
	}
	// A long poll is silent by design: calls get context deadlines rather
	// than the S3 transport's stall deadline.
	var hc interface {
		Do(*http.Request) (*http.Response, error)
	} = c.HTTPClient
	if hc == nil {
		if hc, err = awsclient.NewHTTPClient(awsclient.TransportConfig{CAFile: c.CAFile, MaxConns: 16,
			StallTimeout: c.CallTimeout, NoProgressDeadline: true}); err != nil {
			return nil, err
		}
	}
	client := sqs.NewFromConfig(awsCfg, func(o *sqs.Options) {
		o.HTTPClient = hc
		if c.Endpoint != "" {
			o.BaseEndpoint = aws.String(c.Endpoint)
		}
		// The engine retries receives and deletes with its own backoff.
		o.Retryer = aws.NopRetryer{}
		if c.UserAgent != "" {
			o.APIOptions = append(o.APIOptions, awsclient.StaticUserAgent(c.UserAgent))
		}
	})
	return &Queue{client: client, cfg: c}, nil
}

// regionFromURL reads the region out of an AWS queue URL
// (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME).
func regionFromURL(u string) string {
	if _, rest, ok := strings.Cut(u, "://sqs."); ok {
		if region, _, ok := strings.Cut(rest, "."); ok {
			return region
		}
	}
	return "us-east-1"
}

// Client exposes the SDK client (check-config uses it).
func (q *Queue) Client() *sqs.Client { return q.client }

// Receive implements engine.Queue: one long poll for up to ten messages.
func (q *Queue) Receive(ctx context.Context) ([]engine.Message, error) {
	ctx, cancel := context.WithTimeout(ctx, q.cfg.WaitTime+q.cfg.CallTimeout)
	defer cancel()
	out, err := q.client.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{
		QueueUrl:            &q.cfg.URL,
		MaxNumberOfMessages: 10,
		WaitTimeSeconds:     int32(q.cfg.WaitTime / time.Second),
		VisibilityTimeout:   int32(q.cfg.VisibilityTimeout / time.Second),
		MessageSystemAttributeNames: []types.MessageSystemAttributeName{
			types.MessageSystemAttributeNameApproximateReceiveCount,
		},
		// Some SQS-compatible servers return the receive count only when
		// asked through the older parameter too.
		AttributeNames: []types.QueueAttributeName{"ApproximateReceiveCount"},
	})
	if err != nil {
		return nil, classify(fmt.Errorf("receive from %s: %w", q.cfg.URL, err))
	}
	msgs := make([]engine.Message, 0, len(out.Messages))
	for _, m := range out.Messages {
		n, _ := strconv.Atoi(m.Attributes["ApproximateReceiveCount"])
		msgs = append(msgs, engine.Message{
			ID: aws.ToString(m.MessageId), Body: []byte(aws.ToString(m.Body)),
			Handle: aws.ToString(m.ReceiptHandle), ReceiveCount: n,
		})
	}
	return msgs, nil
}

// Delete implements engine.Queue with DeleteMessageBatch.
func (q *Queue) Delete(ctx context.Context, msgs []engine.Message) error {
	ctx, cancel := context.WithTimeout(ctx, q.cfg.CallTimeout)
	defer cancel()
	for len(msgs) > 0 {
		n := min(len(msgs), 10)
		batch := msgs[:n]
		msgs = msgs[n:]
		entries := make([]types.DeleteMessageBatchRequestEntry, len(batch))
		for i, m := range batch {
			entries[i] = types.DeleteMessageBatchRequestEntry{Id: aws.String(strconv.Itoa(i)), ReceiptHandle: aws.String(m.Handle)}
		}
		out, err := q.client.DeleteMessageBatch(ctx, &sqs.DeleteMessageBatchInput{QueueUrl: &q.cfg.URL, Entries: entries})
		if err != nil {
			return classify(fmt.Errorf("delete messages: %w", err))
		}
		if err := entriesFailed("delete", len(batch), out.Failed); err != nil {
			return err
		}
	}
	return nil
}

// ExtendVisibility implements engine.Queue.
func (q *Queue) ExtendVisibility(ctx context.Context, msgs []engine.Message, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, q.cfg.CallTimeout)
	defer cancel()
	for len(msgs) > 0 {
		n := min(len(msgs), 10)
		batch := msgs[:n]
		msgs = msgs[n:]
		entries := make([]types.ChangeMessageVisibilityBatchRequestEntry, len(batch))
		for i, m := range batch {
			entries[i] = types.ChangeMessageVisibilityBatchRequestEntry{
				Id: aws.String(strconv.Itoa(i)), ReceiptHandle: aws.String(m.Handle), VisibilityTimeout: int32(d / time.Second),
			}
		}
		out, err := q.client.ChangeMessageVisibilityBatch(ctx, &sqs.ChangeMessageVisibilityBatchInput{QueueUrl: &q.cfg.URL, Entries: entries})
		if err != nil {
			return classify(fmt.Errorf("change message visibility: %w", err))
		}
		// A batch call succeeds while entries in it fail (an expired
		// receipt handle): those messages come back at their old time.
		if err := entriesFailed("change the visibility of", len(batch), out.Failed); err != nil {
			return err
		}
	}
	return nil
}

// Attributes fetches the queue's attributes (check-config uses it to prove
// the queue exists and is reachable).
func (q *Queue) Attributes(ctx context.Context) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, q.cfg.CallTimeout)
	defer cancel()
	out, err := q.client.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl: &q.cfg.URL, AttributeNames: []types.QueueAttributeName{types.QueueAttributeNameAll},
	})
	if err != nil {
		return nil, classify(err)
	}
	return out.Attributes, nil
}

// entriesFailed reports the entries of a batch call that failed.
func entriesFailed(what string, n int, failed []types.BatchResultErrorEntry) error {
	if len(failed) == 0 {
		return nil
	}
	f := failed[0]
	return &engine.Error{Class: engine.Transient, Reason: engine.ReasonOther,
		Err: fmt.Errorf("%s %d of %d messages failed, e.g. %s: %s", what, len(failed), n, aws.ToString(f.Code), aws.ToString(f.Message))}
}

// classify marks what no retry mends (a missing queue, refused
// credentials or permissions) as permanent, throttling as such, and
// everything else as transient, for the engine to say and do the right
// thing.
func classify(err error) error {
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return &engine.Error{Class: engine.Transient, Reason: engine.ReasonNetwork, Err: err}
	}
	switch ae.ErrorCode() {
	case "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist":
		return &engine.Error{Class: engine.Permanent, Reason: engine.ReasonInvalid, Err: fmt.Errorf("%w (the queue does not exist: check queue.url)", err)}
	case "AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "UnrecognizedClientException",
		"SignatureDoesNotMatch", "InvalidAccessKeyId", "MissingAuthenticationToken", "KMS.AccessDeniedException":
		return &engine.Error{Class: engine.Permanent, Reason: engine.ReasonAccessDenied, Err: fmt.Errorf("%w (%s)", err, awsclient.Describe(err))}
	case "Throttling", "ThrottlingException", "RequestThrottled", "OverLimit":
		return &engine.Error{Class: engine.Transient, Reason: engine.ReasonThrottled, Err: err}
	}
	return &engine.Error{Class: engine.Transient, Reason: engine.ReasonOther, Err: err}
}
