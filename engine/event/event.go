// Package event decodes the bodies of queue messages that carry S3 change
// notifications: native S3 event notifications, the same wrapped by SNS, and
// EventBridge "Object Created"/"Object Deleted" events.
//
// Decode is a pure function over bytes so that it can be table-tested and
// fuzzed; it never panics and never performs I/O.
package event

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Kind is what a record asks the replicator to do.
type Kind int

const (
	// Created: a new object version exists.
	Created Kind = iota + 1
	// DeleteMarker: a delete marker was put on top of the key.
	DeleteMarker
	// VersionDeleted: a version (or an unversioned object) was removed for good.
	VersionDeleted
	// Test: the s3:TestEvent S3 sends when a notification is configured.
	Test
	// Other: a well-formed record of a kind the replicator ignores
	// (restores, lifecycle transitions, replication events...).
	Other
)

// MetricKind is the value of the `kind` label of s3replicad_events_received_total.
func (k Kind) MetricKind() string {
	switch k {
	case Created:
		return "created"
	case DeleteMarker, VersionDeleted:
		return "removed"
	case Test:
		return "test"
	default:
		return "other"
	}
}

func (k Kind) String() string {
	switch k {
	case Created:
		return "created"
	case DeleteMarker:
		return "delete-marker"
	case VersionDeleted:
		return "version-deleted"
	case Test:
		return "test"
	default:
		return "other"
	}
}

// Record is one change notification, normalised across formats.
type Record struct {
	Kind      Kind
	Name      string // the event name as sent, e.g. "ObjectCreated:Put"
	Bucket    string
	Key       string // decoded
	VersionID string
	Sequencer string
	ETag      string
	Size      int64
	Time      time.Time
}

// ErrMalformed is wrapped by every error Decode returns.
var ErrMalformed = errors.New("malformed event")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// Decode parses one message body into its records. A body it cannot
// interpret as a whole returns an error wrapping ErrMalformed and no records:
// the message is then left to the queue's redrive policy.
func Decode(body []byte) ([]Record, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, malformed("empty body")
	}
	if recs, ok := decodeS3Once(body); ok {
		return recs, nil
	}
	return decodeGeneral(body)
}

// decodeGeneral decodes a trimmed, non-empty body of any accepted shape.
func decodeGeneral(body []byte) ([]Record, error) {
	var probe struct {
		Records    json.RawMessage `json:"Records"`
		Type       string          `json:"Type"`
		Message    *string         `json:"Message"`
		DetailType string          `json:"detail-type"`
		Detail     json.RawMessage `json:"detail"`
		Event      string          `json:"Event"`
	}
	if err := json.Unmarshal(body, &probe); err != nil {
		return nil, malformed("not a JSON object: %v", err)
	}
	switch {
	case probe.Records != nil:
		return decodeS3(probe.Records)
	case probe.Type == "Notification" && probe.Message != nil:
		inner := []byte(*probe.Message)
		// An SNS envelope around another SNS envelope is not something S3 sends.
		var again struct {
			Type string `json:"Type"`
		}
		if json.Unmarshal(inner, &again) == nil && again.Type == "Notification" {
			return nil, malformed("nested SNS notification")
		}
		return Decode(inner)
	case probe.DetailType != "" && probe.Detail != nil:
		return decodeEventBridge(body)
	case probe.Event == "s3:TestEvent":
		return decodeTestEvent(body)
	}
	return nil, malformed("unknown message shape")
}

type s3Record struct {
	EventVersion string `json:"eventVersion"`
	EventSource  string `json:"eventSource"`
	EventTime    string `json:"eventTime"`
	EventName    string `json:"eventName"`
	S3           *struct {
		Bucket struct {
			Name string `json:"name"`
		} `json:"bucket"`
		Object struct {
			Key       *string      `json:"key"`
			Size      *json.Number `json:"size"`
			ETag      string       `json:"eTag"`
			VersionID string       `json:"versionId"`
			Sequencer string       `json:"sequencer"`
		} `json:"object"`
	} `json:"s3"`
}

