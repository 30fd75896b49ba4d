// Package statetest is the conformance suite of engine.StateStore: one set
// of tests that every backend passes (the bbolt state file, the DynamoDB
// table). What a backend does differently on purpose is an explicit
// option, never a silent difference.
package statetest

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/engine"
)

// Options say what the backend under test does differently on purpose.
type Options struct {
	// PendingRemembers: Pending ignores its after argument and never
	// hands out an op twice (until the op finished or its shard was
	// lost): the cluster store. Otherwise Pending is stateless and
	// returns the unfinished ops recorded after Seq after.
	PendingRemembers bool
	// CrashDetection: BeginRun reports a previous run that never called
	// EndRun, and SuspectThrough covers what it had recorded. Otherwise
	// BeginRun never reports a crash and SuspectThrough is 0 (crash
	// suspicion is per shard in a cluster).
	CrashDetection bool
	// StateCounts returns the counts by state that the backend's status
	// shows, or nil when it has none.
	StateCounts func(t *testing.T, s engine.StateStore) map[engine.State]int64
	// LateVersions returns the late versions the backend's status counts
	// (checkpoint.Status.LateVersions), or nil when it has none.
	LateVersions func(t *testing.T, s engine.StateStore) int64
}

// Cursors is what backfill needs of a store beyond engine.StateStore
// (reconcile.State); every backend has it.
type Cursors interface {
	LoadCursor(rule string) (engine.Cursor, error)
	SaveCursor(rule string, c engine.Cursor) error
	OpsOf(rule, bucket, key, version string) ([]*engine.Op, error)
}

// Run runs the suite; open returns a new, empty store for one test (and
// closes it when the test ends).
func Run(t *testing.T, open func(t *testing.T) engine.StateStore, o Options) {
	tests := []struct {
		name string
		f    func(t *testing.T, s engine.StateStore, o Options)
	}{
		{"RecordDuplicates", testRecordDuplicates},
		{"ArrivalOrder", testArrivalOrder},
		{"PendingWindow", testPendingWindow},
		{"PendingAfterSaves", testPendingAfterSaves},
		{"Counts", testCounts},
		{"StateCounts", testStateCounts},
		{"Retry", testRetry},
		{"Uploads", testUploads},
		{"LastWritten", testLastWritten},
		{"SaveUnrecorded", testSaveUnrecorded},
		{"SaveAll", testSaveAll},
		{"Runs", testRuns},
		{"Cursors", testCursors},
		{"OpsOf", testOpsOf},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.f(t, open(t), o)
		})
	}
}

func ctx() context.Context { return context.Background() }

// newOp is a pending event op for a key of its own.
func newOp(key, version string) *engine.Op {
	return &engine.Op{Rule: "r", Bucket: "src", Key: key, VersionID: version, ETag: "etag-" + version, Size: 100,
		Action: engine.ActionCopy, Origin: engine.OriginEvent, Dest: "dr", DestBucket: "dst", DestKey: key,
		EventTime: time.Now().Add(-time.Minute).UTC().Truncate(time.Millisecond), Recorded: time.Now().UTC(), State: engine.Pending}
}

func record(t *testing.T, s engine.StateStore, ops ...*engine.Op) []*engine.Op {
	t.Helper()
	added, err := s.Record(ctx(), ops)
	if err != nil {
		t.Fatalf("record: %v", err)
	}
	return added
}

func ids(ops []*engine.Op) []string {
	out := make([]string, len(ops))
	for i, op := range ops {
		out[i] = op.Key + "@" + op.VersionID + "/" + op.Sequencer + "/" + op.Pass
	}
	return out
}

// pendingAll pages through Pending until it has nothing more, as the
// engine's window does.
func pendingAll(t *testing.T, s engine.StateStore, o Options, origin engine.Origin, page int) []*engine.Op {
	t.Helper()
	var all []*engine.Op
	var after uint64
	for i := 0; i < 1000; i++ {
		arg := after
		if o.PendingRemembers {
			arg = math.MaxUint64 // ignored: proved by getting anything at all
		}
		ops, more, err := s.Pending(ctx(), origin, arg, page)
		if err != nil {
			t.Fatalf("pending: %v", err)
		}
		if len(ops) > page {
			t.Fatalf("pending returned %d ops, limit %d", len(ops), page)
		}
		all = append(all, ops...)
		for _, op := range ops {
			after = max(after, op.Seq)
		}
		if !more {
			return all
		}
		if len(ops) == 0 {
			t.Fatalf("pending says there is more but returned nothing")
		}
	}
	t.Fatal("pending never ends")
	return nil
}

