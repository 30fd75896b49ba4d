package checkpoint

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/s3replicad/s3replicad/engine"
)

func init() { onDecode = func() { decoded.Add(1) } }

var decoded atomic.Int64

// reads counts the op records fn decodes.
func reads(t *testing.T, fn func() error) int64 {
	t.Helper()
	before := decoded.Load()
	if err := fn(); err != nil {
		t.Fatal(err)
	}
	return decoded.Load() - before
}

func testOp(i int, state engine.State) *engine.Op {
	key := fmt.Sprintf("obj/%06d", i)
	return &engine.Op{Rule: "r", Bucket: "src", Key: key, VersionID: fmt.Sprintf("v%d", i), Sequencer: fmt.Sprintf("%016X", i),
		ETag: "0123456789abcdef0123456789abcdef", Size: 1024, Action: engine.ActionCopy, Origin: engine.OriginEvent,
		Dest: "d", DestBucket: "dst", DestKey: key, Recorded: time.Now(), State: state}
}

// fill records finished ops, then a few failed and pending ones.
func fillStore(t *testing.T, finished int) *Store {
	t.Helper()
	st, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	old := time.Now().Add(-48 * time.Hour)
	for i := 0; i < finished; i += 1000 {
		var ops []*engine.Op
		for j := i; j < min(i+1000, finished); j++ {
			ops = append(ops, testOp(j, engine.Pending))
		}
		if _, err := st.Record(ctx, ops); err != nil {
			t.Fatal(err)
		}
		for _, op := range ops {
			op.State, op.Finished, op.Replica = engine.Completed, old, "r1"
		}
		if err := st.SaveAll(ctx, ops); err != nil {
			t.Fatal(err)
		}
	}
	var tail []*engine.Op
	for j := 0; j < 8; j++ {
		tail = append(tail, testOp(finished+j, engine.Pending))
	}
	if _, err := st.Record(ctx, tail); err != nil {
		t.Fatal(err)
	}
	for _, op := range tail[:3] {
		op.State, op.Reason, op.LastError, op.Finished = engine.Failed, engine.ReasonAccessDenied, "AccessDenied", time.Now()
		if err := st.Save(ctx, op); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// What status, a refill of the window, retry and a prune step read does
// not grow with the finished operations the file holds: counted in
// records decoded, the same for 1,000 and 30,000 finished ops.
func TestWorkDoesNotGrowWithFinishedOps(t *testing.T) {
	type cost struct{ status, pending, retry, prune int64 }
	measure := func(finished int) cost {
		st := fillStore(t, finished)
		var c cost
		c.status = reads(t, func() error {
			s, err := st.Status(time.Now())
			if err == nil && (s.Counts[engine.Completed] != int64(finished) || s.Counts[engine.Failed] != 3 || s.Counts[engine.Pending] != 5) {
				err = fmt.Errorf("counts %v", s.Counts)
			}
			return err
		})
		c.pending = reads(t, func() error {
			ops, more, err := st.Pending(context.Background(), engine.OriginEvent, 0, 4)
			if err == nil && (len(ops) != 4 || !more) {
				err = fmt.Errorf("pending: %d ops, more %v", len(ops), more)
			}
			return err
		})
		c.retry = reads(t, func() error {
			ops, err := st.Retry(context.Background(), []string{fmt.Sprintf("obj/%06d", finished)})
			if err == nil && len(ops) != 1 {
				err = fmt.Errorf("retried %d", len(ops))
			}
			return err
		})
		c.prune = reads(t, func() error {
			n, err := st.PruneStep(time.Now().Add(-time.Hour), 10)
			if err == nil && n != 10 {
				err = fmt.Errorf("pruned %d", n)
			}
			return err
		})
		return c
	}
	small, large := measure(1000), measure(30000)
	t.Logf("records read with 1,000 / 30,000 finished ops: status %d/%d, window refill %d/%d, retry %d/%d, prune step %d/%d",
		small.status, large.status, small.pending, large.pending, small.retry, large.retry, small.prune, large.prune)
	if small != large {
		t.Fatalf("work grows with finished ops: %+v with 1,000, %+v with 30,000", small, large)
	}
}

// Pruning removes a finished op with everything that belongs to it: its
// identity (a redelivery would then be recorded again, which is why
// retention outlasts the queue's), and the last-written record of its
// destination key when it was the last write there.
func TestPruneTakesPerKeyDataWithIt(t *testing.T) {
	st := fillStore(t, 100)
	op := testOp(7, engine.Pending)
	if _, ok, _ := st.LastWritten(context.Background(), op.DestKeyID()); !ok {
		t.Fatal("a completed op left no last-written record")
	}
	if n, err := st.Prune(time.Now().Add(-time.Hour)); err != nil || n != 100 {
		t.Fatalf("pruned %d, %v", n, err)
	}
	if _, ok, _ := st.LastWritten(context.Background(), op.DestKeyID()); ok {
		t.Fatal("the last-written record outlived the op that wrote it")
	}
	if found, _ := st.Find(op); found != nil {
		t.Fatal("a pruned op is still found")
	}
	err := st.db.View(func(t *bolt.Tx) error {
		for _, b := range [][]byte{bucketOps, bucketDone, bucketIDs, bucketFinished, bucketKeys} {
			if n := t.Bucket(b).Stats().KeyN; n > 8 {
				return fmt.Errorf("bucket %s holds %d entries after pruning", b, n)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := st.Status(time.Now()); s.Counts[engine.Completed] != 0 || s.Counts[engine.Failed] != 3 {
		t.Fatalf("counts after pruning %v", s.Counts)
	}
}

// A state file written by schema 1 (JSON records by op ID) is migrated
// when opened: counts, arrival order, last-written records, passes,
// uploads and cursors all carry over.
func TestMigrationFromSchema1(t *testing.T) {
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	v1 := []*engine.Op{
		{Rule: "r", Bucket: "b", Key: "done", VersionID: "v1", Sequencer: "0A", Size: 10, State: engine.Completed, Finished: now, Replica: "x", Seq: 1},
		{Rule: "r", Bucket: "b", Key: "later", VersionID: "v3", Size: 30, State: engine.Pending, Seq: 5, Recorded: now},
		{Rule: "r", Bucket: "b", Key: "first", VersionID: "v2", Size: 20, State: engine.Pending, Seq: 2, Recorded: now},
		{Rule: "r", Bucket: "b", Key: "first", VersionID: "v2", Pass: "backfill-7", Origin: engine.OriginBackfill, Size: 20, State: engine.Pending, Seq: 6, Recorded: now},
		{Rule: "r", Bucket: "b", Key: "bad", VersionID: "v4", State: engine.Failed, Reason: engine.ReasonAccessDenied, LastError: "AccessDenied", Seq: 3},
	}
	for _, op := range v1 {
		if op.Origin == "" {
			op.Origin = engine.OriginEvent
		}
		op.Action, op.Dest, op.DestBucket, op.DestKey = engine.ActionCopy, "d", "dst", op.Key
	}
	err = db.Update(func(t *bolt.Tx) error {
		meta, _ := t.CreateBucket([]byte("meta"))
		meta.Put([]byte("schema"), []byte("1"))
		ops, _ := t.CreateBucket([]byte("ops"))
		ops.SetSequence(6)
		for _, op := range v1 {
			raw, _ := json.Marshal(op)
			ops.Put([]byte(op.ID()), raw)
		}
		keys, _ := t.CreateBucket([]byte("keys"))
		ks, _ := json.Marshal(map[string]string{"sequencer": "0A", "version_id": "v1"})
		keys.Put([]byte(v1[0].DestKeyID()), ks)
		up, _ := t.CreateBucket([]byte("uploads"))
		u, _ := json.Marshal(engine.Upload{UploadID: "u1", PartSize: 5 << 20, Size: 20})
		up.Put([]byte(v1[2].ID()), u)
		cur, _ := t.CreateBucket([]byte("cursors"))
		c, _ := json.Marshal(Cursor{KeyMarker: "m", Listed: 9})
		return cur.Put([]byte("r"), c)
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()

	var said []string
	st, err := Open(dir, Options{Progress: func(f string, a ...any) { said = append(said, fmt.Sprintf(f, a...)) }})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if len(said) == 0 {
		t.Error("the migration said nothing")
	}
	s, err := st.Status(now)
	if err != nil {
		t.Fatal(err)
	}
	if s.Counts[engine.Completed] != 1 || s.Counts[engine.Pending] != 3 || s.Counts[engine.Failed] != 1 || s.BytesPending != 70 || s.BackfillPending != 1 {
		t.Fatalf("after migration: counts %v, bytes pending %d, backfill pending %d", s.Counts, s.BytesPending, s.BackfillPending)
	}
	if len(s.Failed) != 1 || s.Failed[0].Error != "AccessDenied" || s.Backfill["r"].Listed != 9 || s.Uploads != 1 {
		t.Fatalf("after migration: failed %v, cursors %v, uploads %d", s.Failed, s.Backfill, s.Uploads)
	}
	live, _, err := st.Pending(context.Background(), engine.OriginEvent, 0, 10)
	if err != nil || len(live) != 2 || live[0].Key != "first" || live[1].Key != "later" {
		t.Fatalf("live backlog after migration: %v %v, want first then later", live, err)
	}
	if ks, ok, _ := st.LastWritten(context.Background(), v1[0].DestKeyID()); !ok || ks.Version != engine.VersionDigest("v1") || ks.Sequencer != "0A" {
		t.Fatalf("last written after migration: %v %v", ks, ok)
	}
	if ops, _ := st.OpsOf("r", "b", "first", "v2"); len(ops) != 2 || ops[1].Pass != "backfill-7" {
		t.Fatalf("passes of a version after migration: %v", ops)
	}
	if up, _ := st.LoadUpload(context.Background(), v1[2].ID()); up == nil || up.UploadID != "u1" {
		t.Fatalf("upload after migration: %v", up)
	}
	// Recording goes on after the migrated numbers.
	added, err := st.Record(context.Background(), []*engine.Op{testOp(1, engine.Pending)})
	if err != nil || len(added) != 1 || added[0].Seq <= 6 {
		t.Fatalf("recorded after migration: %v %v", added, err)
	}
	// And a duplicate of a migrated op is still a duplicate.
	if added, _ := st.Record(context.Background(), []*engine.Op{{Rule: "r", Bucket: "b", Key: "done", VersionID: "v1"}}); len(added) != 0 {
		t.Fatal("a redelivery of a migrated op was recorded again")
	}
}

// decodeCounted reads, of both record formats, what indexes and counters
// depend on exactly as decodeOp does, and copies no other string.
func TestDecodeCountedKeepsWhatIsCounted(t *testing.T) {
	done := testOp(1, engine.Completed)
	done.Origin, done.Size, done.Finished, done.Replica = engine.OriginBackfill, 4096, time.Unix(1700000000, 5e6), "r1"
	pending := testOp(2, engine.InFlight)
	pending.Action, pending.Pass, pending.LastError, pending.OnTop = engine.ActionDeleteMarker, "backfill-1", "slow down", "v0"
	for _, op := range []*engine.Op{done, pending} {
		full, err := decodeOp(7, encodeOp(op))
		if err != nil {
			t.Fatal(err)
		}
		counted, err := decodeCounted(7, encodeOp(op))
		if err != nil {
			t.Fatal(err)
		}
		if counted.State != full.State || counted.Action != full.Action || counted.Origin != full.Origin || counted.Rule != full.Rule ||
			counted.Size != full.Size || !counted.Finished.Equal(full.Finished) || counted.Seq != 7 || full.Rule != op.Rule {
			t.Errorf("%s: counted %+v, full %+v", op.State, counted, full)
		}
		if counted.Key != "" || counted.DestKey != "" || counted.Replica != "" || counted.Pass != "" {
			t.Errorf("%s: decodeCounted copied strings it does not need: %+v", op.State, counted)
		}
	}
}
