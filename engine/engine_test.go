package engine_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/checkpoint"
	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/internal/testenv"
)

// frozenState stops persisting anything once frozen: what a kill -9 does.
type frozenState struct {
	*checkpoint.Store
	frozen atomic.Bool
}

var errFrozen = errors.New("process is dead")

func (f *frozenState) Save(ctx context.Context, op *engine.Op) error {
	if f.frozen.Load() {
		return errFrozen
	}
	return f.Store.Save(ctx, op)
}

func (f *frozenState) SaveAll(ctx context.Context, ops []*engine.Op) error {
	if f.frozen.Load() {
		return errFrozen
	}
	return f.Store.SaveAll(ctx, ops)
}

func (f *frozenState) EndRun(ctx context.Context) error {
	if f.frozen.Load() {
		return errFrozen
	}
	return f.Store.EndRun(context.Background())
}

func runEngine(t *testing.T, st engine.StateStore, src, dst *memStore, ops []*engine.Op, until func() bool) {
	t.Helper()
	e, err := engine.New(engine.Config{
		Rules:        []engine.Rule{{ID: "r", Enabled: true, SourceBucket: "src", Destination: "d", DestinationBucket: "dst"}},
		Source:       src,
		Destinations: map[string]engine.Destination{"d": dst},
		State:        st, Workers: 2, BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	if len(ops) > 0 {
		if _, err := e.Submit(ctx, ops); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for !until() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// openState opens a fresh state file, closed when the test ends.
func openState(t *testing.T) *checkpoint.Store {
	t.Helper()
	store, err := checkpoint.Open(t.TempDir(), checkpoint.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store
}

func op(key, version, seq string) *engine.Op {
	return &engine.Op{Rule: "r", Bucket: "src", Key: key, VersionID: version, Sequencer: seq, Size: -1,
		Action: engine.ActionCopy, Origin: engine.OriginEvent, Dest: "d", DestBucket: "dst", DestKey: key,
		State: engine.Pending, Recorded: time.Now()}
}

// The daemon dies after the replica is written but before the state file
// records it: the restarted engine finds the replica and writes no second one.
func TestCrashBetweenWriteAndCheckpoint(t *testing.T) {
	store := openState(t)
	st := &frozenState{Store: store}
	src, dst := newMem(), newMem()
	v := src.add("src", "k", memVersion{body: []byte("hello")})
	dst.afterPut = func() { st.frozen.Store(true) } // kill -9 right after the write

	runEngine(t, st, src, dst, []*engine.Op{op("k", v, "01")}, func() bool { return dst.puts.Load() == 1 })
	saved, _ := store.Find(op("k", v, ""))
	if saved.State.Terminal() {
		t.Fatalf("after the crash the op is %s in the state file, want it unfinished", saved.State)
	}

	st.frozen.Store(false)
	dst.afterPut = nil
	runEngine(t, st, src, dst, nil, func() bool {
		o, _ := store.Find(op("k", v, ""))
		return o.State == engine.Completed
	})
	if n := dst.puts.Load(); n != 1 {
		t.Fatalf("destination received %d writes, want exactly 1", n)
	}
	o, _ := store.Find(op("k", v, ""))
	if o.State != engine.Completed || o.Replica == "" {
		t.Fatalf("op after restart: %+v", o)
	}
}

// A write the crashed run had sent in full may land at the store after the
// restart (a killed process's request finishing there): the restarted run
// waits before its lookup, finds it and writes no second replica.
func TestAWriteInFlightAtACrashLandsAfterTheRestart(t *testing.T) {
	store := openState(t)
	st := &frozenState{Store: store}
	src, dst := newMem(), newMem()
	v := src.add("src", "k", memVersion{body: []byte("hello")})
	dst.afterPut = func() { st.frozen.Store(true) } // kill -9 with the write sent
	runEngine(t, st, src, dst, []*engine.Op{op("k", v, "01")}, func() bool { return dst.puts.Load() == 1 })
	// The write is still on its way: out of the store until after the
	// restart.
	landing := dst.History("dst", "k")[0]
	dst.DeleteVersion("dst", "k", landing.ID)
	st.frozen.Store(false)
	dst.afterPut = nil
	landed := make(chan struct{})
	time.AfterFunc(300*time.Millisecond, func() { dst.Add("dst", "k", landing); close(landed) })
	runEngine(t, st, src, dst, nil, func() bool {
		o, _ := store.Find(op("k", v, ""))
		return o.State == engine.Completed
	})
	<-landed
	if h := dst.History("dst", "k"); len(h) != 1 {
		t.Fatalf("destination holds %d versions of k, want the one that landed late", len(h))
	}
	if o, _ := store.Find(op("k", v, "")); o.State != engine.Completed || o.Replica != landing.ID {
		t.Fatalf("op after restart: %s %s replica %s, want completed with replica %s", o, o.State, o.Replica, landing.ID)
	}
}

// Ops of one key run in sequencer order whatever order they arrive in; an
// older version arriving after a newer one was written is superseded.
func TestSequencerOrderAndLateVersions(t *testing.T) {
	store := openState(t)
	src, dst := newMem(), newMem()
	v1 := src.add("src", "k", memVersion{body: []byte("1")})
	v2 := src.add("src", "k", memVersion{body: []byte("2")})
	v3 := src.add("src", "k", memVersion{body: []byte("3")})
	runEngine(t, store, src, dst, []*engine.Op{op("k", v2, "0B"), op("k", v1, "0A")}, func() bool { return dst.puts.Load() == 2 })
	got := dst.history("dst", "k")
	if len(got) != 2 || string(got[0].body) != "1" || string(got[1].body) != "2" {
		t.Fatalf("destination history %v, want 1 then 2", got)
	}
	// v3 written; then an older version's event comes late: it is written
	// all the same (the history misses nothing), and v3 copied back on top
	// (current stays current).
	runEngine(t, store, src, dst, []*engine.Op{op("k", v3, "0C")}, func() bool { return dst.puts.Load() == 3 })
	late := op("k", v1, "0A")
	late.VersionID = v1 + "-late" // a distinct version with an older sequencer
	src.add("src", "k", memVersion{id: late.VersionID, body: []byte("late")})
	runEngine(t, store, src, dst, []*engine.Op{late}, func() bool {
		o, _ := store.Find(late)
		return o != nil && o.State == engine.Completed
	})
	if o, _ := store.Find(late); o.State != engine.Completed {
		t.Fatalf("late older version is %s, want completed", o.State)
	}
	if got, want := bodies(dst, "k"), "1 2 3 late 3"; got != want {
		t.Fatalf("destination history %q, want %q", got, want)
	}
	st, err := store.Status(time.Now())
	if err != nil || st.LateVersions != 1 {
		t.Fatalf("status counts %d late versions (%v), want 1", st.LateVersions, err)
	}
	ks, _, _ := store.LastWritten(context.Background(), late.DestKeyID())
	if h := dst.history("dst", "k"); ks.LastReplica != engine.VersionDigest(h[len(h)-1].id) {
		t.Fatalf("key state %+v after the copy on top %s", ks, h[len(h)-1].id)
	}
}

func TestPartSizeFor(t *testing.T) {
	cases := []struct{ size, cfg, want int64 }{
		{100 << 20, 16 << 20, 16 << 20},
		{1 << 40, 16 << 20, 105 << 20}, // 1 TiB needs > 16 MiB parts to fit 10,000
		{5 << 40, 16 << 20, 525 << 20}, // 5 TiB, the largest object
		{10 << 20, 1 << 20, 5 << 20},   // never below S3's 5 MiB minimum
		{1 << 30, 6 << 30, 5 << 30},    // never above 5 GiB
	}
	for _, c := range cases {
		got := engine.PartSizeFor(c.size, c.cfg)
		if got != c.want {
			t.Errorf("PartSizeFor(%d, %d) = %d, want %d", c.size, c.cfg, got, c.want)
		}
		if (c.size+got-1)/got > 10000 {
			t.Errorf("PartSizeFor(%d) gives more than 10,000 parts", c.size)
		}
	}
}

// A deliberate second copy (a backfill repairing a key) that crashes after
// its write mark does not mistake the first copy for its own: it writes
// once, and its replica carries the pass.
func TestSecondPassIsNotTheFirstCopy(t *testing.T) {
	store := openState(t)
	src, dst := newMem(), newMem()
	v := src.add("src", "k", memVersion{body: []byte("current")})
	runEngine(t, store, src, dst, []*engine.Op{op("k", v, "01")}, func() bool { return dst.puts.Load() == 1 })

	again := op("k", v, "01")
	again.Pass, again.Origin, again.Sequencer = "current-1", engine.OriginBackfill, "" // backfill knows no sequencer
	again.State, again.WriteStarted = engine.InFlight, time.Now()                      // as left by a crash
	if err := store.Save(context.Background(), again); err != nil {
		t.Fatal(err)
	}
	runEngine(t, store, src, dst, nil, func() bool {
		o, _ := store.Find(again)
		return o.State == engine.Completed
	})
	got := dst.history("dst", "k")
	if len(got) != 2 || got[1].meta.Metadata[engine.MetaPass] != "current-1" || string(got[1].body) != "current" {
		t.Fatalf("destination history after the second pass: %d versions %+v, want the first copy and one marked current-1", len(got), got)
	}
}

// Backfill ops carry no sequencer: after a restart they must still run in
// the order they were recorded, not in the state file's key order, or the
// destination would end on an older version.
func TestRestoredOpsKeepArrivalOrder(t *testing.T) {
	store := openState(t)
	src, dst := newMem(), newMem()
	// Version ids that sort the other way round from their age.
	src.add("src", "k", memVersion{id: "zz-older", body: []byte("old")})
	src.add("src", "k", memVersion{id: "aa-newer", body: []byte("new")})
	var ops []*engine.Op
	for _, v := range []string{"zz-older", "aa-newer"} {
		o := op("k", v, "")
		o.Origin = engine.OriginBackfill
		ops = append(ops, o)
	}
	// Recorded, then the process died before running them.
	if _, err := store.Record(context.Background(), ops); err != nil {
		t.Fatal(err)
	}
	if ops[0].Seq == 0 || ops[1].Seq <= ops[0].Seq {
		t.Fatalf("recorded ops got sequence numbers %d and %d, want increasing", ops[0].Seq, ops[1].Seq)
	}
	runEngine(t, store, src, dst, nil, func() bool { return dst.puts.Load() == 2 })
	got := dst.history("dst", "k")
	if len(got) != 2 || string(got[0].body) != "old" || string(got[1].body) != "new" {
		t.Fatalf("destination history %v, want old then new", got)
	}
}

// listQueue hands out its messages ten at a time, at once: a short poll.
type listQueue struct {
	mu       sync.Mutex
	msgs     []engine.Message
	receives atomic.Int64
}

func (q *listQueue) Receive(context.Context) ([]engine.Message, error) {
	q.receives.Add(1)
	q.mu.Lock()
	defer q.mu.Unlock()
	n := min(10, len(q.msgs))
	out := q.msgs[:n:n]
	q.msgs = q.msgs[n:]
	return out, nil
}
func (q *listQueue) left() int                                      { q.mu.Lock(); defer q.mu.Unlock(); return len(q.msgs) }
func (q *listQueue) Delete(context.Context, []engine.Message) error { return nil }
func (q *listQueue) ExtendVisibility(context.Context, []engine.Message, time.Duration) error {
	return nil
}

// Idle pollers of a short-polled queue pause between receives instead of
// spinning: 8 pollers over one second ask a few dozen times, not thousands.
func TestIdleShortPollsPause(t *testing.T) {
	store := openState(t)
	q := &listQueue{} // idle
	e, err := engine.New(engine.Config{
		Rules:  []engine.Rule{{ID: "r", Enabled: true, SourceBucket: "src", Destination: "d", DestinationBucket: "dst"}},
		Source: newMem(), Destinations: map[string]engine.Destination{"d": newMem()},
		State: store, Queue: q, Pollers: 8,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := e.Run(ctx); err != nil {
		t.Fatal(err)
	}
	// Each poller: 20+40+80+160+320+500 ms of pauses fill the second.
	if n := q.receives.Load(); n < 8 || n > 8*8 {
		t.Fatalf("8 idle pollers made %d receives in a second, want between 8 and 64", n)
	}
	if ok, _ := e.Ready(); !ok {
		t.Fatal("an idle queue that answers is ready")
	}
}

// With the destination stalled, intake goes on: every message is recorded
// in the state file and deleted from the queue, while memory holds no more
// than the window. When the destination comes back, the window is refilled
// from the file and everything is copied, once.
func TestIntakeGoesOnWhileTheDestinationIsStalled(t *testing.T) {
	store := openState(t)
	src, dst := newMem(), newMem()
	q := &listQueue{}
	const total = 200
	for i := range total {
		key := fmt.Sprintf("k%03d", i)
		v := src.add("src", key, memVersion{body: []byte(key)})
		body := testenv.S3Body(testenv.Event{Name: "ObjectCreated:Put", Bucket: "src", Key: key, VersionID: v, Size: 4, Sequencer: "01"})
		q.msgs = append(q.msgs, engine.Message{ID: key, Body: []byte(body)})
	}
	stalled := make(chan struct{})
	dst.afterPut = func() { <-stalled }
	e, err := engine.New(engine.Config{
		Rules:  []engine.Rule{{ID: "r", Enabled: true, SourceBucket: "src", Destination: "d", DestinationBucket: "dst"}},
		Source: src, Destinations: map[string]engine.Destination{"d": dst},
		State: store, Queue: q, Workers: 2, Pollers: 2, MaxBacklog: 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	recorded := func() int64 {
		st, err := store.Status(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return st.Counts[engine.Pending] + st.Counts[engine.InFlight]
	}
	deadline := time.Now().Add(5 * time.Second)
	for recorded() < total && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := recorded(); n != total || q.left() > 0 {
		t.Fatalf("%d of %d recorded, %d messages left in the queue, with the destination stalled: intake stopped", n, total, q.left())
	}
	if n := e.Backlog(); n > 20 {
		t.Fatalf("%d ops in memory, over the window of 20", n)
	}
	close(stalled)
	deadline = time.Now().Add(10 * time.Second)
	for dst.puts.Load() < total && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // a duplicate write would show now
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := dst.puts.Load(); n != total {
		t.Fatalf("%d writes for %d objects", n, total)
	}
}

// lostResponse writes, then loses the answer to the shutdown: the write
// landed, the engine cannot know.
type lostResponse struct {
	*memStore
	landed chan struct{}
}

func (l *lostResponse) Put(ctx context.Context, bucket, key string, meta engine.ObjectMeta, body engine.Payload) (string, error) {
	if _, err := l.memStore.Put(ctx, bucket, key, meta, body); err != nil {
		return "", err
	}
	close(l.landed)
	<-ctx.Done()
	return "", ctx.Err()
}

// A clean stop that interrupts a write saves the op's write mark: the next
// run, which starts clean, finds the replica instead of writing another.
func TestCleanStopKeepsTheWriteMarks(t *testing.T) {
	store := openState(t)
	src, dst := newMem(), newMem()
	v := src.add("src", "k", memVersion{body: []byte("hello")})
	lost := &lostResponse{memStore: dst, landed: make(chan struct{})}
	e, err := engine.New(engine.Config{
		Rules:  []engine.Rule{{ID: "r", Enabled: true, SourceBucket: "src", Destination: "d", DestinationBucket: "dst"}},
		Source: src, Destinations: map[string]engine.Destination{"d": lost}, State: store,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	if _, err := e.Submit(ctx, []*engine.Op{op("k", v, "01")}); err != nil {
		t.Fatal(err)
	}
	<-lost.landed
	cancel() // SIGTERM while the PUT's answer is on its way
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	saved, _ := store.Find(op("k", v, ""))
	if saved.State.Terminal() || saved.WriteStarted.IsZero() {
		t.Fatalf("after a clean stop the op is %s with write mark %v, want unfinished and marked", saved.State, saved.WriteStarted)
	}
	crashed, err := store.BeginRun(context.Background())
	if err != nil || crashed {
		t.Fatalf("after a clean stop BeginRun says crashed=%v (%v)", crashed, err)
	}
	if err := store.EndRun(context.Background()); err != nil {
		t.Fatal(err)
	}

	runEngine(t, store, src, dst, nil, func() bool {
		o, _ := store.Find(op("k", v, ""))
		return o.State == engine.Completed
	})
	if n := dst.puts.Load(); n != 1 {
		t.Fatalf("destination received %d writes, want exactly 1", n)
	}
}