// decodeS3Once decodes what S3 itself sends, a body with one Records list,
// in one pass of the JSON decoder rather than four (a probe for the shape,
// then the records again): on a busy bucket that is most of the decoder's
// work. It answers only when the answer is sure to be the general path's:
// ok is false for anything else (another shape, an error to describe, or a
// body in which "Records" may appear twice, where encoding/json would merge
// the two lists into one, spelled in any case, escaped or folded), and the
// caller then takes the general path.
func decodeS3Once(body []byte) ([]Record, bool) {
	if !oneRecordsKey(body) {
		return nil, false
	}
	var msg struct {
		Records *[]s3Record `json:"Records"`
		// The probe's other fields, so that a body the probe refuses is
		// refused here too.
		Type       string          `json:"Type"`
		Message    *string         `json:"Message"`
		DetailType string          `json:"detail-type"`
		Detail     json.RawMessage `json:"detail"`
		Event      string          `json:"Event"`
	}
	if err := json.Unmarshal(body, &msg); err != nil || msg.Records == nil {
		return nil, false
	}
	recs, err := s3Records(*msg.Records)
	if err != nil {
		return nil, false
	}
	return recs, true
}

// oneRecordsKey reports whether body is ASCII without \u escapes and has
// one string ending in "ecords", in any case: then "Records" (as
// encoding/json matches names: case-insensitively, with Unicode folding,
// after unescaping) can be a key once at most. It looks at a word of bytes
// at a time and only at the quotes, so that it costs the decoder little.
func oneRecordsKey(body []byte) bool {
	if bytes.Contains(body, []byte(`\u`)) {
		return false
	}
	i := 0
	for ; i+8 <= len(body); i += 8 {
		if binary.LittleEndian.Uint64(body[i:])&0x8080808080808080 != 0 {
			return false
		}
	}
	for ; i < len(body); i++ {
		if body[i] >= 0x80 {
			return false
		}
	}
	const name = "ecords"
	n := 0
	for i := 0; ; i++ {
		j := bytes.IndexByte(body[i:], '"')
		if j < 0 {
			return n == 1
		}
		i += j
		if i >= len(name) && asciiFold(body[i-len(name):i], name) {
			if n++; n > 1 {
				return false
			}
		}
	}
}

