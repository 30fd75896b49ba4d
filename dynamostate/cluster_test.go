package dynamostate_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/dynamostate"
	"github.com/s3replicad/s3replicad/engine"
)

func opFor(key, version string) *engine.Op {
	return &engine.Op{Rule: "r", Bucket: "src", Key: key, VersionID: version, Size: 10, Action: engine.ActionCopy,
		Origin: engine.OriginEvent, Dest: "dr", DestBucket: "dst", DestKey: key, Recorded: time.Now(), State: engine.Pending}
}

// opsPerShard makes n ops for every shard.
func opsPerShard(s *dynamostate.Store, n int, version string) []*engine.Op {
	have := make([]int, s.Shards())
	var ops []*engine.Op
	for i := 0; len(ops) < n*s.Shards(); i++ {
		op := opFor(fmt.Sprintf("key-%04d", i), version)
		if sh := s.Shard(op.DestKeyID()); have[sh] < n {
			have[sh]++
			ops = append(ops, op)
		}
	}
	return ops
}

// cleanHandoff is an engine that lets go of shards at once.
func cleanHandoff(context.Context, func(string) bool) error { return nil }

// exclusive checks, many times a second until the test ends (or it is
// stopped), that no two nodes own a shard at the same moment.
func exclusive(t *testing.T, nodes ...*node) func() {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			seen := map[int]string{}
			for _, n := range nodes {
				for _, sh := range n.Held() {
					if other, ok := seen[sh]; ok {
						t.Errorf("shard %d owned by %s and %s at once", sh, other, n.NodeID())
						return
					}
					seen[sh] = n.NodeID()
				}
			}
		}
	}()
	var once sync.Once
	stopFn := func() { once.Do(func() { close(stop); wg.Wait() }) }
	t.Cleanup(stopFn)
	return stopFn
}

func heldCounts(nodes ...*node) []int {
	var out []int
	for _, n := range nodes {
		out = append(out, len(n.Held()))
	}
	return out
}

// Three nodes share the shards out evenly, each shard to one node, also
// when they join one after another (the later ones ask for leases and get
// them handed over).
func TestShardsSplitBetweenNodes(t *testing.T) {
	t.Parallel()
	cfg := newTable(t, 12)
	a := startNode(t, cfg, "a")
	a.SetHandoff(cleanHandoff)
	waitFor(t, 5*time.Second, "a holds every shard", func() bool { return len(a.Held()) == 12 })
	b := startNode(t, cfg, "b")
	b.SetHandoff(cleanHandoff)
	c := startNode(t, cfg, "c")
	c.SetHandoff(cleanHandoff)
	exclusive(t, a, b, c)
	took := waitFor(t, 15*time.Second, "4 shards each", func() bool { return slices.Equal(heldCounts(a, b, c), []int{4, 4, 4}) })
	t.Logf("balanced after %s", took)
	// And it stays so.
	time.Sleep(2 * time.Second)
	if got := heldCounts(a, b, c); !slices.Equal(got, []int{4, 4, 4}) {
		t.Fatalf("held %v after settling", got)
	}
	// Ops recorded by any node are handed out by their shard's owner
	// only, and once (as long as no lease changes hands: a node that
	// lost its shards for a moment, on a loaded machine, hands them out
	// again, rightly, and marks them possibly written).
	ops := opsPerShard(a.Store, 2, "v1")
	if _, err := c.Record(context.Background(), ops); err != nil {
		t.Fatal(err)
	}
	gains := func() (n int64) {
		for _, x := range []*node{a, b, c} {
			n += x.LeaseStats().Gained
		}
		return n
	}
	gained := gains()
	got := map[string]string{}
	waitFor(t, 10*time.Second, "every op handed out", func() bool {
		for _, n := range []*node{a, b, c} {
			handed, _, err := n.Pending(context.Background(), engine.OriginEvent, 0, 100)
			if err != nil {
				t.Fatal(err)
			}
			for _, op := range handed {
				if _, ok := n.Owned(op.DestKeyID()); !ok {
					t.Errorf("%s was handed %s of a shard it does not own", n.NodeID(), op)
				}
				st := n.LeaseStats()
				if !op.WriteStarted.IsZero() {
					// Legitimate only when the node could not renew in
					// time and took the shard back.
					if st.Expired == 0 {
						t.Errorf("%s: %s marked as possibly written after clean handovers (%+v)", n.NodeID(), op, st)
					} else {
						t.Logf("%s: %s marked as possibly written: the node's lease expired locally (%+v)", n.NodeID(), op, st)
					}
				}
				if prev, dup := got[op.ID()]; dup && gains() == gained {
					t.Errorf("%s handed out to %s and %s", op, prev, n.NodeID())
				}
				got[op.ID()] = n.NodeID()
			}
		}
		return len(got) == len(ops)
	})
	per := map[string]int{}
	for _, id := range got {
		per[id]++
	}
	if gains() == gained && (per["a"] != 8 || per["b"] != 8 || per["c"] != 8) {
		t.Errorf("ops handed out per node %v, want 8 each (2 for each of 4 shards)", per)
	}
}

