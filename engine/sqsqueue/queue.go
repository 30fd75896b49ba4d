// Package sqsqueue adapts an SQS queue to the engine's Queue interface.
package sqsqueue

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/engine/s3store"
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
	awsCfg, err := s3store.AWSConfig(ctx, c.Region, c.AccessKeyID, c.SecretAccessKey, "")
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
		if hc, err = s3store.NewHTTPClient(s3store.TransportConfig{CAFile: c.CAFile, MaxConns: 16,
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
			o.APIOptions = append(o.APIOptions, s3store.StaticUserAgent(c.UserAgent))
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
		return nil, fmt.Errorf("receive from %s: %w", q.cfg.URL, err)
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
			return fmt.Errorf("delete messages: %w", err)
		}
		if len(out.Failed) > 0 {
			f := out.Failed[0]
			return fmt.Errorf("delete messages: %d failed, first: %s %s", len(out.Failed), aws.ToString(f.Code), aws.ToString(f.Message))
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
		if _, err := q.client.ChangeMessageVisibilityBatch(ctx, &sqs.ChangeMessageVisibilityBatchInput{QueueUrl: &q.cfg.URL, Entries: entries}); err != nil {
			return fmt.Errorf("extend visibility: %w", err)
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
		return nil, err
	}
	return out.Attributes, nil
}
