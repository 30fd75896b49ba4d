package engine_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/checkpoint"
	"github.com/s3replicad/s3replicad/engine"
)

// bodies renders a destination key's history, oldest first; a delete
// marker is "-".
func bodies(m *memStore, key string) string {
	var out []string
	for _, v := range m.history("dst", key) {
		if v.marker {
			out = append(out, "-")
		} else {
			out = append(out, string(v.body))
		}
	}
	return strings.Join(out, " ")
}

func markerOp(key, version, seq string) *engine.Op {
	o := op(key, version, seq)
	o.Action = engine.ActionDeleteMarker
	return o
}

func waitState(store interface {
	Find(*engine.Op) (*engine.Op, error)
}, o *engine.Op, s engine.State) func() bool {
	return func() bool {
		got, _ := store.Find(o)
		return got != nil && got.State == s
	}
}

// The newest written is a delete marker: a late version is written, then a
// delete marker on top, so that the key stays deleted. A late delete
// marker over a deleted key needs nothing on top.
func TestLateVersionUnderADeleteMarker(t *testing.T) {
	store := openState(t)
	src, dst := newMem(), newMem()
	v1 := src.add("src", "k", memVersion{body: []byte("1")})
	v2 := src.add("src", "k", memVersion{body: []byte("2")})
	dm := src.add("src", "k", memVersion{marker: true})
	runEngine(t, store, src, dst, []*engine.Op{op("k", v1, "01"), markerOp("k", dm, "03")}, waitState(store, markerOp("k", dm, ""), engine.Completed))
	late := op("k", v2, "02")
	runEngine(t, store, src, dst, []*engine.Op{late}, waitState(store, late, engine.Completed))
	if got, want := bodies(dst, "k"), "1 - 2 -"; got != want {
		t.Fatalf("destination history %q, want %q", got, want)
	}
	dm0 := src.add("src", "k", memVersion{marker: true}) // an older marker's event, later still
	lateMarker := markerOp("k", dm0, "025")
	runEngine(t, store, src, dst, []*engine.Op{lateMarker}, waitState(store, lateMarker, engine.Completed))
	if got, want := bodies(dst, "k"), "1 - 2 - -"; got != want {
		t.Fatalf("destination history %q, want %q", got, want)
	}
}

// The daemon dies after the late version is written, and again after the
// copy on top is written: each restart finds what was written, and the
// destination holds the late version once and one copy on top.
func TestCrashesAroundTheCopyOnTop(t *testing.T) {
	store := openState(t)
	st := &frozenState{Store: store}
	src, dst := newMem(), newMem()
	v1 := src.add("src", "k", memVersion{body: []byte("1")})
	v2 := src.add("src", "k", memVersion{body: []byte("2")})
	runEngine(t, st, src, dst, []*engine.Op{op("k", v2, "02")}, func() bool { return dst.puts.Load() == 1 })

	// Crash right after the late version's write (before its state is saved).
	late := op("k", v1, "01")
	dst.afterPut = func() { st.frozen.Store(true) }
	runEngine(t, st, src, dst, []*engine.Op{late}, func() bool { return dst.puts.Load() == 2 })
	st.frozen.Store(false)
	dst.afterPut = nil
	runEngine(t, st, src, dst, nil, waitState(store, late, engine.Completed))
	if got, want := bodies(dst, "k"), "2 1 2"; got != want {
		t.Fatalf("after a crash following the late write: destination history %q, want %q", got, want)
	}

	// Crash right after the copy on top (the late write's state saved).
	v0 := src.add("src", "k", memVersion{body: []byte("0")})
	late0 := op("k", v0, "005")
	var n atomic.Int32
	dst.afterPut = func() {
		if n.Add(1) == 2 {
			st.frozen.Store(true)
		}
	}
	runEngine(t, st, src, dst, []*engine.Op{late0}, func() bool { return n.Load() == 2 })
	st.frozen.Store(false)
	dst.afterPut = nil
	runEngine(t, st, src, dst, nil, waitState(store, late0, engine.Completed))
	if got, want := bodies(dst, "k"), "2 1 2 0 2"; got != want {
		t.Fatalf("after a crash following the copy on top: destination history %q, want %q", got, want)
	}
}