func testRecordDuplicates(t *testing.T, s engine.StateStore, o Options) {
	a, b := newOp("a", "v1"), newOp("b", "v1")
	aAgain := newOp("a", "v1")
	added := record(t, s, a, b, aAgain)
	if got := ids(added); !slices.Equal(got, []string{"a@v1//", "b@v1//"}) {
		t.Fatalf("first record added %q, want a and b once", got)
	}
	if a.Seq == 0 || b.Seq == 0 || a.Seq == b.Seq {
		t.Fatalf("arrival numbers %d, %d: want distinct and set", a.Seq, b.Seq)
	}
	// A redelivery: the same version again, with a different ETag so that
	// an overwrite would show.
	redelivered := newOp("a", "v1")
	redelivered.ETag = "changed"
	c := newOp("c", "v1")
	added = record(t, s, redelivered, c)
	if got := ids(added); !slices.Equal(got, []string{"c@v1//"}) {
		t.Fatalf("second record added %q, want only c", got)
	}
	// Null versions: each write is told apart by its sequencer; passes are
	// ops of their own.
	n1, n2 := newOp("n", ""), newOp("n", "")
	n1.Sequencer, n2.Sequencer = "0A", "0B"
	pass := newOp("a", "v1")
	pass.Pass = "backfill-1"
	if added := record(t, s, n1, n2, pass); len(added) != 3 {
		t.Fatalf("null-version writes and a pass: %d added, want 3", len(added))
	}
	n1Again := newOp("n", "")
	n1Again.Sequencer = "0A"
	if added := record(t, s, n1Again); len(added) != 0 {
		t.Fatalf("the same null-version write again was added")
	}
	// An op recorded already finished (the source version was gone) is
	// kept but never pending.
	gone := newOp("gone", "v1")
	gone.State, gone.Reason, gone.Finished = engine.Skipped, "source version no longer exists", time.Now()
	if added := record(t, s, gone); len(added) != 1 {
		t.Fatalf("skipped op not recorded")
	}
	ops := pendingAll(t, s, o, engine.OriginEvent, 100)
	want := []string{"a@v1//", "b@v1//", "c@v1//", "n@/0A/", "n@/0B/", "a@v1//backfill-1"}
	if got := ids(ops); !slices.Equal(got, want) {
		t.Fatalf("pending %q, want %q", got, want)
	}
	if ops[0].ETag != "etag-v1" {
		t.Fatalf("a duplicate overwrote the recorded op: ETag %q", ops[0].ETag)
	}
	if again := record(t, s, gone); len(again) != 0 {
		t.Fatalf("a finished op was recorded again")
	}
}

func testArrivalOrder(t *testing.T, s engine.StateStore, o Options) {
	var all []*engine.Op
	for batch := 0; batch < 4; batch++ {
		var ops []*engine.Op
		for i := 0; i < 5; i++ {
			// Keys in descending order: arrival, not key order, counts.
			ops = append(ops, newOp(fmt.Sprintf("k%02d", 99-batch*5-i), "v"))
		}
		all = append(all, record(t, s, ops...)...)
	}
	for i := 1; i < len(all); i++ {
		if all[i].Seq <= all[i-1].Seq {
			t.Fatalf("op %d recorded after op %d has Seq %d <= %d", i, i-1, all[i].Seq, all[i-1].Seq)
		}
	}
	got := pendingAll(t, s, o, engine.OriginEvent, 7)
	if !slices.Equal(ids(got), ids(all)) {
		t.Fatalf("pending order %q, want arrival order %q", ids(got), ids(all))
	}
}

