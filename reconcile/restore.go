package reconcile

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/engine/event"
)

// Restore reasons for writing nothing for a key.
const (
	SkipDeleted  = "deleted at that time (a delete marker the replica recorded)"
	SkipNotYet   = "no version at or before that time"
	SkipUnknown  = "the replica has no version of it"
	restoreSlack = 5 * time.Minute // for the destination's clock being behind the source's
)

// Choice is what a restore does for one key: write Version (a replica
// version) as Key into the target, or nothing, for Skip's reason.
type Choice struct {
	Key        string         // the key written: the source's key
	ReplicaKey string         // the key in the replica bucket
	Version    engine.Version // the replica version written
	SourceTime time.Time      // when the source wrote what it holds
	Skip       string
}

// Choose picks, among a key's replica versions (as listed, newest first),
// the one that held the source's current version at asOf: the one whose
// source version was written last at or before asOf, by the
// s3replicad-source-last-modified time each replica carries (a HEAD each;
// the destination's own time for replicas written before it was kept, and
// for delete markers, which carry no metadata), ties broken by the
// source's sequencer. A replica is written after its source version, so a
// version the destination dates earlier than the best found (less a slack
// for clocks) cannot be a better one and is not read. With latest, the
// current version is the answer: the replica's current version holds the
// source's current one (guarantee 4).
func Choose(ctx context.Context, h Header, bucket, key string, vs []engine.Version, asOf time.Time, latest bool) (Choice, int, error) {
	c := Choice{ReplicaKey: key}
	if latest {
		for _, v := range vs {
			if v.IsLatest {
				c.Version, c.SourceTime = v, v.LastModified
				if v.DeleteMarker {
					c.Skip = SkipDeleted
				}
				return c, 0, nil
			}
		}
		c.Skip = SkipUnknown
		return c, 0, nil
	}
	var (
		best     *engine.Version
		bestTime time.Time
		bestSeq  string
		heads    int
	)
	for i := range vs {
		v := &vs[i]
		if best != nil && v.LastModified.Add(restoreSlack).Before(bestTime) {
			continue
		}
		t, seq := v.LastModified, ""
		if !v.DeleteMarker {
			_, _, meta, err := headWithRetry(ctx, h, bucket, key, v.VersionID)
			if err != nil {
				if class, _ := engine.Classify(err); class == engine.Gone {
					continue // deleted from the replica meanwhile
				}
				return c, heads, fmt.Errorf("head replica %s@%s: %w", key, v.VersionID, err)
			}
			heads++
			if st, ok := SourceTime(meta); ok {
				t = st
			}
			seq = meta[engine.MetaSourceSequencer]
		}
		if t.After(asOf) {
			continue
		}
		if best == nil || t.After(bestTime) || t.Equal(bestTime) && seq != "" && bestSeq != "" && event.CompareSequencer(seq, bestSeq) > 0 {
			best, bestTime, bestSeq = v, t, seq
		}
	}
	switch {
	case best == nil:
		c.Skip = SkipNotYet
	case best.DeleteMarker:
		c.Version, c.SourceTime, c.Skip = *best, bestTime, SkipDeleted
	default:
		c.Version, c.SourceTime = *best, bestTime
	}
	return c, heads, nil
}