func asciiFold(b []byte, s string) bool {
	for i := range len(s) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

func decodeS3(raw json.RawMessage) ([]Record, error) {
	var recs []s3Record
	if err := json.Unmarshal(raw, &recs); err != nil {
		return nil, malformed("Records is not a list of records: %v", err)
	}
	return s3Records(recs)
}

// s3Records checks and converts decoded S3 records.
func s3Records(recs []s3Record) ([]Record, error) {
	if len(recs) == 0 {
		return nil, malformed("Records is empty")
	}
	out := make([]Record, 0, len(recs))
	for i, r := range recs {
		if !strings.HasPrefix(r.EventVersion, "2.") {
			return nil, malformed("record %d: unsupported eventVersion %q", i, r.EventVersion)
		}
		if r.S3 == nil {
			return nil, malformed("record %d: no s3 section", i)
		}
		if r.S3.Bucket.Name == "" {
			return nil, malformed("record %d: no bucket name", i)
		}
		if r.S3.Object.Key == nil || *r.S3.Object.Key == "" {
			return nil, malformed("record %d: no object key", i)
		}
		// S3 sends keys form-URL-encoded: '+' is a space, '%2B' a plus.
		key, err := url.QueryUnescape(*r.S3.Object.Key)
		if err != nil {
			return nil, malformed("record %d: key %q is not form-URL-encoded: %v", i, *r.S3.Object.Key, err)
		}
		if key == "" {
			return nil, malformed("record %d: empty object key", i)
		}
		size, err := parseSize(r.S3.Object.Size)
		if err != nil {
			return nil, malformed("record %d: %v", i, err)
		}
		seq := r.S3.Object.Sequencer
		if !validSequencer(seq) {
			return nil, malformed("record %d: sequencer %q is not hexadecimal", i, seq)
		}
		rec := Record{
			Name:      r.EventName,
			Bucket:    r.S3.Bucket.Name,
			Key:       key,
			VersionID: normaliseVersion(r.S3.Object.VersionID),
			Sequencer: seq,
			ETag:      strings.Trim(r.S3.Object.ETag, `"`),
			Size:      size,
			Time:      parseTime(r.EventTime),
			Kind:      s3Kind(r.EventName),
		}
		out = append(out, rec)
	}
	return out, nil
}

func s3Kind(name string) Kind {
	switch {
	case strings.HasPrefix(name, "ObjectCreated:"):
		return Created
	case name == "ObjectRemoved:DeleteMarkerCreated":
		return DeleteMarker
	case name == "ObjectRemoved:Delete":
		return VersionDeleted
	case strings.HasPrefix(name, "ObjectRemoved:"):
		// Unknown future removal kinds are treated as the safe case: never
		// propagated, counted as a delete not replicated.
		return VersionDeleted
	}
	return Other
}

type ebEvent struct {
	DetailType string `json:"detail-type"`
	Source     string `json:"source"`
	Time       string `json:"time"`
	Detail     struct {
		Bucket struct {
			Name string `json:"name"`
		} `json:"bucket"`
		Object struct {
			Key       *string      `json:"key"`
			Size      *json.Number `json:"size"`
			ETag      string       `json:"etag"`
			VersionID string       `json:"version-id"`
			Sequencer string       `json:"sequencer"`
		} `json:"object"`
		Reason       string `json:"reason"`
		DeletionType string `json:"deletion-type"`
	} `json:"detail"`
}

func decodeEventBridge(body []byte) ([]Record, error) {
	var e ebEvent
	if err := json.Unmarshal(body, &e); err != nil {
		return nil, malformed("EventBridge event: %v", err)
	}
	var kind Kind
	switch e.DetailType {
	case "Object Created":
		kind = Created
	case "Object Deleted":
		if e.Detail.DeletionType == "Delete Marker Created" {
			kind = DeleteMarker
		} else {
			kind = VersionDeleted
		}
	default:
		kind = Other
	}
	if e.Detail.Bucket.Name == "" {
		return nil, malformed("EventBridge event: no detail.bucket.name")
	}
	if e.Detail.Object.Key == nil || *e.Detail.Object.Key == "" {
		if kind == Other {
			// e.g. bucket-level events; nothing to replicate.
			return []Record{{Kind: Other, Name: e.DetailType, Bucket: e.Detail.Bucket.Name, Time: parseTime(e.Time)}}, nil
		}
		return nil, malformed("EventBridge event: no detail.object.key")
	}
	size, err := parseSize(e.Detail.Object.Size)
	if err != nil {
		return nil, malformed("EventBridge event: %v", err)
	}
	if !validSequencer(e.Detail.Object.Sequencer) {
		return nil, malformed("EventBridge event: sequencer %q is not hexadecimal", e.Detail.Object.Sequencer)
	}
	return []Record{{
		Kind:      kind,
		Name:      e.DetailType,
		Bucket:    e.Detail.Bucket.Name,
		Key:       *e.Detail.Object.Key, // EventBridge keys are not encoded
		VersionID: normaliseVersion(e.Detail.Object.VersionID),
		Sequencer: e.Detail.Object.Sequencer,
		ETag:      strings.Trim(e.Detail.Object.ETag, `"`),
		Size:      size,
		Time:      parseTime(e.Time),
	}}, nil
}

func decodeTestEvent(body []byte) ([]Record, error) {
	var t struct {
		Bucket string `json:"Bucket"`
		Time   string `json:"Time"`
	}
	if err := json.Unmarshal(body, &t); err != nil {
		return nil, malformed("test event: %v", err)
	}
	return []Record{{Kind: Test, Name: "s3:TestEvent", Bucket: t.Bucket, Time: parseTime(t.Time)}}, nil
}

func parseSize(n *json.Number) (int64, error) {
	if n == nil {
		return -1, nil // unknown: the copier learns it from the source
	}
	v, err := n.Int64()
	if err != nil || v < 0 {
		return 0, fmt.Errorf("size %q is not a non-negative integer", n.String())
	}
	return v, nil
}

func parseTime(s string) time.Time {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t
	}
	return time.Time{}
}

// normaliseVersion maps the unversioned spellings to "".
func normaliseVersion(v string) string {
	if v == "null" {
		return ""
	}
	return v
}

func validSequencer(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// CompareSequencer orders two S3 sequencers for the same key, as AWS
// documents: left-align them, pad the shorter with zeros on the right, and
// compare as hexadecimal. It returns -1, 0 or +1. An empty sequencer is
// unknown and compares equal to anything; callers check for that first.
func CompareSequencer(a, b string) int {
	if a == "" || b == "" {
		return 0
	}
	n := max(len(a), len(b))
	for i := 0; i < n; i++ {
		ca, cb := hexAt(a, i), hexAt(b, i)
		if ca != cb {
			if ca < cb {
				return -1
			}
			return 1
		}
	}
	return 0
}

func hexAt(s string, i int) byte {
	if i >= len(s) {
		return 0
	}
	c := s[i]
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10
	}
	return 0
}