// A node that stops renewing (killed: no Release) loses its shards to the
// others within the lease plus a few seconds; its deadline passes before
// any of them is taken; the ops it had are handed out as possibly
// written; and whatever it still tries to write after the new owner wrote
// is refused.
func TestTakeoverAfterCrash(t *testing.T) {
	t.Parallel()
	cfg := newTable(t, 8)
	a := startNode(t, cfg, "a")
	a.SetHandoff(cleanHandoff)
	waitFor(t, 5*time.Second, "a holds every shard", func() bool { return len(a.Held()) == 8 })
	b := startNode(t, cfg, "b")
	b.SetHandoff(cleanHandoff)
	stopExclusive := exclusive(t, a, b)
	waitFor(t, 10*time.Second, "4 shards each", func() bool { return slices.Equal(heldCounts(a, b), []int{4, 4}) })
	ctx := context.Background()
	ops := opsPerShard(a.Store, 2, "v1")
	if _, err := a.Record(ctx, ops); err != nil {
		t.Fatal(err)
	}
	aOps, _, err := a.Pending(ctx, engine.OriginEvent, 0, 100)
	if err != nil || len(aOps) != 8 {
		t.Fatalf("a was handed %d ops, %v", len(aOps), err)
	}
	aShards := a.Held()
	deadlines := map[int]time.Time{}
	for _, op := range aOps {
		dl, ok := a.Owned(op.DestKeyID())
		if !ok {
			t.Fatalf("a does not own %s", op)
		}
		deadlines[a.Shard(op.DestKeyID())] = dl
	}

	crashed := time.Now()
	a.crash()
	// When did b first own each of a's shards?
	gained := map[int]time.Time{}
	probe := map[int]string{}
	for _, op := range aOps {
		probe[a.Shard(op.DestKeyID())] = op.DestKeyID()
	}
	took := waitFor(t, cfg.Lease+5*time.Second, "b takes a's shards", func() bool {
		for sh, key := range probe {
			if _, ok := b.Owned(key); ok && gained[sh].IsZero() {
				gained[sh] = time.Now()
			}
		}
		return len(gained) == len(probe)
	})
	t.Logf("a's %d shards taken over %s after it stopped (lease %s)", len(aShards), took, cfg.Lease)
	if took > cfg.Lease+3*time.Second {
		t.Errorf("takeover took %s, more than the lease plus 3s", took)
	}
	for sh, at := range gained {
		if !at.After(deadlines[sh]) {
			t.Errorf("shard %d taken at %s, before a's deadline %s", sh, at.Sub(crashed), deadlines[sh].Sub(crashed))
		}
		if _, ok := a.Owned(probe[sh]); ok {
			t.Errorf("a still owns shard %d after the takeover", sh)
		}
	}

	if st := b.LeaseStats(); st.TakenOver != int64(len(aShards)) || st.GainedSuspect != int64(len(aShards)) {
		t.Errorf("b's lease stats %+v: want %d taken over, as suspect", st, len(aShards))
	}
	// b hands out every op; those of a's shards as possibly written.
	all, _, err := b.Pending(ctx, engine.OriginEvent, 0, 100)
	if err != nil || len(all) != len(ops) {
		t.Fatalf("b was handed %d ops, %v", len(all), err)
	}
	for _, op := range all {
		fromA := slices.Contains(aShards, b.Shard(op.DestKeyID()))
		if fromA == op.WriteStarted.IsZero() {
			t.Errorf("%s (from a: %v) has WriteStarted %v", op, fromA, op.WriteStarted)
		}
	}

	// Fencing. a believes (as a node whose clock went wrong would) that it
	// still holds its shards with its old epoch.
	stopExclusive()
	taken := aOps[0]
	sh := a.Shard(taken.DestKeyID())
	oldEpoch := a.Epoch(sh)
	if oldEpoch == 0 || b.Epoch(sh) <= oldEpoch {
		t.Fatalf("epochs: a %d, b %d", oldEpoch, b.Epoch(sh))
	}
	var mine *engine.Op
	for _, op := range all {
		if op.ID() == taken.ID() {
			mine = op
		}
	}
	if err := b.SaveUpload(ctx, mine.ID(), &engine.Upload{UploadID: "up-b", Size: 1}); err != nil {
		t.Fatal(err)
	}
	mine.State, mine.Replica, mine.Finished = engine.Completed, "rep-b", time.Now()
	if err := b.Save(ctx, mine); err != nil {
		t.Fatal(err)
	}
	a.ExtendLocally(sh, oldEpoch)
	late := *taken
	late.State, late.Replica, late.Finished = engine.Completed, "rep-a", time.Now()
	if err := a.Save(ctx, &late); !errors.Is(err, dynamostate.ErrLeaseLost) {
		t.Fatalf("the old owner's save after the new owner's: %v, want ErrLeaseLost", err)
	}
	late.State = engine.Failed
	if err := a.Save(ctx, &late); !errors.Is(err, dynamostate.ErrLeaseLost) {
		t.Fatalf("the old owner's save of the op: %v, want ErrLeaseLost", err)
	}
	if ks, _, _ := b.LastWritten(ctx, taken.DestKeyID()); ks.LastReplica != engine.VersionDigest("rep-b") {
		t.Fatalf("key state %+v: the old owner's write went through", ks)
	}
	if err := a.SaveUpload(ctx, taken.ID(), &engine.Upload{UploadID: "up-a", Size: 1}); !errors.Is(err, dynamostate.ErrLeaseLost) {
		t.Fatalf("the old owner's upload over the new owner's: %v, want ErrLeaseLost", err)
	}
	if up, _ := b.LoadUpload(ctx, mine.ID()); up == nil || up.UploadID != "up-b" {
		t.Fatalf("upload %+v: the old owner's write went through", up)
	}
	if cur, err := b.Current(ctx, mine); err != nil || cur.State != engine.Completed || cur.Replica != "rep-b" {
		t.Fatalf("current %+v, %v", cur, err)
	}
	// Without that belief, a refuses by itself.
	for _, other := range aOps {
		if a.Shard(other.DestKeyID()) == sh {
			continue
		}
		if err := a.Save(ctx, other); !errors.Is(err, dynamostate.ErrLeaseLost) {
			t.Fatalf("save for a shard a no longer holds: %v, want ErrLeaseLost", err)
		}
		break
	}
}