// SourceTime reads the source's write time a replica carries.
func SourceTime(meta map[string]string) (time.Time, bool) {
	v := meta[engine.MetaSourceLastModified]
	if v == "" {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	return t, err == nil
}

// CursorState keeps a restore's listing position.
type CursorState interface {
	LoadCursor(id string) (engine.Cursor, error)
	SaveCursor(id string, c engine.Cursor) error
}

// Restore writes, for every key of a rule (under Prefix), the replica
// version that held the source's current version at AsOf into a target
// bucket, through an engine whose rule reads the replica bucket
// (RestoreRule). Its listing position is checkpointed after each batch
// submitted, so that an interrupted restore resumes where it stopped; the
// engine's state makes every key's copy happen once.
type Restore struct {
	Replica Destination // the replica bucket's store
	Rule    engine.Rule // the replication rule restored from
	Prefix  string      // of the source keys restored
	AsOf    time.Time
	Latest  bool // no -as-of: each key's current version
	// Target is the restore's engine rule (RestoreRule).
	Target engine.Rule
	State  CursorState
	Queue  Submitter // nil: a dry run
	// Each is told of every key's choice (the dry run prints them) and of
	// the HEAD requests it took.
	Each func(c Choice, heads int)
}

// RestoreRule is the engine rule of a restore of r into bucket: it reads
// r's replica bucket and writes to destination "target".
func RestoreRule(r engine.Rule, bucket, storageClass string) engine.Rule {
	return engine.Rule{ID: "restore", Enabled: true, SourceBucket: r.DestinationBucket, Destination: "target",
		DestinationBucket: bucket, StorageClass: storageClass, Restore: true}
}

// cursorID is the restore's cursor name in its state.
const cursorID = "restore"

// Run walks the replica from the checkpointed cursor and submits a copy
// per key restored. It returns the cursor (done when the walk ended).
func (r *Restore) Run(ctx context.Context) (engine.Cursor, error) {
	var cur engine.Cursor
	var err error
	if r.State != nil {
		if cur, err = r.State.LoadCursor(cursorID); err != nil {
			return cur, err
		}
		if cur.Done {
			return cur, nil // finished before: nothing to write
		}
	}
	var batch []*engine.Op
	flush := func(lastKey string) error {
		if r.Queue != nil && len(batch) > 0 {
			if _, err := r.Queue.Submit(ctx, batch); err != nil {
				return err
			}
		}
		batch = batch[:0]
		cur.KeyMarker, cur.Updated = lastKey, time.Now().UTC()
		if r.State == nil {
			return nil
		}
		return r.State.SaveCursor(cursorID, cur)
	}
	prefix := r.Rule.DestinationPrefix + r.Rule.Prefix + r.Prefix
	after := ""
	if cur.KeyMarker != "" {
		after = r.Rule.DestinationPrefix + cur.KeyMarker
	}
	keys := newKeyStream(ctx, r.Replica, r.Rule.DestinationBucket, prefix, after)
	n := 0
	for {
		kv, err := keys.next()
		if err != nil {
			return cur, err
		}
		if kv == nil {
			break
		}
		key, ok := strings.CutPrefix(kv.key, r.Rule.DestinationPrefix)
		if !ok {
			continue
		}
		c, heads, err := Choose(ctx, r.Replica, r.Rule.DestinationBucket, kv.key, kv.versions, r.AsOf, r.Latest)
		if err != nil {
			return cur, fmt.Errorf("restore %s: %w", key, err)
		}
		c.Key = key
		cur.Listed += int64(len(kv.versions))
		if r.Each != nil {
			r.Each(c, heads)
		}
		if c.Skip == "" {
			batch = append(batch, &engine.Op{
				Rule: r.Target.ID, Bucket: r.Target.SourceBucket, Key: kv.key, VersionID: c.Version.VersionID,
				ETag: c.Version.ETag, Size: c.Version.Size, Action: engine.ActionCopy, Origin: engine.OriginBackfill,
				Dest: r.Target.Destination, DestBucket: r.Target.DestinationBucket, DestKey: key,
				Recorded: time.Now(), State: engine.Pending,
			})
			cur.Submitted++
		}
		n++
		if len(batch) >= batchOps || n%batchKeys == 0 {
			if err := flush(key); err != nil {
				return cur, err
			}
			continue
		}
		cur.KeyMarker = key
	}
	cur.Done = true
	return cur, flush(cur.KeyMarker)
}

// RestoreEngine is the engine a restore copies with.
type RestoreEngine interface {
	Submitter
	Run(ctx context.Context) error
}

// RestoreCounts reads the restore's state: its ops by state.
type RestoreCounts func(ctx context.Context) (map[engine.State]int64, error)

// RunRestore runs the engine, walks the replica (r, with r.Queue the
// engine), then waits until every copy queued is finished, reporting the
// counts every half second. It returns the last counts.
func RunRestore(ctx context.Context, e RestoreEngine, r *Restore, counts RestoreCounts, progress func(listing bool, c map[engine.State]int64)) (map[engine.State]int64, error) {
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	engineDone := make(chan error, 1)
	go func() { engineDone <- e.Run(runCtx) }()
	stop := func(err error) (map[engine.State]int64, error) {
		cancel()
		if eerr := <-engineDone; err == nil {
			err = eerr
		}
		c, cerr := counts(context.WithoutCancel(ctx))
		if err == nil {
			err = cerr
		}
		return c, err
	}
	walked := make(chan error, 1)
	go func() {
		_, err := r.Run(runCtx)
		walked <- err
	}()
	listing := true
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-walked:
			if err != nil {
				return stop(err)
			}
			listing, walked = false, nil
		case err := <-engineDone:
			engineDone <- err
			return stop(fmt.Errorf("the copier stopped: %w", err))
		case <-ctx.Done():
			return stop(ctx.Err())
		case <-tick.C:
		}
		c, err := counts(ctx)
		if err != nil {
			return stop(err)
		}
		if progress != nil {
			progress(listing, c)
		}
		if !listing && c[engine.Pending]+c[engine.InFlight] == 0 {
			return stop(nil)
		}
	}
}

