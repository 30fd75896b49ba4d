package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// Publisher puts messages on a queue the way S3 event notifications do.
type Publisher struct {
	Client *sqs.Client
	URL    string
	seq    atomic.Uint64
}

// Publisher returns a publisher for the queue at url.
func (e *Env) Publisher(url string) *Publisher {
	p := &Publisher{Client: e.SQSClient(), URL: url}
	p.seq.Store(uint64(time.Now().UnixNano()))
	return p
}

// Sequencer returns a new S3-style sequencer, greater than every one before.
func (p *Publisher) Sequencer() string {
	return fmt.Sprintf("00%016X", p.seq.Add(1))
}

// Event describes one change on the source.
type Event struct {
	Name      string // e.g. ObjectCreated:Put
	Bucket    string
	Key       string // plain; encoded as S3 does when rendered
	VersionID string
	ETag      string
	Size      int64
	Sequencer string
	Time      time.Time
}

// EncodeKey encodes a key the way S3 notifications do (form URL encoding).
func EncodeKey(k string) string { return url.QueryEscape(k) }

// Record renders an event as an S3 notification record.
func (ev Event) Record() map[string]any {
	obj := map[string]any{"key": EncodeKey(ev.Key), "sequencer": ev.Sequencer}
	if ev.VersionID != "" {
		obj["versionId"] = ev.VersionID
	}
	if strings.HasPrefix(ev.Name, "ObjectCreated:") {
		obj["size"] = ev.Size
		obj["eTag"] = ev.ETag
	}
	t := ev.Time
	if t.IsZero() {
		t = time.Now()
	}
	return map[string]any{
		"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": Region,
		"eventTime": t.UTC().Format("2006-01-02T15:04:05.000Z"), "eventName": ev.Name,
		"userIdentity":      map[string]any{"principalId": "AWS:TESTER"},
		"requestParameters": map[string]any{"sourceIPAddress": "127.0.0.1"},
		"responseElements":  map[string]any{"x-amz-request-id": "REQ", "x-amz-id-2": "ID2"},
		"s3": map[string]any{
			"s3SchemaVersion": "1.0", "configurationId": "s3replicad",
			"bucket": map[string]any{"name": ev.Bucket, "ownerIdentity": map[string]any{"principalId": "OWNER"}, "arn": "arn:aws:s3:::" + ev.Bucket},
			"object": obj,
		},
	}
}

// S3Body renders events as one S3 notification message.
func S3Body(evs ...Event) string {
	recs := make([]any, len(evs))
	for i, ev := range evs {
		recs[i] = ev.Record()
	}
	b, _ := json.Marshal(map[string]any{"Records": recs})
	return string(b)
}

// SNSBody wraps a message body in an SNS notification.
func SNSBody(inner string) string {
	b, _ := json.Marshal(map[string]any{
		"Type": "Notification", "MessageId": "sns-msg", "TopicArn": "arn:aws:sns:us-east-1:123456789012:s3",
		"Subject": "Amazon S3 Notification", "Message": inner, "Timestamp": time.Now().UTC().Format(time.RFC3339),
	})
	return string(b)
}

// EventBridgeBody renders an event as EventBridge would deliver it.
func EventBridgeBody(ev Event) string {
	detailType, reason := "Object Created", "PutObject"
	detail := map[string]any{
		"version": "0", "bucket": map[string]any{"name": ev.Bucket},
		"object": map[string]any{"key": ev.Key, "version-id": ev.VersionID, "sequencer": ev.Sequencer},
	}
	switch ev.Name {
	case "ObjectRemoved:DeleteMarkerCreated":
		detailType, reason = "Object Deleted", "DeleteObject"
		detail["deletion-type"] = "Delete Marker Created"
	case "ObjectRemoved:Delete":
		detailType, reason = "Object Deleted", "DeleteObject"
		detail["deletion-type"] = "Permanently Deleted"
	default:
		obj := detail["object"].(map[string]any)
		obj["size"], obj["etag"] = ev.Size, ev.ETag
	}
	detail["reason"] = reason
	b, _ := json.Marshal(map[string]any{
		"version": "0", "id": "eb-1", "detail-type": detailType, "source": "aws.s3", "account": "123456789012",
		"time": time.Now().UTC().Format(time.RFC3339), "region": Region, "resources": []string{"arn:aws:s3:::" + ev.Bucket},
		"detail": detail,
	})
	return string(b)
}