// A shard taken from a dead node and handed on cleanly before its ops ran
// keeps them suspect: the next owner also looks for their replicas first
// (the dead node may have written them), and so does the one after.
func TestSuspicionSurvivesACleanHandover(t *testing.T) {
	t.Parallel()
	cfg := newTable(t, 4)
	a := startNode(t, cfg, "a")
	waitFor(t, 5*time.Second, "a holds every shard", func() bool { return len(a.Held()) == 4 })
	ctx := context.Background()
	ops := opsPerShard(a.Store, 1, "v1")
	if _, err := a.Record(ctx, ops); err != nil {
		t.Fatal(err)
	}
	a.crash()
	b := startNode(t, cfg, "b")
	b.SetHandoff(cleanHandoff)
	waitFor(t, cfg.Lease+5*time.Second, "b takes a's shards", func() bool { return len(b.Held()) == 4 })
	c := startNode(t, cfg, "c")
	c.SetHandoff(cleanHandoff)
	exclusive(t, b, c)
	waitFor(t, 10*time.Second, "2 shards each", func() bool { return slices.Equal(heldCounts(b, c), []int{2, 2}) })
	if st := c.LeaseStats(); st.TakenOver != 0 || st.GainedSuspect != 0 {
		t.Fatalf("c's lease stats %+v: want its shards handed over cleanly", st)
	}
	for _, n := range []*node{b, c} {
		// Handed out once the dead node's last requests have landed.
		var handed []*engine.Op
		waitFor(t, 5*time.Second, n.NodeID()+" hands out its 2 ops", func() bool {
			got, _, err := n.Pending(ctx, engine.OriginEvent, 0, 100)
			if err != nil {
				t.Fatal(err)
			}
			handed = append(handed, got...)
			return len(handed) == 2
		})
		for _, op := range handed {
			if op.WriteStarted.IsZero() {
				t.Errorf("%s handed %s as never written: the dead node may have written it", n.NodeID(), op)
			}
		}
	}
	// Ops recorded from now on are not suspect.
	fresh := opsPerShard(c.Store, 1, "v2")
	if _, err := c.Record(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	time.Sleep(cfg.Lease + time.Second) // past the suspect time (a lease after the takeover)
	later := opsPerShard(c.Store, 1, "v3")
	if _, err := c.Record(ctx, later); err != nil {
		t.Fatal(err)
	}
	handed, _, err := c.Pending(ctx, engine.OriginEvent, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range handed {
		if op.VersionID == "v3" && !op.WriteStarted.IsZero() {
			t.Errorf("%s, recorded after the suspect time, handed as possibly written", op)
		}
	}
}

// A clean stop hands every shard over at once: the others own them
// within a tick, not a lease, and hand their ops out as they are.
func TestReleaseHandsOverAtOnce(t *testing.T) {
	t.Parallel()
	cfg := newTable(t, 8)
	cfg.Lease = 6 * time.Second // so that "at once" is clearly not "after the lease"
	a := startNode(t, cfg, "a")
	a.SetHandoff(cleanHandoff)
	waitFor(t, 5*time.Second, "a holds every shard", func() bool { return len(a.Held()) == 8 })
	b := startNode(t, cfg, "b")
	b.SetHandoff(cleanHandoff)
	exclusive(t, a, b)
	waitFor(t, 15*time.Second, "4 shards each", func() bool { return slices.Equal(heldCounts(a, b), []int{4, 4}) })
	ctx := context.Background()
	ops := opsPerShard(a.Store, 1, "v1")
	if _, err := b.Record(ctx, ops); err != nil {
		t.Fatal(err)
	}
	if handed, _, err := a.Pending(ctx, engine.OriginEvent, 0, 100); err != nil || len(handed) != 4 {
		t.Fatalf("a was handed %d, %v", len(handed), err)
	}
	a.crash() // the lease manager stops first, as at a clean shutdown
	start := time.Now()
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if len(a.Held()) != 0 {
		t.Fatalf("a holds %v after Release", a.Held())
	}
	took := waitFor(t, cfg.Lease, "b holds every shard", func() bool { return len(b.Held()) == 8 })
	t.Logf("released shards taken over %s after Release (lease %s)", time.Since(start), cfg.Lease)
	if took > cfg.Lease/2 {
		t.Errorf("taking released shards took %s", took)
	}
	handed, _, err := b.Pending(ctx, engine.OriginEvent, 0, 100)
	if err != nil || len(handed) != 8 {
		t.Fatalf("b was handed %d, %v", len(handed), err)
	}
	for _, op := range handed {
		if !op.WriteStarted.IsZero() {
			t.Errorf("%s marked as possibly written after a clean release", op)
		}
	}
	if st := b.LeaseStats(); st.TakenOver != 0 {
		t.Errorf("b took leases over after a clean release: %+v", st)
	}
	st, err := b.Status(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st.Nodes {
		if n.ID == "a" && (!n.Stopped || n.Live || n.Leases != 0) {
			t.Errorf("status of the released node: %+v", n)
		}
		if n.ID == "b" && (n.Stopped || !n.Live || n.Leases != 8) {
			t.Errorf("status of b: %+v", n)
		}
	}
}

// Without a handoff (an engine that cannot say it stopped writing) the
// owner hands a wanted shard over only at its deadline, and the new owner
// treats its ops as possibly written.
func TestHandoverWithoutHandoffIsSuspect(t *testing.T) {
	t.Parallel()
	cfg := newTable(t, 4)
	a := startNode(t, cfg, "a")
	waitFor(t, 5*time.Second, "a holds every shard", func() bool { return len(a.Held()) == 4 })
	ctx := context.Background()
	if _, err := a.Record(ctx, opsPerShard(a.Store, 1, "v1")); err != nil {
		t.Fatal(err)
	}
	b := startNode(t, cfg, "b")
	exclusive(t, a, b)
	waitFor(t, 15*time.Second, "2 shards each", func() bool { return slices.Equal(heldCounts(a, b), []int{2, 2}) })
	handed, _, err := b.Pending(ctx, engine.OriginEvent, 0, 100)
	if err != nil || len(handed) != 2 {
		t.Fatalf("b was handed %d, %v", len(handed), err)
	}
	for _, op := range handed {
		if op.WriteStarted.IsZero() {
			t.Errorf("%s handed over without the engine's word, yet not marked as possibly written", op)
		}
	}
}

// A node cut off from the table stops owning its shards by its deadline;
// the others take them after the lease; when the network heals, the node
// learns it lost them, takes nothing wrongly, and gets its share back by
// asking. A short outage costs nothing.
func TestCutOffFromTheTable(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"stall", "refuse"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			cfg := newTable(t, 8)
			cfg.Lease = 4 * time.Second
			proxy := newFaultProxy(t, dynamo.Endpoint)
			acfg := cfg
			acfg.Endpoint = proxy.URL()
			a := startNode(t, acfg, "a")
			a.SetHandoff(cleanHandoff)
			waitFor(t, 5*time.Second, "a holds every shard", func() bool { return len(a.Held()) == 8 })
			b := startNode(t, cfg, "b")
			b.SetHandoff(cleanHandoff)
			exclusive(t, a, b)
			waitFor(t, 15*time.Second, "4 shards each", func() bool { return slices.Equal(heldCounts(a, b), []int{4, 4}) })
			before := a.Held()

			// A blip much shorter than the margin: nothing changes hands
			// (unless the machine is so loaded that a missed its renewals
			// besides: then it must have given its shards up in time).
			proxy.set(mode)
			time.Sleep(cfg.Lease / 5)
			proxy.set("pass")
			time.Sleep(cfg.Lease)
			if got := a.Held(); !slices.Equal(got, before) {
				if st := a.LeaseStats(); st.Expired == 0 {
					t.Fatalf("after a short outage a holds %v, held %v (%+v)", got, before, st)
				}
				t.Logf("a lost its shards in a short outage on a loaded machine")
				waitFor(t, 20*time.Second, "4 shards each again", func() bool { return slices.Equal(heldCounts(a, b), []int{4, 4}) })
				before = a.Held()
			}

			// A real outage. The deadline is read once the cut is made:
			// no renewal can succeed after it.
			expired := a.LeaseStats().Expired
			drain(a.Changes())
			cut := time.Now()
			proxy.set(mode)
			time.Sleep(50 * time.Millisecond)
			var deadline time.Time
			keys := map[int]string{}
			for _, sh := range before {
				keys[sh] = keyInShard(a.Store, sh)
				if dl, ok := a.Owned(keys[sh]); ok && dl.After(deadline) {
					deadline = dl
				}
			}
			time.Sleep(time.Until(deadline))
			for sh, key := range keys {
				if _, ok := a.Owned(key); ok {
					t.Errorf("a owns shard %d after its deadline", sh)
				}
			}
			if held := a.Held(); len(held) != 0 {
				t.Errorf("a holds %v after its deadline", held)
			}
			select {
			case <-a.Changes():
			case <-time.After(time.Second):
				t.Error("a did not signal that it lost its shards")
			}
			waitFor(t, time.Second, "a counts its shards expired", func() bool {
				return a.LeaseStats().Expired-expired == int64(len(before))
			})
			waitFor(t, cfg.Lease+5*time.Second, "b takes every shard", func() bool { return len(b.Held()) == 8 })
			t.Logf("cut off (%s): a's deadline %s after the cut, b owned all after %s", mode, deadline.Sub(cut), time.Since(cut))
			for sh, key := range keys {
				if _, ok := a.Owned(key); ok {
					t.Fatalf("a owns shard %d while cut off", sh)
				}
			}

			// Healed: a learns what happened and gets a fair share back
			// through clean handovers.
			proxy.set("pass")
			waitFor(t, 20*time.Second, "4 shards each again", func() bool { return slices.Equal(heldCounts(a, b), []int{4, 4}) })
			ctx := context.Background()
			if _, err := b.Record(ctx, opsPerShard(b.Store, 1, "v-after")); err != nil {
				t.Fatal(err)
			}
			handed, _, err := a.Pending(ctx, engine.OriginEvent, 0, 100)
			if err != nil || len(handed) != 4 {
				t.Fatalf("a was handed %d, %v", len(handed), err)
			}
			for _, op := range handed {
				if !op.WriteStarted.IsZero() {
					t.Errorf("%s: a's shards came back by clean handover, yet marked as possibly written", op)
				}
			}
		})
	}
}