// VerifyRestore compares a restored bucket with what a restore of the rule
// as of AsOf writes (verify -restore): it walks the replica and the
// restored bucket side by side, one page of each in memory, and reports
// each key restored from another replica version than Choose picks, with
// other content, missing, or there although nothing was to be restored.
type VerifyRestore struct {
	Replica Destination
	Target  Destination // the restored bucket's store
	Rule    engine.Rule
	Prefix  string
	Bucket  string // the restored bucket
	AsOf    time.Time
	Latest  bool
	// Heads counts the HEAD requests made.
	Heads int
}

// Run calls fn with every difference, in key order, and returns how many
// keys it checked.
func (v *VerifyRestore) Run(ctx context.Context, fn func(Finding)) (int, error) {
	prefix := v.Rule.Prefix + v.Prefix
	reps := newKeyStream(ctx, v.Replica, v.Rule.DestinationBucket, v.Rule.DestinationPrefix+prefix, "")
	tgts := newKeyStream(ctx, v.Target, v.Bucket, prefix, "")
	r, err := reps.next()
	if err != nil {
		return 0, err
	}
	t, err := tgts.next()
	if err != nil {
		return 0, err
	}
	checked := 0
	for r != nil || t != nil {
		var rk string
		if r != nil {
			rk = strings.TrimPrefix(r.key, v.Rule.DestinationPrefix)
		}
		var rv, tv []engine.Version
		key := rk
		switch {
		case t == nil || r != nil && rk < t.key:
			rv = r.versions
		case r == nil || t.key < rk:
			key, tv = t.key, t.versions
		default:
			rv, tv = r.versions, t.versions
		}
		checked++
		if err := v.check(ctx, key, rv, tv, fn); err != nil {
			return checked, err
		}
		if rv != nil {
			if r, err = reps.next(); err != nil {
				return checked, err
			}
		}
		if tv != nil {
			if t, err = tgts.next(); err != nil {
				return checked, err
			}
		}
	}
	return checked, nil
}

func (v *VerifyRestore) check(ctx context.Context, key string, rv, tv []engine.Version, fn func(Finding)) error {
	var cur *engine.Version
	for i := range tv {
		if tv[i].IsLatest {
			cur = &tv[i]
		}
	}
	if cur != nil && cur.DeleteMarker {
		cur = nil
	}
	want := Choice{Skip: SkipUnknown}
	if len(rv) > 0 {
		c, heads, err := Choose(ctx, v.Replica, v.Rule.DestinationBucket, v.Rule.DestinationPrefix+key, rv, v.AsOf, v.Latest)
		v.Heads += heads
		if err != nil {
			return fmt.Errorf("verify restore of %s: %w", key, err)
		}
		want = c
	}
	switch {
	case want.Skip != "" && cur == nil:
		return nil
	case want.Skip != "":
		fn(Finding{Kind: "extra", Key: key, Detail: "restored, but nothing was to be: " + want.Skip})
		return nil
	case cur == nil:
		fn(Finding{Kind: "missing", Key: key, Version: want.Version.VersionID, Detail: "not restored"})
		return nil
	}
	_, _, meta, err := headWithRetry(ctx, v.Target, v.Bucket, key, cur.VersionID)
	if err != nil {
		return fmt.Errorf("head restored %s: %w", key, err)
	}
	v.Heads++
	if from := meta[engine.MetaRestoredFrom]; from != want.Version.VersionID {
		fn(Finding{Kind: "different", Key: key, Version: want.Version.VersionID,
			Detail: fmt.Sprintf("restored from replica version %q, the one current on the source at that time is %s", from, want.Version.VersionID)})
		return nil
	}
	if same, why := SameContent(want.Version, Replica{Version: *cur}); !same {
		fn(Finding{Kind: "different", Key: key, Version: want.Version.VersionID, Detail: why})
	}
	return nil
}

// RestoreEstimate is what a restore would write, for a dry run.
type RestoreEstimate struct {
	Keys, Bytes     int64
	Requests, Heads int
	Listed          int64
	Skipped         map[string]int
}

// EstimateRestore walks what r would restore, submitting nothing, and
// counts the keys, bytes and requests (a GET and a PUT per object, one
// CopyObject when inStore, more for objects copied in parts); each hears
// every key restored.
func EstimateRestore(ctx context.Context, r *Restore, partSize, threshold int64, inStore bool, each func(Choice)) (RestoreEstimate, error) {
	est := RestoreEstimate{Skipped: map[string]int{}}
	walk := *r
	walk.Queue, walk.State = nil, nil
	walk.Each = func(c Choice, heads int) {
		est.Heads += heads
		if c.Skip != "" {
			est.Skipped[c.Skip]++
			return
		}
		est.Keys++
		est.Bytes += c.Version.Size
		n := Requests(&engine.Op{Size: c.Version.Size, Action: engine.ActionCopy}, partSize, threshold)
		if inStore && n == 2 {
			n = 1
		}
		est.Requests += n
		each(c)
	}
	cur, err := walk.Run(ctx)
	est.Listed = cur.Listed
	return est, err
}