// Events that cross within the order window are sorted before anything is
// written: the older version first, no copy on top.
func TestOrderWindowSortsCrossedEvents(t *testing.T) {
	store := openState(t)
	src, dst := newMem(), newMem()
	v1 := src.add("src", "k", memVersion{body: []byte("1")})
	v2 := src.add("src", "k", memVersion{body: []byte("2")})
	e, err := engine.New(engine.Config{
		Rules:  []engine.Rule{{ID: "r", Enabled: true, SourceBucket: "src", Destination: "d", DestinationBucket: "dst"}},
		Source: src, Destinations: map[string]engine.Destination{"d": dst},
		State: store, Workers: 2, OrderWindow: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	newer, older := op("k", v2, "02"), op("k", v1, "01")
	newer.Origin, older.Origin = engine.OriginEvent, engine.OriginEvent
	newer.EventTime, older.EventTime = time.Now(), time.Now()
	// Submit records as backfill does; the window applies to live events,
	// which is what these are.
	if _, err := e.Submit(ctx, []*engine.Op{newer}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if _, err := e.Submit(ctx, []*engine.Op{older}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for dst.puts.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got, want := bodies(dst, "k"), "1 2"; got != want {
		t.Fatalf("destination history %q, want %q (sorted, nothing late)", got, want)
	}
}

// A source object that `restore` wrote names the replica it came from:
// when that replica is the destination's current version, it is recorded
// as the new version's replica with no write; otherwise it is made current
// by a copy inside the destination. Its bytes are never read again.
func TestFailbackDoesNotCopyRestoredObjects(t *testing.T) {
	store := openState(t)
	src, dst := newMem(), newMem()
	x := dst.add("dst", "k", memVersion{body: []byte("good"), meta: engine.ObjectMeta{Metadata: map[string]string{engine.MetaSourceVersion: "v-old"}}})
	restored := src.add("src", "k", memVersion{body: []byte("good"), meta: engine.ObjectMeta{Metadata: map[string]string{engine.MetaRestoredFrom: x, "owner": "me"}}})
	o := op("k", restored, "05")
	runEngine(t, store, src, dst, []*engine.Op{o}, waitState(store, o, engine.Completed))
	got, _ := store.Find(o)
	if dst.puts.Load() != 1 || got.Replica != x {
		t.Fatalf("restored object over its current replica: %d writes (want the 1 of the setup), replica %q (want %q)", dst.puts.Load(), got.Replica, x)
	}

	// Now the replica is no longer current: a copy inside the destination.
	dst.add("dst", "k", memVersion{body: []byte("encrypted"), meta: engine.ObjectMeta{Metadata: map[string]string{engine.MetaSourceVersion: "v-bad"}}})
	again := src.add("src", "k", memVersion{body: []byte("good"), meta: engine.ObjectMeta{Metadata: map[string]string{engine.MetaRestoredFrom: x, "owner": "me"}}})
	o2 := op("k", again, "07")
	runEngine(t, store, src, dst, []*engine.Op{o2}, waitState(store, o2, engine.Completed))
	if dst.copies.Load() != 1 {
		t.Fatalf("%d copies inside the destination, want 1", dst.copies.Load())
	}
	if got, want := bodies(dst, "k"), "good encrypted good"; got != want {
		t.Fatalf("destination history %q, want %q", got, want)
	}
	cur, _, _ := dst.Current(context.Background(), "dst", "k")
	_, _, meta, _ := dst.Head(context.Background(), "dst", "k", cur.VersionID)
	if meta[engine.MetaSourceVersion] != again || meta["owner"] != "me" {
		t.Fatalf("the copy's metadata %v: want a replica of %s with the user metadata", meta, again)
	}
}

// The daemon dies after writing a version (3) but before recording it,
// and then an older version's event comes in, older (0) or newer (2) than
// the last one recorded (1). Either way the older version is written, 3 is
// back on top, once, and the one extra copy is counted as a late version.
func TestLateVersionOverAnUnrecordedWrite(t *testing.T) {
	for _, tc := range []struct {
		name, lateSeq, lateBody string
	}{
		{"older than the last recorded", "005", "0"},
		{"newer than the last recorded", "02", "2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := openState(t)
			st := &frozenState{Store: store}
			src, dst := newMem(), newMem()
			v1 := src.add("src", "k", memVersion{body: []byte("1")})
			vLate := src.add("src", "k", memVersion{body: []byte(tc.lateBody)})
			first := op("k", v1, "01")
			runEngine(t, st, src, dst, []*engine.Op{first}, waitState(store, first, engine.Completed))

			newest := op("k", src.add("src", "k", memVersion{body: []byte("3")}), "03")
			dst.afterPut = func() { st.frozen.Store(true) } // kill -9 right after the write
			runEngine(t, st, src, dst, []*engine.Op{newest}, func() bool { return dst.puts.Load() == 2 })
			st.frozen.Store(false)
			dst.afterPut = nil

			// The resumed op is held back by a refused lookup, and the late
			// one goes first (as on another node, or out of a backoff).
			dst.findFails.Store(1)
			late := op("k", vLate, tc.lateSeq)
			runEngine(t, st, src, dst, []*engine.Op{late}, func() bool {
				return waitState(store, late, engine.Completed)() && waitState(store, newest, engine.Completed)()
			})
			if got, want := bodies(dst, "k"), "1 3 "+tc.lateBody+" 3"; got != want {
				t.Fatalf("destination history %q, want %q", got, want)
			}
			status, err := store.Status(time.Now())
			if err != nil || status.LateVersions != 1 {
				t.Fatalf("status counts %d late versions (%v), want 1 (the one extra copy)", status.LateVersions, err)
			}
		})
	}
}

// Two crashes in a row on one key whose events crossed, as a cluster's
// shards move: node 1 writes the newest version (3) and dies before
// recording it; node 2, which knows nothing of 3, writes an older version
// (2) on top and dies too. Node 3 takes node 1's work first and records 3
// (its replica is found), then node 2's: 2 is late now, and what goes
// back on top is 3, the recorded newest, not 2's own unrecorded replica.
func TestLateVersionAfterTwoUnrecordedWrites(t *testing.T) {
	src, dst := newMem(), newMem()
	v2 := src.add("src", "k", memVersion{body: []byte("2")})
	v3 := src.add("src", "k", memVersion{body: []byte("3")})
	store, st, wrote := twoUnrecordedWrites(t, src, dst, op("k", v3, "03"), op("k", v2, "02"))
	if got, want := bodies(dst, "k"), "1 3 2"; got != want {
		t.Fatalf("after the two crashes: destination history %q, want %q", got, want)
	}
	taken := op("k", v2, "02")
	taken.WriteStarted = wrote // a takeover carries the op's write mark
	runEngine(t, st, src, dst, []*engine.Op{taken}, waitState(store, taken, engine.Completed))
	if got, want := bodies(dst, "k"), "1 3 2 3"; got != want || currentOf(t, dst, "k") != v3 {
		t.Fatalf("destination history %q, want %q (3 back on top, 2 not written twice)", got, want)
	}
}

// currentOf is what the destination key's current version is: "-" for a
// delete marker, else the source version its replica copies.
func currentOf(t *testing.T, dst *memStore, key string) string {
	t.Helper()
	cur, ok, err := dst.Current(context.Background(), "dst", key)
	if err != nil || !ok {
		t.Fatalf("current version of %s: ok %v, %v", key, ok, err)
	}
	if cur.DeleteMarker {
		return "-"
	}
	_, _, meta, err := dst.Head(context.Background(), "dst", key, cur.VersionID)
	if err != nil {
		t.Fatal(err)
	}
	return meta[engine.MetaSourceVersion]
}

// twoUnrecordedWrites sets up the two crashes of
// TestLateVersionAfterTwoUnrecordedWrites, with older as node 2's op, and
// has node 3 record the newest; it returns node 3's state and when node 2
// wrote.
func twoUnrecordedWrites(t *testing.T, src, dst *memStore, newest, older *engine.Op) (*checkpoint.Store, *frozenState, time.Time) {
	t.Helper()
	store := openState(t)
	st := &frozenState{Store: store}
	first := op("k", src.add("src", "k", memVersion{body: []byte("1")}), "01")
	runEngine(t, st, src, dst, []*engine.Op{first}, waitState(store, first, engine.Completed))
	n := dst.puts.Load()
	dst.afterPut = func() { st.frozen.Store(true) }
	dst.afterMarker = dst.afterPut
	runEngine(t, st, src, dst, []*engine.Op{newest}, func() bool { return dst.puts.Load() == n+1 })
	st.frozen.Store(false)

	node2 := &frozenState{Store: openState(t)}
	dst.afterPut = func() { node2.frozen.Store(true) }
	dst.afterMarker = dst.afterPut
	wrote := time.Now()
	runEngine(t, node2, src, dst, []*engine.Op{older}, func() bool { return dst.puts.Load() == n+2 })
	dst.afterPut, dst.afterMarker = nil, nil
	runEngine(t, st, src, dst, nil, waitState(store, newest, engine.Completed))
	return store, st, wrote
}

// The two crashes, and then what else can happen before node 2's op is
// taken over: another late version goes first, or node 3 dies too, after
// the late write or after the copy on top. The newest ends on top.
func TestLateVersionAfterTwoUnrecordedWritesAndMore(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{"another late version first", "1 3 2 15 3 3"},
		{"a crash after the late write", "1 3 2 3"},
		{"a crash after the copy on top", "1 3 2 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := newMem(), newMem()
			v15 := src.add("src", "k", memVersion{body: []byte("15")})
			v2 := src.add("src", "k", memVersion{body: []byte("2")})
			v3 := src.add("src", "k", memVersion{body: []byte("3")})
			store, st, wrote := twoUnrecordedWrites(t, src, dst, op("k", v3, "03"), op("k", v2, "02"))
			taken := op("k", v2, "02")
			taken.WriteStarted = wrote
			switch tc.name {
			case "another late version first":
				late := op("k", v15, "015")
				runEngine(t, st, src, dst, []*engine.Op{late}, waitState(store, late, engine.Completed))
				runEngine(t, st, src, dst, []*engine.Op{taken}, waitState(store, taken, engine.Completed))
			default:
				var n atomic.Int32
				stop := int32(1)
				if tc.name == "a crash after the copy on top" {
					stop = 2
				}
				dst.afterPut = func() {
					if n.Add(1) == stop {
						st.frozen.Store(true)
					}
				}
				runEngine(t, st, src, dst, []*engine.Op{taken}, func() bool { return n.Load() >= stop })
				st.frozen.Store(false)
				dst.afterPut = nil
				runEngine(t, st, src, dst, nil, waitState(store, taken, engine.Completed))
			}
			if got := bodies(dst, "k"); got != tc.want || currentOf(t, dst, "k") != v3 {
				t.Fatalf("destination history %q, want %q with a replica of the newest (%s) current", got, tc.want, v3)
			}
		})
	}
}

// The older of the two unrecorded writes is a delete marker, which carries
// no metadata: taken for an older op's, it does not stay on top of the
// newest version, whether its own op is taken over first or another late
// version goes first.
func TestLateDeleteMarkerAfterTwoUnrecordedWrites(t *testing.T) {
	for _, tc := range []struct {
		name          string
		lateCopyFirst bool
		want          string
	}{
		{"its op taken over", false, "1 3 - 3"},
		{"a late version first", true, "1 3 - 15 3 - 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := newMem(), newMem()
			v15 := src.add("src", "k", memVersion{body: []byte("15")})
			dm2 := src.add("src", "k", memVersion{marker: true})
			v3 := src.add("src", "k", memVersion{body: []byte("3")})
			store, st, wrote := twoUnrecordedWrites(t, src, dst, op("k", v3, "03"), markerOp("k", dm2, "02"))
			if got, want := bodies(dst, "k"), "1 3 -"; got != want {
				t.Fatalf("after the two crashes: destination history %q, want %q", got, want)
			}
			if tc.lateCopyFirst {
				late := op("k", v15, "015")
				runEngine(t, st, src, dst, []*engine.Op{late}, waitState(store, late, engine.Completed))
			}
			taken := markerOp("k", dm2, "02")
			taken.WriteStarted = wrote
			runEngine(t, st, src, dst, []*engine.Op{taken}, waitState(store, taken, engine.Completed))
			if got := bodies(dst, "k"); got != tc.want || currentOf(t, dst, "k") != v3 {
				t.Fatalf("destination history %q, want %q with a replica of the newest (%s) current", got, tc.want, v3)
			}
		})
	}
}