func testPendingWindow(t *testing.T, s engine.StateStore, o Options) {
	var events, backfill []*engine.Op
	for i := 0; i < 10; i++ {
		events = append(events, newOp(fmt.Sprintf("e%02d", i), "v"))
		if i%3 == 0 {
			b := newOp(fmt.Sprintf("b%02d", i), "v")
			b.Origin = engine.OriginBackfill
			backfill = append(backfill, b)
		}
	}
	for i := range events {
		record(t, s, events[i])
		if i%3 == 0 {
			record(t, s, backfill[i/3])
		}
	}
	// The first window: limit honoured, more said.
	first, more, err := s.Pending(ctx(), engine.OriginEvent, 0, 4)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids(first), ids(events[:4])) || !more {
		t.Fatalf("first window %q (more %v), want %q and more", ids(first), more, ids(events[:4]))
	}
	if !o.PendingRemembers {
		// Stateless: the same question gets the same answer.
		again, _, err := s.Pending(ctx(), engine.OriginEvent, 0, 4)
		if err != nil || !slices.Equal(ids(again), ids(first)) {
			t.Fatalf("pending again %q, %v: want %q", ids(again), err, ids(first))
		}
	}
	// An op finished meanwhile is not handed out; the rest come in
	// arrival order, each once.
	done := events[5]
	done.State, done.Finished, done.Replica = engine.Completed, time.Now(), "r1"
	if err := s.Save(ctx(), done); err != nil {
		t.Fatal(err)
	}
	var rest []*engine.Op
	after := first[len(first)-1].Seq
	for {
		arg := after
		if o.PendingRemembers {
			arg = 0
		}
		ops, more, err := s.Pending(ctx(), engine.OriginEvent, arg, 4)
		if err != nil {
			t.Fatal(err)
		}
		rest = append(rest, ops...)
		if len(ops) > 0 {
			after = ops[len(ops)-1].Seq
		}
		if !more {
			break
		}
	}
	want := append(slices.Clone(events[4:5]), events[6:]...)
	if !slices.Equal(ids(rest), ids(want)) {
		t.Fatalf("rest of the window %q, want %q", ids(rest), ids(want))
	}
	if o.PendingRemembers {
		if ops, more, err := s.Pending(ctx(), engine.OriginEvent, 0, 100); err != nil || len(ops) != 0 || more {
			t.Fatalf("everything was handed out, yet pending returned %q (more %v, %v)", ids(ops), more, err)
		}
	}
	// Backfill is a window of its own.
	if got := pendingAll(t, s, o, engine.OriginBackfill, 2); !slices.Equal(ids(got), ids(backfill)) {
		t.Fatalf("backfill pending %q, want %q", ids(got), ids(backfill))
	}
}

// testPendingAfterSaves: an op saved unfinished (a retry later) is still
// pending; one that finished or failed is not.
func testPendingAfterSaves(t *testing.T, s engine.StateStore, o Options) {
	ops := []*engine.Op{newOp("a", "v"), newOp("b", "v"), newOp("c", "v"), newOp("d", "v")}
	record(t, s, ops...)
	handed := pendingAll(t, s, o, engine.OriginEvent, 10)
	if len(handed) != 4 {
		t.Fatalf("pending %q", ids(handed))
	}
	a, b, c := handed[0], handed[1], handed[2]
	a.State, a.Attempts, a.LastError, a.NextAttempt = engine.Pending, 1, "503", time.Now().Add(time.Minute)
	b.State, b.WriteStarted = engine.InFlight, time.Now()
	c.State, c.Reason, c.LastError, c.Finished = engine.Failed, engine.ReasonAccessDenied, "403", time.Now()
	for _, op := range []*engine.Op{a, b, c} {
		if err := s.Save(ctx(), op); err != nil {
			t.Fatal(err)
		}
	}
	got := pendingAll(t, s, o, engine.OriginEvent, 10)
	if o.PendingRemembers {
		// Still held by the engine: not handed out again.
		if len(got) != 0 {
			t.Fatalf("pending handed out again %q", ids(got))
		}
		return
	}
	if want := []string{"a@v//", "b@v//", "d@v//"}; !slices.Equal(ids(got), want) {
		t.Fatalf("pending %q, want %q", ids(got), want)
	}
	if got[0].Attempts != 1 || got[0].LastError != "503" || got[1].State != engine.InFlight || got[1].WriteStarted.IsZero() {
		t.Fatalf("saved fields not kept: %+v %+v", got[0], got[1])
	}
}

