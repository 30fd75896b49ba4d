package engine_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/checkpoint"
	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/internal/testenv"
)

// fullDisk fails every write with ENOSPC while full is set, as bbolt does on
// a full disk; its probe succeeds only once there is space.
type fullDisk struct {
	*checkpoint.Store
	full atomic.Bool
}

func (f *fullDisk) err() error {
	if f.full.Load() {
		return fmt.Errorf("write state: %w", syscall.ENOSPC)
	}
	return nil
}

func (f *fullDisk) Record(ctx context.Context, ops []*engine.Op) ([]*engine.Op, error) {
	if err := f.err(); err != nil {
		return nil, err
	}
	return f.Store.Record(ctx, ops)
}

func (f *fullDisk) Save(ctx context.Context, op *engine.Op) error {
	if err := f.err(); err != nil {
		return err
	}
	return f.Store.Save(ctx, op)
}

func (f *fullDisk) SaveAll(ctx context.Context, ops []*engine.Op) error {
	if err := f.err(); err != nil {
		return err
	}
	return f.Store.SaveAll(ctx, ops)
}

func (f *fullDisk) Probe(ctx context.Context) error {
	if err := f.err(); err != nil {
		return err
	}
	return f.Store.Probe(ctx)
}

// countingQueue hands out its messages ten at a time and counts what the
// engine does with them.
type countingQueue struct {
	mu                          sync.Mutex
	msgs                        []engine.Message
	receives, deleted, released atomic.Int64
}

func (q *countingQueue) Receive(ctx context.Context) ([]engine.Message, error) {
	q.receives.Add(1)
	q.mu.Lock()
	defer q.mu.Unlock()
	n := min(10, len(q.msgs))
	out := q.msgs[:n:n]
	q.msgs = q.msgs[n:]
	return out, nil
}

func (q *countingQueue) Delete(_ context.Context, msgs []engine.Message) error {
	q.deleted.Add(int64(len(msgs)))
	return nil
}

func (q *countingQueue) ExtendVisibility(_ context.Context, msgs []engine.Message, d time.Duration) error {
	if d == 0 {
		// Made visible again: on SQS each such message comes back with one
		// more receive, on the way to the dead-letter queue.
		q.released.Add(int64(len(msgs)))
		q.mu.Lock()
		q.msgs = append(q.msgs, msgs...)
		q.mu.Unlock()
	}
	return nil
}

// While the state disk is full, the batches in hand are held (not handed
// back to the queue to be received again), no further message is
// received, and the pause lasts until space returns; then every message
// is recorded, deleted and replicated once.
func TestFullDiskHoldsTheBatchesInHand(t *testing.T) {
	state := &fullDisk{Store: openState(t)}
	state.full.Store(true)
	src, dst := newMem(), newMem()
	q := &countingQueue{}
	const total = 60
	for i := range total {
		key := fmt.Sprintf("k%03d", i)
		v := src.add("src", key, memVersion{body: []byte(key)})
		body := testenv.S3Body(testenv.Event{Name: "ObjectCreated:Put", Bucket: "src", Key: key, VersionID: v, Size: 4, Sequencer: "01"})
		q.msgs = append(q.msgs, engine.Message{ID: key, Body: []byte(body)})
	}
	const pollers = 2
	e, err := engine.New(engine.Config{
		Rules:  []engine.Rule{{ID: "r", Enabled: true, SourceBucket: "src", Destination: "d", DestinationBucket: "dst"}},
		Source: src, Destinations: map[string]engine.Destination{"d": dst},
		State: state, Queue: q, Workers: 2, Pollers: pollers,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for !e.Paused() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	for range 30 { // 1.5s: the probe runs every second
		if !e.Paused() {
			t.Fatal("the pause ended while the disk was still full")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := q.released.Load(); n != 0 {
		t.Fatalf("%d messages handed back to the queue during the pause", n)
	}
	if n := q.receives.Load(); n > pollers {
		t.Fatalf("%d receives during the pause: each poller should hold its batch and receive no more", n)
	}
	state.full.Store(false)
	deadline = time.Now().Add(10 * time.Second)
	for (q.deleted.Load() < total || dst.puts.Load() < total) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // a duplicate write would show now
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if q.deleted.Load() != total || dst.puts.Load() != total || q.released.Load() != 0 {
		t.Fatalf("deleted %d, written %d, handed back %d; want %d, %d, 0", q.deleted.Load(), dst.puts.Load(), q.released.Load(), total, total)
	}
}

// partsFull fails the first part records with ENOSPC, as a state disk that
// fills during a multipart copy does.
type partsFull struct {
	*checkpoint.Store
	fail atomic.Int32
}

func (p *partsFull) SaveUpload(ctx context.Context, opID string, up *engine.Upload) error {
	if p.fail.Add(-1) >= 0 {
		return fmt.Errorf("write state: %w", syscall.ENOSPC)
	}
	return p.Store.SaveUpload(ctx, opID, up)
}

// A part whose record cannot be written fails the copy's attempt, which is
// tried again once the disk takes writes: the replica is written once,
// whole, and no upload is left recorded.
func TestPartRecordsOnAFullDiskRetryTheCopy(t *testing.T) {
	store := openState(t)
	st := &partsFull{Store: store}
	st.fail.Store(2)
	src, dst := newMem(), newMem()
	body := make([]byte, 12<<20)
	for i := range body {
		body[i] = byte(i * 13)
	}
	v := src.add("src", "big", memVersion{body: body})
	e, err := engine.New(engine.Config{
		Rules:        []engine.Rule{{ID: "r", Enabled: true, SourceBucket: "src", Destination: "d", DestinationBucket: "dst"}},
		Source:       src,
		Destinations: map[string]engine.Destination{"d": dst},
		State:        st, Workers: 2, BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond,
		MultipartThreshold: 5 << 20, PartSize: 5 << 20, PartConcurrency: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	o := op("big", v, "01")
	if _, err := e.Submit(ctx, []*engine.Op{o}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if got, _ := store.Find(op("big", v, "")); got != nil && got.State == engine.Completed {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if left := st.fail.Load(); left >= 0 {
		t.Fatalf("%d of the part records meant to fail were never tried (or the disk never took writes again)", left+1)
	}
	got, _ := store.Find(op("big", v, ""))
	if got == nil || got.State != engine.Completed {
		t.Fatalf("op after the full disk: %+v", got)
	}
	h := dst.history("dst", "big")
	if len(h) != 1 || string(h[0].body) != string(body) {
		t.Fatalf("destination holds %d versions (want 1, the source's %d bytes)", len(h), len(body))
	}
	if up, err := store.LoadUpload(context.Background(), got.ID()); err != nil || up != nil {
		t.Fatalf("an upload is still recorded after the copy: %+v, %v", up, err)
	}
}