// One node: a late version (2) is written and the daemon dies before
// recording it; after the restart its op is held back a moment and an
// older late version (15) goes first, which puts the newest (3) back on
// top of 2's unrecorded write. 2's op then finds its replica below and
// keeps what it planned to put on top: 3, not its own replica.
func TestLateOpResumedUnderAnotherLateVersion(t *testing.T) {
	store := openState(t)
	st := &frozenState{Store: store}
	src, dst := newMem(), newMem()
	v1 := src.add("src", "k", memVersion{body: []byte("1")})
	v15 := src.add("src", "k", memVersion{body: []byte("15")})
	v2 := src.add("src", "k", memVersion{body: []byte("2")})
	v3 := src.add("src", "k", memVersion{body: []byte("3")})
	a, c := op("k", v1, "01"), op("k", v3, "03")
	runEngine(t, st, src, dst, []*engine.Op{a, c}, func() bool {
		return waitState(store, a, engine.Completed)() && waitState(store, c, engine.Completed)()
	})
	late := op("k", v2, "02")
	dst.afterPut = func() { st.frozen.Store(true) }
	runEngine(t, st, src, dst, []*engine.Op{late}, func() bool { return dst.puts.Load() == 3 })
	st.frozen.Store(false)
	dst.afterPut = nil
	dst.findFails.Store(1)
	older := op("k", v15, "015")
	runEngine(t, st, src, dst, []*engine.Op{older}, func() bool {
		return waitState(store, late, engine.Completed)() && waitState(store, older, engine.Completed)()
	})
	if got, want := bodies(dst, "k"), "1 3 2 15 3 3"; got != want || currentOf(t, dst, "k") != v3 {
		t.Fatalf("destination history %q, want %q with a replica of the newest (%s) current", got, want, v3)
	}
}