func testCounts(t *testing.T, s engine.StateStore, o Options) {
	a, b, c := newOp("a", "v"), newOp("b", "v"), newOp("c", "v")
	c.Rule, c.Size = "other", -1 // size unknown: no bytes
	a.EventTime = time.Now().Add(-time.Hour).UTC().Truncate(time.Millisecond)
	record(t, s, a, b, c)
	ops, bytes, err := s.Counts(ctx())
	if err != nil {
		t.Fatal(err)
	}
	if ops["r"] != 2 || ops["other"] != 1 || bytes["r"] != 200 || bytes["other"] != 0 {
		t.Fatalf("counts %v, bytes %v", ops, bytes)
	}
	oldest, ok, err := s.OldestPending(ctx())
	if err != nil || !ok || !oldest.Equal(a.EventTime) {
		t.Fatalf("oldest pending %v %v %v, want %v", oldest, ok, err, a.EventTime)
	}
	handed := pendingAll(t, s, o, engine.OriginEvent, 10)
	for _, op := range handed {
		if op.Key == "a" {
			op.State, op.Finished, op.Replica = engine.Completed, time.Now(), "r"
			if err := s.Save(ctx(), op); err != nil {
				t.Fatal(err)
			}
		}
	}
	ops, bytes, err = s.Counts(ctx())
	if err != nil {
		t.Fatal(err)
	}
	if ops["r"] != 1 || bytes["r"] != 100 {
		t.Fatalf("after a completion: counts %v, bytes %v", ops, bytes)
	}
}

func testStateCounts(t *testing.T, s engine.StateStore, o Options) {
	if o.StateCounts == nil {
		t.Skip("the backend has no status counts")
	}
	var ops []*engine.Op
	for i := 0; i < 8; i++ {
		ops = append(ops, newOp(fmt.Sprintf("k%d", i), "v"))
	}
	record(t, s, ops...)
	handed := pendingAll(t, s, o, engine.OriginEvent, 10)
	sort.Slice(handed, func(i, j int) bool { return handed[i].Key < handed[j].Key })
	states := []engine.State{engine.Completed, engine.Completed, engine.Skipped, engine.Superseded, engine.Failed, engine.InFlight}
	for i, st := range states {
		op := handed[i]
		op.State = st
		if st.Terminal() {
			op.Finished = time.Now()
		}
		if st == engine.Completed {
			op.Replica = "r"
		}
		if err := s.Save(ctx(), op); err != nil {
			t.Fatal(err)
		}
	}
	// One completed op saved again (a second save of the same state) is
	// not counted twice.
	if err := s.Save(ctx(), handed[0]); err != nil {
		t.Fatal(err)
	}
	got := o.StateCounts(t, s)
	want := map[engine.State]int64{engine.Pending: 2, engine.InFlight: 1, engine.Completed: 2, engine.Failed: 1,
		engine.Skipped: 1, engine.Superseded: 1}
	for _, st := range engine.States {
		if got[st] != want[st] {
			t.Fatalf("counts %v, want %v", got, want)
		}
	}
}

func testRetry(t *testing.T, s engine.StateStore, o Options) {
	ops := []*engine.Op{newOp("k1", "v"), newOp("k2", "v"), newOp("k3", "v"), newOp("ok", "v")}
	record(t, s, ops...)
	handed := pendingAll(t, s, o, engine.OriginEvent, 10)
	for _, op := range handed {
		if op.Key == "ok" {
			continue
		}
		op.State, op.Attempts, op.Reason, op.LastError, op.Finished = engine.Failed, 3, engine.ReasonAccessDenied, "403 Forbidden", time.Now()
		if err := s.Save(ctx(), op); err != nil {
			t.Fatal(err)
		}
	}
	if n, _, _ := s.Counts(ctx()); n["r"] != 1 {
		t.Fatalf("unfinished after failures: %v, want 1", n)
	}
	one, err := s.Retry(ctx(), []string{"k1"})
	if err != nil || len(one) != 1 || one[0].Key != "k1" {
		t.Fatalf("retry k1: %q, %v", ids(one), err)
	}
	if op := one[0]; op.State != engine.Pending || op.Attempts != 0 || op.Reason != "" || !op.Finished.IsZero() || op.Seq == 0 {
		t.Fatalf("retried op not reset: %+v", op)
	}
	rest, err := s.Retry(ctx(), nil)
	if err != nil || len(rest) != 2 {
		t.Fatalf("retry all: %q, %v", ids(rest), err)
	}
	if again, err := s.Retry(ctx(), nil); err != nil || len(again) != 0 {
		t.Fatalf("retry with nothing failed: %q, %v", ids(again), err)
	}
	if n, _, _ := s.Counts(ctx()); n["r"] != 4 {
		t.Fatalf("unfinished after retry: %v, want 4", n)
	}
	if o.StateCounts != nil {
		if c := o.StateCounts(t, s); c[engine.Failed] != 0 || c[engine.Pending] != 4 {
			t.Fatalf("state counts after retry: %v", c)
		}
	}
}

