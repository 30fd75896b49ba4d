package engine_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/checkpoint"
	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/internal/testenv"
)

// The whole path of one small object through the engine: an S3 event
// notification received from the queue, decoded and recorded in a real
// state file, the version read from the source and written to the
// destination, the completion recorded and the message deleted. The queue
// and the stores are in-process fakes that allocate little and do no I/O,
// so that what is measured is the engine's own cost per object (the S3 and
// SQS adapters have their benchmarks in their packages).

// objectPathSize is W1's object size (make bench).
const objectPathSize = 64 << 10

// pathQueue hands out the messages sent on in, one receive per send, and
// reports each delete on deleted.
type pathQueue struct {
	in      chan []engine.Message
	deleted chan int
}

func (q *pathQueue) Receive(ctx context.Context) ([]engine.Message, error) {
	select {
	case msgs := <-q.in:
		return msgs, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (q *pathQueue) Delete(_ context.Context, msgs []engine.Message) error {
	q.deleted <- len(msgs)
	return nil
}

func (q *pathQueue) ExtendVisibility(context.Context, []engine.Message, time.Duration) error {
	return nil
}

// pathSource serves the same bytes for every version.
type pathSource struct {
	data []byte
	etag string
}

// pathBody is a version's body: one allocation, as a reader over the
// response buffer is in an HTTP client.
type pathBody struct{ bytes.Reader }

func (*pathBody) Close() error { return nil }

func (s *pathSource) Get(_ context.Context, v engine.VersionRef, r *engine.ByteRange) (*engine.Object, error) {
	if r != nil {
		return nil, errors.New("ranged reads are not on a small object's path")
	}
	body := &pathBody{}
	body.Reset(s.data)
	return &engine.Object{
		ObjectMeta: engine.ObjectMeta{ContentType: "application/octet-stream"},
		Size:       int64(len(s.data)), ETag: s.etag, VersionID: v.VersionID, Body: body,
	}, nil
}

func (s *pathSource) Tags(context.Context, string, string, string) (map[string]string, error) {
	return nil, errors.New("the objects have no tags: Tags must not be called")
}

func (s *pathSource) ListVersions(context.Context, string, string, string, string) (engine.VersionPage, error) {
	return engine.VersionPage{}, errors.New("not on the path")
}

// pathDest takes every PUT and checks that it carries the source's bytes.
type pathDest struct {
	crc  uint32
	size int
	puts atomic.Int64
	bad  atomic.Int64
}

var errNotOnPath = errors.New("not on a small object's path")

func (d *pathDest) Put(_ context.Context, _, _ string, meta engine.ObjectMeta, body engine.Payload) (string, error) {
	d.puts.Add(1)
	if len(body.Data) != d.size || body.CRC32C != d.crc || meta.Metadata[engine.MetaSourceVersion] != "v1" {
		d.bad.Add(1)
	}
	return "replica", nil
}

func (d *pathDest) CreateMultipart(context.Context, string, string, engine.ObjectMeta, bool) (string, string, error) {
	return "", "", errNotOnPath
}
func (d *pathDest) UploadPart(context.Context, string, string, string, int32, engine.Payload) (string, error) {
	return "", errNotOnPath
}
func (d *pathDest) ListParts(context.Context, string, string, string) ([]engine.Part, error) {
	return nil, errNotOnPath
}
func (d *pathDest) CompleteMultipart(context.Context, string, string, string, []engine.Part) (string, error) {
	return "", errNotOnPath
}
func (d *pathDest) AbortMultipart(context.Context, string, string, string) error { return errNotOnPath }
func (d *pathDest) PutDeleteMarker(context.Context, string, string) (string, error) {
	return "", errNotOnPath
}
func (d *pathDest) Head(context.Context, string, string, string) (int64, string, map[string]string, error) {
	return 0, "", nil, errNotOnPath
}
func (d *pathDest) FindReplica(context.Context, string, string, engine.Action, engine.ReplicaOf, time.Time) (string, bool, error) {
	return "", false, errNotOnPath
}

// Current and CopyVersion serve late versions and restored objects; not
// on the path either.
func (d *pathDest) Current(context.Context, string, string) (engine.Version, bool, error) {
	return engine.Version{}, false, errNotOnPath
}
func (d *pathDest) CopyVersion(context.Context, string, string, string) (string, error) {
	return "", errNotOnPath
}

// pathState is the real state file, reporting each completion it made
// durable.
type pathState struct {
	*checkpoint.Store
	saved chan struct{}
}

func (s *pathState) Save(ctx context.Context, op *engine.Op) error {
	err := s.Store.Save(ctx, op)
	if err == nil && op.State == engine.Completed {
		s.saved <- struct{}{}
	}
	return err
}

// objectPath is a running engine between the fakes.
type objectPath struct {
	q    *pathQueue
	st   *pathState
	dst  *pathDest
	tmpl []byte // one message's body
	at   int    // where the key's number is in tmpl
	n    int
	stop func()
}

const pathKeyDigits = 9

// newObjectPath starts an engine with the daemon's defaults but the
// worker count, and the logger the daemon has at level info.
func newObjectPath(tb testing.TB, workers int) *objectPath {
	tb.Helper()
	store, err := checkpoint.Open(tb.TempDir(), checkpoint.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	data := make([]byte, objectPathSize)
	for i := range data {
		data[i] = byte(i * 7)
	}
	p := &objectPath{
		q:   &pathQueue{in: make(chan []engine.Message), deleted: make(chan int, 64)},
		st:  &pathState{Store: store, saved: make(chan struct{}, 64)},
		dst: &pathDest{crc: crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli)), size: len(data)},
	}
	// The notification S3 sends for a PUT, with every field it has.
	key := fmt.Sprintf("w1/obj-%0*d", pathKeyDigits, 0)
	rec := testenv.Event{Name: "ObjectCreated:Put", Bucket: "src", Key: key, VersionID: "v1",
		ETag: "0123456789abcdef0123456789abcdef", Size: objectPathSize, Sequencer: "0062A1B2C3D4E5F607",
		Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}.Record()
	if p.tmpl, err = json.Marshal(map[string]any{"Records": []any{rec}}); err != nil {
		tb.Fatal(err)
	}
	enc := testenv.EncodeKey(key)
	if p.at = bytes.Index(p.tmpl, []byte(enc)); p.at < 0 {
		tb.Fatal("key not found in the message")
	}
	p.at += len(enc) - pathKeyDigits
	e, err := engine.New(engine.Config{
		Rules:        []engine.Rule{{ID: "w1", Enabled: true, SourceBucket: "src", Destination: "d", DestinationBucket: "dst"}},
		Source:       &pathSource{data: data, etag: "0123456789abcdef0123456789abcdef"},
		Destinations: map[string]engine.Destination{"d": p.dst},
		State:        p.st, Queue: p.q, Workers: workers, Pollers: 1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	p.stop = func() {
		cancel()
		if err := <-done; err != nil {
			tb.Error(err)
		}
		store.Close()
	}
	tb.Cleanup(p.stop)
	return p
}

// message returns the next object's message, as the SQS adapter makes it:
// a body of its own.
func (p *objectPath) message() engine.Message {
	body := bytes.Clone(p.tmpl)
	n := p.n
	p.n++
	for i := p.at + pathKeyDigits - 1; i >= p.at; i-- {
		body[i] = byte('0' + n%10)
		n /= 10
	}
	return engine.Message{ID: "m", Body: body, Handle: "h"}
}

// run sends count messages in one receive and waits until every one is
// deleted from the queue and its object's completion is durable.
func (p *objectPath) run(tb testing.TB, count int) {
	msgs := make([]engine.Message, count)
	for i := range msgs {
		msgs[i] = p.message()
	}
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	select {
	case p.q.in <- msgs:
	case <-timeout.C:
		tb.Fatal("the engine does not receive")
	}
	for deleted, saved := 0, 0; deleted < count || saved < count; {
		select {
		case n := <-p.q.deleted:
			deleted += n
		case <-p.st.saved:
			saved++
		case <-timeout.C:
			tb.Fatalf("after 30s, %d of %d messages deleted, %d of %d completions recorded", deleted, count, saved, count)
		}
	}
}

// check fails when a PUT carried the wrong bytes or metadata.
func (p *objectPath) check(tb testing.TB, want int64) {
	tb.Helper()
	if got := p.dst.puts.Load(); got != want {
		tb.Errorf("%d PUTs, want %d", got, want)
	}
	if bad := p.dst.bad.Load(); bad > 0 {
		tb.Errorf("%d PUTs with the wrong bytes or metadata", bad)
	}
}

// BenchmarkObjectPath reports the engine's cost per small object:
// "serial" is one object per message and receive, each finished before the
// next arrives (what the allocation budget is measured on); "batch10" is
// ten per receive with 16 workers, as a busy queue delivers them, where how
// many state writes share a commit depends on timing.
func BenchmarkObjectPath(b *testing.B) {
	for _, c := range []struct {
		name            string
		perRun, workers int
	}{{"serial", 1, 4}, {"batch10", 10, 16}} {
		b.Run(c.name, func(b *testing.B) {
			p := newObjectPath(b, c.workers)
			p.run(b, c.perRun) // warm: first connections, buffers, pages
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			b.ResetTimer()
			runs := 0
			for b.Loop() {
				p.run(b, c.perRun)
				runs++
			}
			b.StopTimer()
			runtime.ReadMemStats(&after)
			objects := float64(runs * c.perRun)
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/objects, "allocs/object")
			b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/objects, "B/object")
			b.ReportMetric(float64(b.Elapsed().Microseconds())/objects, "µs/object")
			p.check(b, int64(runs*c.perRun+c.perRun))
		})
	}
}