// A newer delete marker (3) is written and not recorded, and a late
// version (005) comes first: the marker is taken for an older op's, the
// recorded newest goes back on top, and the marker's op, finding nothing
// above that, writes its marker again. The key ends deleted.
func TestLateVersionOverAnUnrecordedNewerMarker(t *testing.T) {
	store := openState(t)
	st := &frozenState{Store: store}
	src, dst := newMem(), newMem()
	v1 := src.add("src", "k", memVersion{body: []byte("1")})
	v0 := src.add("src", "k", memVersion{body: []byte("0")})
	dm3 := src.add("src", "k", memVersion{marker: true})
	first := op("k", v1, "01")
	runEngine(t, st, src, dst, []*engine.Op{first}, waitState(store, first, engine.Completed))
	newest := markerOp("k", dm3, "03")
	dst.afterMarker = func() { st.frozen.Store(true) }
	runEngine(t, st, src, dst, []*engine.Op{newest}, func() bool { return dst.puts.Load() == 2 })
	st.frozen.Store(false)
	dst.afterMarker = nil
	dst.findFails.Store(1)
	late := op("k", v0, "005")
	runEngine(t, st, src, dst, []*engine.Op{late}, func() bool {
		return waitState(store, late, engine.Completed)() && waitState(store, newest, engine.Completed)()
	})
	if got, want := bodies(dst, "k"), "1 - 0 1 -"; got != want {
		t.Fatalf("destination history %q, want %q (deleted in the end)", got, want)
	}
}