func testUploads(t *testing.T, s engine.StateStore, o Options) {
	record(t, s, newOp("big", "v"))
	op := pendingAll(t, s, o, engine.OriginEvent, 10)[0] // the engine runs ops it was handed
	id := op.ID()
	if up, err := s.LoadUpload(ctx(), id); err != nil || up != nil {
		t.Fatalf("load before any save: %+v, %v", up, err)
	}
	up := &engine.Upload{UploadID: "u-1", PartSize: 5 << 20, Size: 12 << 20, ETag: "src-etag", Checksum: "CRC32C"}
	if err := s.SaveUpload(ctx(), id, up); err != nil {
		t.Fatal(err)
	}
	check := func(want *engine.Upload) {
		t.Helper()
		got, err := s.LoadUpload(ctx(), id)
		if err != nil || got == nil {
			t.Fatalf("load: %+v, %v", got, err)
		}
		gp, wp := slices.Clone(got.Parts), slices.Clone(want.Parts)
		byN := func(a, b engine.Part) int { return int(a.Number - b.Number) }
		slices.SortFunc(gp, byN)
		slices.SortFunc(wp, byN)
		if got.UploadID != want.UploadID || got.PartSize != want.PartSize || got.Size != want.Size ||
			got.ETag != want.ETag || got.Checksum != want.Checksum || !slices.Equal(gp, wp) {
			t.Fatalf("loaded %+v, want %+v", got, want)
		}
	}
	check(up)
	up.Parts = append(up.Parts, engine.Part{Number: 2, ETag: "e2", Size: 5 << 20, CRC32C: "AAAAAA=="},
		engine.Part{Number: 1, ETag: "e1", Size: 5 << 20, CRC32C: "BBBBBB=="})
	if err := s.SaveUpload(ctx(), id, up); err != nil {
		t.Fatal(err)
	}
	check(up)
	up.Parts = append(up.Parts, engine.Part{Number: 3, ETag: "e3", Size: 2 << 20})
	if err := s.SaveUpload(ctx(), id, up); err != nil {
		t.Fatal(err)
	}
	check(up)
	// Resuming drops the parts the destination does not list.
	up.Parts = []engine.Part{up.Parts[1]}
	if err := s.SaveUpload(ctx(), id, up); err != nil {
		t.Fatal(err)
	}
	check(up)
	if err := s.DeleteUpload(ctx(), id); err != nil {
		t.Fatal(err)
	}
	if got, err := s.LoadUpload(ctx(), id); err != nil || got != nil {
		t.Fatalf("load after delete: %+v, %v", got, err)
	}
	if err := s.DeleteUpload(ctx(), id); err != nil {
		t.Fatalf("deleting an upload twice: %v", err)
	}
}