// TestEventBody is the message S3 sends when a notification is configured.
func TestEventBody(bucket string) string {
	return fmt.Sprintf(`{"Service":"Amazon S3","Event":"s3:TestEvent","Time":%q,"Bucket":%q,"RequestId":"R","HostId":"H"}`,
		time.Now().UTC().Format(time.RFC3339), bucket)
}

// Send puts raw bodies on the queue (batches of ten).
func (p *Publisher) Send(ctx context.Context, bodies ...string) error {
	for len(bodies) > 0 {
		n := min(10, len(bodies))
		var entries []sqstypes.SendMessageBatchRequestEntry
		for i, b := range bodies[:n] {
			entries = append(entries, sqstypes.SendMessageBatchRequestEntry{Id: aws.String(fmt.Sprint(i)), MessageBody: aws.String(b)})
		}
		out, err := p.Client.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: &p.URL, Entries: entries})
		if err != nil {
			return fmt.Errorf("send messages: %w", err)
		}
		if len(out.Failed) > 0 {
			return fmt.Errorf("send messages: %d failed", len(out.Failed))
		}
		bodies = bodies[n:]
	}
	return nil
}

// SendEvents publishes one S3 notification message per event.
func (p *Publisher) SendEvents(ctx context.Context, evs ...Event) error {
	bodies := make([]string, len(evs))
	for i, ev := range evs {
		bodies[i] = S3Body(ev)
	}
	return p.Send(ctx, bodies...)
}

// Put writes an object version on the source and returns the event S3
// would send for it, with a fresh sequencer.
func (p *Publisher) Put(ctx context.Context, c *s3.Client, bucket, key string, body []byte, opts ...func(*s3.PutObjectInput)) (Event, error) {
	in := &s3.PutObjectInput{Bucket: &bucket, Key: &key, Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body)))}
	for _, o := range opts {
		o(in)
	}
	out, err := c.PutObject(ctx, in)
	if err != nil {
		return Event{}, fmt.Errorf("put %s: %w", key, err)
	}
	return Event{Name: "ObjectCreated:Put", Bucket: bucket, Key: key, VersionID: aws.ToString(out.VersionId),
		ETag: strings.Trim(aws.ToString(out.ETag), `"`), Size: int64(len(body)), Sequencer: p.Sequencer(), Time: time.Now()}, nil
}

// DeleteMarker puts a delete marker on a source key and returns its event.
func (p *Publisher) DeleteMarker(ctx context.Context, c *s3.Client, bucket, key string) (Event, error) {
	out, err := c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		return Event{}, fmt.Errorf("delete %s: %w", key, err)
	}
	return Event{Name: "ObjectRemoved:DeleteMarkerCreated", Bucket: bucket, Key: key,
		VersionID: aws.ToString(out.VersionId), Sequencer: p.Sequencer(), Time: time.Now()}, nil
}

// DeleteVersion deletes a source version for good and returns its event.
func (p *Publisher) DeleteVersion(ctx context.Context, c *s3.Client, bucket, key, version string) (Event, error) {
	if _, err := c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &bucket, Key: &key, VersionId: &version}); err != nil {
		return Event{}, fmt.Errorf("delete %s@%s: %w", key, version, err)
	}
	return Event{Name: "ObjectRemoved:Delete", Bucket: bucket, Key: key, VersionID: version, Sequencer: p.Sequencer(), Time: time.Now()}, nil
}