func keyInShard(s *dynamostate.Store, shard int) string {
	for i := 0; ; i++ {
		op := opFor(fmt.Sprintf("probe-%d", i), "v")
		if s.Shard(op.DestKeyID()) == shard {
			return op.DestKeyID()
		}
	}
}

func drain(ch <-chan struct{}) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

// An engine that never answers the handoff does not keep a wanted shard
// for ever: it goes a lease after the deadline, as a crash would.
func TestHandoverWhenTheEngineNeverAnswers(t *testing.T) {
	t.Parallel()
	cfg := newTable(t, 4)
	a := startNode(t, cfg, "a")
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	asked := make(chan struct{}, 10)
	a.SetHandoff(func(context.Context, func(string) bool) error { asked <- struct{}{}; <-block; return nil })
	waitFor(t, 5*time.Second, "a holds every shard", func() bool { return len(a.Held()) == 4 })
	ctx := context.Background()
	if _, err := a.Record(ctx, opsPerShard(a.Store, 1, "v1")); err != nil {
		t.Fatal(err)
	}
	b := startNode(t, cfg, "b")
	exclusive(t, a, b)
	took := waitFor(t, 3*cfg.Lease+5*time.Second, "2 shards each", func() bool { return slices.Equal(heldCounts(a, b), []int{2, 2}) })
	t.Logf("handed over after %s without the engine's answer", took)
	select {
	case <-asked:
	default:
		t.Fatal("the engine was never asked to let go")
	}
	handed, _, err := b.Pending(ctx, engine.OriginEvent, 0, 100)
	if err != nil || len(handed) != 2 {
		t.Fatalf("b was handed %d, %v", len(handed), err)
	}
	for _, op := range handed {
		if op.WriteStarted.IsZero() {
			t.Errorf("%s handed over without the engine's word, yet not marked as possibly written", op)
		}
	}
}