func testLastWritten(t *testing.T, s engine.StateStore, o Options) {
	mk := func(version, seqr string) *engine.Op {
		op := newOp("key", version)
		op.Sequencer = seqr
		return op
	}
	v2, v1, v3, unseq, failed, late := mk("v2", "0B"), mk("v1", "0A"), mk("v3", "0C0"), mk("v0", ""), mk("vf", "0D"), mk("vl", "0A5")
	record(t, s, v2, v1, v3, unseq, failed, late)
	if _, ok, err := s.LastWritten(ctx(), v1.DestKeyID()); err != nil || ok {
		t.Fatalf("key state before any write: %v %v", ok, err)
	}
	handed := map[string]*engine.Op{}
	for _, op := range pendingAll(t, s, o, engine.OriginEvent, 10) {
		handed[op.VersionID] = op
	}
	complete := func(version, replica string) {
		t.Helper()
		op := handed[version]
		op.State, op.Replica, op.Finished = engine.Completed, replica, time.Now()
		if err := s.Save(ctx(), op); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(what, seqr, version, replica string) {
		t.Helper()
		ks, ok, err := s.LastWritten(ctx(), v1.DestKeyID())
		if err != nil || !ok {
			t.Fatalf("%s: key state %v %v", what, ok, err)
		}
		if ks.Sequencer != seqr || ks.Version != engine.VersionDigest(version) || ks.LastReplica != engine.VersionDigest(replica) {
			t.Fatalf("%s: key state %+v, want sequencer %s, version %s, replica %s", what, ks, seqr, version, replica)
		}
	}
	complete("v2", "rep-2")
	expect("first write", "0B", "v2", "rep-2")
	// An older version written late: the last replica follows, the
	// newest version stays.
	complete("v1", "rep-1")
	expect("late older version", "0B", "v2", "rep-1")
	// Sequencers compare left-aligned: 0C0 is after 0B.
	complete("v3", "rep-3")
	expect("newer version", "0C0", "v3", "rep-3")
	// An unsequenced op (backfill) moves the replica only.
	complete("v0", "rep-0")
	expect("unsequenced write", "0C0", "v3", "rep-0")
	// States other than completed do not touch the key.
	f := handed["vf"]
	f.State, f.Finished, f.Replica = engine.Failed, time.Now(), "not-a-replica"
	if err := s.Save(ctx(), f); err != nil {
		t.Fatal(err)
	}
	expect("failed op", "0C0", "v3", "rep-0")
	// An op in flight that is not late does not touch the key.
	inflight := handed["vf"]
	inflight.State, inflight.Replica, inflight.Finished = engine.InFlight, "half-written", time.Time{}
	if err := s.Save(ctx(), inflight); err != nil {
		t.Fatal(err)
	}
	expect("op in flight", "0C0", "v3", "rep-0")
	// A late version (its event came after a newer one's): the last
	// replica follows its write, saved while it is in flight, then the
	// copy of the newest put on top; the newest version stays.
	l := handed["vl"]
	l.OnTop, l.State = "dest-current", engine.InFlight
	if err := s.Save(ctx(), l); err != nil {
		t.Fatal(err)
	}
	expect("late op planned", "0C0", "v3", "rep-0")
	l.Replica = "rep-late"
	if err := s.Save(ctx(), l); err != nil {
		t.Fatal(err)
	}
	expect("late version written", "0C0", "v3", "rep-late")
	l.State, l.OnTopReplica, l.Finished = engine.Completed, "rep-on-top", time.Now()
	if err := s.Save(ctx(), l); err != nil {
		t.Fatal(err)
	}
	expect("newest put back on top", "0C0", "v3", "rep-on-top")
	if err := s.Save(ctx(), l); err != nil { // saved twice: counted once
		t.Fatal(err)
	}
	if o.LateVersions != nil {
		if n := o.LateVersions(t, s); n != 1 {
			t.Fatalf("late versions %d, want 1", n)
		}
	}
	// Other keys are untouched.
	other := newOp("other-key", "v1")
	if _, ok, err := s.LastWritten(ctx(), other.DestKeyID()); err != nil || ok {
		t.Fatalf("another key has a state: %v %v", ok, err)
	}
}

// testSaveUnrecorded: saving an op that was never recorded (or was pruned)
// records it.
func testSaveUnrecorded(t *testing.T, s engine.StateStore, o Options) {
	op := newOp("late", "v1")
	op.Sequencer = "01"
	op.State, op.Replica, op.Finished = engine.Completed, "rep", time.Now()
	if err := s.Save(ctx(), op); err != nil {
		t.Fatal(err)
	}
	if op.Seq == 0 {
		t.Fatal("saved op got no arrival number")
	}
	if ks, ok, err := s.LastWritten(ctx(), op.DestKeyID()); err != nil || !ok || ks.Sequencer != "01" {
		t.Fatalf("key state %+v %v %v", ks, ok, err)
	}
	if added := record(t, s, newOp("late", "v1")); len(added) != 0 {
		t.Fatal("an op saved unrecorded was recorded again")
	}
}

func testSaveAll(t *testing.T, s engine.StateStore, o Options) {
	var ops []*engine.Op
	for i := 0; i < 20; i++ {
		ops = append(ops, newOp(fmt.Sprintf("k%02d", i), "v"))
	}
	record(t, s, ops...)
	handed := pendingAll(t, s, o, engine.OriginEvent, 100)
	for _, op := range handed {
		op.State, op.WriteStarted = engine.InFlight, time.Now()
	}
	if err := s.SaveAll(ctx(), handed); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveAll(ctx(), nil); err != nil {
		t.Fatalf("saving nothing: %v", err)
	}
	for _, op := range handed[:10] {
		op.State, op.Finished, op.Replica = engine.Completed, time.Now(), "r"
	}
	if err := s.SaveAll(ctx(), handed[:10]); err != nil {
		t.Fatal(err)
	}
	if n, _, err := s.Counts(ctx()); err != nil || n["r"] != 10 {
		t.Fatalf("unfinished %v %v, want 10", n, err)
	}
	if o.StateCounts != nil {
		if c := o.StateCounts(t, s); c[engine.InFlight] != 10 || c[engine.Completed] != 10 {
			t.Fatalf("state counts %v", c)
		}
	}
}

func testRuns(t *testing.T, s engine.StateStore, o Options) {
	crashed, err := s.BeginRun(ctx())
	if err != nil || crashed {
		t.Fatalf("first run: crashed %v, %v", crashed, err)
	}
	a := record(t, s, newOp("a", "v"))[0]
	crashed, err = s.BeginRun(ctx()) // no EndRun: the previous run died
	if err != nil {
		t.Fatal(err)
	}
	suspect, err := s.SuspectThrough(ctx())
	if err != nil {
		t.Fatal(err)
	}
	if o.CrashDetection {
		if !crashed || suspect < a.Seq {
			t.Fatalf("after a crash: crashed %v, suspect through %d (op %d)", crashed, suspect, a.Seq)
		}
	} else if crashed || suspect != 0 {
		t.Fatalf("a backend without crash detection said crashed %v, suspect %d", crashed, suspect)
	}
	if err := s.EndRun(ctx()); err != nil {
		t.Fatal(err)
	}
	if crashed, err := s.BeginRun(ctx()); err != nil || crashed {
		t.Fatalf("after a clean stop: crashed %v, %v", crashed, err)
	}
}

func testCursors(t *testing.T, s engine.StateStore, o Options) {
	cs, ok := s.(Cursors)
	if !ok {
		t.Fatalf("%T has no backfill cursors", s)
	}
	if c, err := cs.LoadCursor("r"); err != nil || c != (engine.Cursor{}) {
		t.Fatalf("cursor before any save: %+v, %v", c, err)
	}
	want := engine.Cursor{KeyMarker: "photos/2024/x.jpg", VersionMarker: "v7", Listed: 1200, Submitted: 17,
		Updated: time.Now().UTC().Truncate(time.Millisecond)}
	if err := cs.SaveCursor("r", want); err != nil {
		t.Fatal(err)
	}
	want.Done = true
	if err := cs.SaveCursor("r", want); err != nil {
		t.Fatal(err)
	}
	got, err := cs.LoadCursor("r")
	if err != nil || got.KeyMarker != want.KeyMarker || got.VersionMarker != want.VersionMarker || !got.Done ||
		got.Listed != want.Listed || got.Submitted != want.Submitted || !got.Updated.Equal(want.Updated) {
		t.Fatalf("cursor %+v, %v; want %+v", got, err, want)
	}
	if c, err := cs.LoadCursor("other"); err != nil || c != (engine.Cursor{}) {
		t.Fatalf("another rule's cursor: %+v, %v", c, err)
	}
}

func testOpsOf(t *testing.T, s engine.StateStore, o Options) {
	cs, ok := s.(Cursors)
	if !ok {
		t.Fatalf("%T cannot list the ops of a version", s)
	}
	first, second, other, prefix := newOp("a", "v1"), newOp("a", "v1"), newOp("a", "v2"), newOp("ab", "v1")
	second.Pass = "backfill-1"
	record(t, s, first, second, other, prefix)
	got, err := cs.OpsOf("r", "src", "a", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a@v1//", "a@v1//backfill-1"}; !slices.Equal(ids(got), want) {
		t.Fatalf("ops of a@v1: %q, want %q", ids(got), want)
	}
	if got, err := cs.OpsOf("r", "src", "zz", "v1"); err != nil || len(got) != 0 {
		t.Fatalf("ops of an unknown version: %q, %v", ids(got), err)
	}
}