// The lookups that decide what goes on top fail once each (the HEAD of
// the current version refused, the search for the newest's replica a
// 503): the op is tried again, plans again from the start, and ends as if
// nothing had failed.
func TestLateVersionAfterTwoUnrecordedWritesWhenTheDestinationFails(t *testing.T) {
	src, dst := newMem(), newMem()
	v2 := src.add("src", "k", memVersion{body: []byte("2")})
	v3 := src.add("src", "k", memVersion{body: []byte("3")})
	store, st, wrote := twoUnrecordedWrites(t, src, dst, op("k", v3, "03"), op("k", v2, "02"))
	var heads, finds atomic.Int32
	dst.Fault = func(call string) error {
		switch {
		case call == "Head" && heads.Add(1) == 1:
			return &engine.Error{Class: engine.Transient, Reason: engine.ReasonNetwork, Err: errors.New("connection refused")}
		case call == "FindReplica" && finds.Add(1) == 1:
			return &engine.Error{Class: engine.Transient, Reason: engine.ReasonServerError, Err: errors.New("503 Service Unavailable")}
		}
		return nil
	}
	taken := op("k", v2, "02")
	taken.WriteStarted = wrote
	runEngine(t, st, src, dst, []*engine.Op{taken}, waitState(store, taken, engine.Completed))
	if heads.Load() < 2 || finds.Load() < 2 {
		t.Fatalf("%d HEADs and %d lookups: the faults were not met", heads.Load(), finds.Load())
	}
	if got, want := bodies(dst, "k"), "1 3 2 3"; got != want || currentOf(t, dst, "k") != v3 {
		t.Fatalf("destination history %q, want %q with a replica of the newest (%s) current", got, want, v3)
	}
}
