// Package checkpoint keeps the replicator's durable state in a bbolt file:
// every recorded operation, indexes over them (unfinished in arrival order,
// failed, finished by time, by identity), the last version written to each
// destination key, counters kept as operations change, multipart uploads
// in progress and backfill cursors.
//
// Every question the daemon and the commands ask is answered from an index
// or a counter: how long a status, a refill of the in-memory window, a
// retry or a prune step takes does not grow with the number of finished
// operations.
package checkpoint

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/s3replicad/s3replicad/engine"
)

// FileName is the state file's name inside state_dir.
const FileName = "state.db"

// SchemaVersion is bumped when the layout changes; Open migrates files of
// earlier versions and refuses later ones.
const SchemaVersion = 2

var (
	bucketMeta     = []byte("meta")
	bucketOps      = []byte("op")       // seq -> unfinished or failed op
	bucketDone     = []byte("done")     // seq -> finished op (compact)
	bucketIDs      = []byte("id")       // idKey -> seq
	bucketPending  = []byte("pending")  // origin byte + seq -> (unfinished ops)
	bucketFailed   = []byte("failed")   // seq ->
	bucketFinished = []byte("finished") // finish time + seq -> (completed, skipped, superseded)
	bucketKeys     = []byte("key")      // hash of destination key -> keyState
	bucketStats    = []byte("stat")     // counters
	bucketUploads  = []byte("uploads")  // op ID -> Upload (JSON)
	bucketCursors  = []byte("cursors")  // rule -> Cursor (JSON)
	allBuckets     = [][]byte{bucketMeta, bucketOps, bucketDone, bucketIDs, bucketPending, bucketFailed, bucketFinished, bucketKeys, bucketStats, bucketUploads, bucketCursors}

	keySchema  = []byte("schema")
	keyRunning = []byte("running") // set while a process runs the engine
	// keySuspect is the highest op seq recorded when a crash was found:
	// unfinished ops up to it may have been written without their write
	// mark being saved.
	keySuspect = []byte("suspect")

	errWrongSchema = errors.New("state file schema")
)

// ErrLocked means another process (normally the running daemon) holds the
// state file.
var ErrLocked = errors.New("state file is in use by another process")

// Store is the bbolt-backed engine.StateStore.
type Store struct {
	db     *bolt.DB
	openTx uint64 // the last committed transaction's number at Open
}

var _ engine.StateStore = (*Store)(nil)

// Options for Open.
type Options struct {
	ReadOnly bool
	// Timeout is how long to wait for the file lock.
	Timeout time.Duration
	// Progress, when set, hears how a migration of an older file goes.
	Progress func(format string, args ...any)
}

// Open opens (creating when needed) the state file in dir. A file or
// directory that exists but cannot be opened is an error naming it, never
// taken for an empty state.
func Open(dir string, o Options) (*Store, error) {
	path := filepath.Join(dir, FileName)
	if !o.ReadOnly {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create state_dir %s: %w", dir, err)
		}
	}
	if _, err := os.Stat(path); err != nil {
		if o.ReadOnly || !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("open state file %s: %w", path, err)
		}
	}
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Second
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: o.Timeout, ReadOnly: o.ReadOnly})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("%s: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("open state file %s: %w", path, err)
	}
	// Completions and intake records share commits (each is two
	// fdatasyncs and about 17 pages, whatever it holds): gathered for up
	// to 10 ms, a busy daemon commits about 10 objects at once, where 2 ms
	// made it 4 (make bench: 0.09 commits and 2.5 pages per object, from
	// 0.25 and 4.3). The engine's workers do not wait for these commits;
	// only the next version of the same key does.
	db.MaxBatchDelay = 10 * time.Millisecond
	s := &Store{db: db}
	if o.ReadOnly {
		err = db.View(func(tx *bolt.Tx) error { return checkSchema(tx) })
	} else {
		err = s.prepare(o.Progress)
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open state file %s: %w", path, err)
	}
	s.openTx = s.commits()
	return s, nil
}

// prepare creates the buckets of a new file and migrates an old one.
func (s *Store) prepare(progress func(string, ...any)) error {
	var version int
	err := s.db.View(func(tx *bolt.Tx) error {
		if meta := tx.Bucket(bucketMeta); meta != nil {
			version, _ = strconv.Atoi(string(meta.Get(keySchema)))
		}
		return nil
	})
	if err != nil {
		return err
	}
	switch {
	case version == 1:
		if err := migrateV1(s.db, progress); err != nil {
			return fmt.Errorf("migrate from schema 1: %w", err)
		}
	case version > SchemaVersion:
		return fmt.Errorf("%w version %d, this build reads %d: use a newer s3replicad", errWrongSchema, version, SchemaVersion)
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if meta.Get(keySchema) == nil {
			return meta.Put(keySchema, []byte(strconv.Itoa(SchemaVersion)))
		}
		return checkSchema(tx)
	})
}

func checkSchema(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return fmt.Errorf("%w: not an s3replicad state file", errWrongSchema)
	}
	v, _ := strconv.Atoi(string(meta.Get(keySchema)))
	if v != SchemaVersion {
		return fmt.Errorf("%w version %d, this build reads %d (open it once for writing to migrate it)", errWrongSchema, v, SchemaVersion)
	}
	return nil
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// Path is the state file's path.
func (s *Store) Path() string { return s.db.Path() }

// tx gives the buckets of a write transaction, the append-mostly ones
// packed tight: their keys grow with every write.
type tx struct {
	*bolt.Tx
	ops, done, ids, pending, failed, finished, keys *bolt.Bucket
	stats                                           deltas
}

func wrap(t *bolt.Tx) *tx {
	x := &tx{Tx: t, ops: t.Bucket(bucketOps), done: t.Bucket(bucketDone), ids: t.Bucket(bucketIDs), pending: t.Bucket(bucketPending),
		failed: t.Bucket(bucketFailed), finished: t.Bucket(bucketFinished), keys: t.Bucket(bucketKeys), stats: deltas{}}
	if t.Writable() {
		x.ops.FillPercent, x.pending.FillPercent, x.finished.FillPercent, x.done.FillPercent = 0.9, 0.9, 0.9, 0.95
	}
	return x
}

func (x *tx) commitStats() error { return x.stats.apply(x.Bucket(bucketStats)) }

func unfinished(s engine.State) bool { return s == engine.Pending || s == engine.InFlight }

func finishedOK(s engine.State) bool {
	return s == engine.Completed || s == engine.Skipped || s == engine.Superseded
}

// Record implements engine.StateStore: the batch in one transaction,
// which other callers' records and saves may share.
func (s *Store) Record(ctx context.Context, ops []*engine.Op) ([]*engine.Op, error) {
	var added []*engine.Op
	err := s.db.Batch(func(t *bolt.Tx) error {
		added = added[:0]
		x := wrap(t)
		seen := map[string]bool{}
		for _, op := range ops {
			id := idKey(op)
			if seen[string(id)] || x.ids.Get(id) != nil {
				continue
			}
			seen[string(id)] = true
			seq, err := x.ops.NextSequence()
			if err != nil {
				return err
			}
			op.Seq = seq
			if err := x.insert(op, id); err != nil {
				return err
			}
			added = append(added, op)
		}
		return x.commitStats()
	})
	if err != nil {
		for _, op := range added {
			op.Seq = 0
		}
		return nil, fmt.Errorf("record %d operations: %w", len(ops), err)
	}
	return added, nil
}

func (x *tx) insert(op *engine.Op, id []byte) error {
	if err := x.put(op, encodeOp(op)); err != nil {
		return err
	}
	if err := x.ids.Put(id, idValue(op.Seq)); err != nil {
		return err
	}
	if err := x.index(nil, op); err != nil {
		return err
	}
	x.stats.count(op, 1)
	return nil
}

// index moves an op between the state indexes as it goes from old (nil
// when new) to op.
func (x *tx) index(old, op *engine.Op) error {
	seq := op.Seq
	if old != nil && unfinished(old.State) && !(unfinished(op.State) && old.Origin == op.Origin) {
		if err := x.pending.Delete(pendingKey(old, seq)); err != nil {
			return err
		}
	}
	if unfinished(op.State) && (old == nil || !unfinished(old.State) || old.Origin != op.Origin) {
		if err := x.pending.Put(pendingKey(op, seq), nil); err != nil {
			return err
		}
	}
	if old != nil && old.State == engine.Failed && op.State != engine.Failed {
		if err := x.failed.Delete(seqKey(seq)); err != nil {
			return err
		}
	}
	if op.State == engine.Failed && (old == nil || old.State != engine.Failed) {
		if err := x.failed.Put(seqKey(seq), nil); err != nil {
			return err
		}
	}
	if old != nil && finishedOK(old.State) && !(finishedOK(op.State) && old.Finished.Equal(op.Finished)) {
		if err := x.finished.Delete(finishedKey(old.Finished, seq)); err != nil {
			return err
		}
	}
	if finishedOK(op.State) && (old == nil || !finishedOK(old.State) || !old.Finished.Equal(op.Finished)) {
		if err := x.finished.Put(finishedKey(op.Finished, seq), nil); err != nil {
			return err
		}
	}
	return nil
}

// Save implements engine.StateStore. When the op completed, the
// destination key's last written version moves forward in the same
// transaction.
func (s *Store) Save(ctx context.Context, op *engine.Op) error {
	rec := encodeOp(op)
	err := s.db.Batch(func(t *bolt.Tx) error {
		x := wrap(t)
		if err := x.save(op, rec); err != nil {
			return err
		}
		return x.commitStats()
	})
	if err != nil {
		return fmt.Errorf("save %s: %w", op, err)
	}
	return nil
}

// SaveAll implements engine.StateStore: one transaction for all.
func (s *Store) SaveAll(ctx context.Context, ops []*engine.Op) error {
	err := s.db.Update(func(t *bolt.Tx) error {
		x := wrap(t)
		for _, op := range ops {
			if err := x.save(op, encodeOp(op)); err != nil {
				return err
			}
		}
		return x.commitStats()
	})
	if err != nil {
		return fmt.Errorf("save %d operations: %w", len(ops), err)
	}
	return nil
}

func (x *tx) save(op *engine.Op, rec []byte) error {
	seq := op.Seq
	if seq == 0 {
		if v := x.ids.Get(idKey(op)); v != nil {
			seq = idSeq(v)
		}
	}
	var old *engine.Op
	if seq != 0 {
		if raw := x.record(seq); raw != nil {
			var err error
			if old, err = decodeCounted(seq, raw); err != nil {
				return err
			}
		}
	}
	if old == nil {
		// Never recorded (or pruned): record it now.
		n, err := x.ops.NextSequence()
		if err != nil {
			return err
		}
		op.Seq = n
		return x.insertAndKey(op)
	}
	op.Seq = seq
	if finishedOK(old.State) != finishedOK(op.State) {
		from := x.ops
		if finishedOK(old.State) {
			from = x.done
		}
		if err := from.Delete(seqKey(seq)); err != nil {
			return err
		}
	}
	if err := x.put(op, rec); err != nil {
		return err
	}
	if err := x.index(old, op); err != nil {
		return err
	}
	x.stats.count(old, -1)
	x.stats.count(op, 1)
	if op.State == engine.Completed && old.State != engine.Completed && op.Late() {
		x.stats["l\x00"+op.Rule]++
	}
	return x.advanceKey(op)
}

func (x *tx) insertAndKey(op *engine.Op) error {
	if err := x.insert(op, idKey(op)); err != nil {
		return err
	}
	return x.advanceKey(op)
}

// advanceKey moves op's destination key's state as engine.Advance says,
// in op's own transaction.
func (x *tx) advanceKey(op *engine.Op) error {
	if !engine.MovesKey(op) {
		return nil
	}
	k := hash16(op.DestKeyID())
	var last keyState
	if raw := x.keys.Get(k); raw != nil {
		var err error
		if last, err = decodeKeyState(raw); err != nil {
			return err
		}
	}
	next := last
	var newest bool
	if next.KeyState, newest = engine.Advance(last.KeyState, op); newest {
		next.Seq = op.Seq // pruning op forgets the key (see PruneStep)
	}
	return x.keys.Put(k, encodeKeyState(next))
}

// BeginRun implements engine.StateStore.
func (s *Store) BeginRun(ctx context.Context) (bool, error) {
	var crashed bool
	err := s.db.Update(func(t *bolt.Tx) error {
		meta := t.Bucket(bucketMeta)
		crashed = meta.Get(keyRunning) != nil
		if crashed {
			seq := t.Bucket(bucketOps).Sequence()
			if err := meta.Put(keySuspect, seqKey(seq)); err != nil {
				return err
			}
		}
		return meta.Put(keyRunning, []byte(time.Now().UTC().Format(time.RFC3339)))
	})
	if err != nil {
		return false, fmt.Errorf("mark the state file in use: %w", err)
	}
	return crashed, nil
}

// EndRun implements engine.StateStore.
func (s *Store) EndRun(ctx context.Context) error {
	err := s.db.Update(func(t *bolt.Tx) error { return t.Bucket(bucketMeta).Delete(keyRunning) })
	if err != nil {
		return fmt.Errorf("mark a clean stop in the state file: %w", err)
	}
	return nil
}

// SuspectThrough implements engine.StateStore: ops recorded up to this seq
// were unfinished when some run crashed.
func (s *Store) SuspectThrough(ctx context.Context) (uint64, error) {
	var seq uint64
	err := s.db.View(func(t *bolt.Tx) error {
		if v := t.Bucket(bucketMeta).Get(keySuspect); len(v) == 8 {
			seq = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	return seq, err
}

// LastWritten implements engine.StateStore.
func (s *Store) LastWritten(ctx context.Context, destKeyID string) (engine.KeyState, bool, error) {
	var ks keyState
	var ok bool
	err := s.db.View(func(t *bolt.Tx) error {
		raw := t.Bucket(bucketKeys).Get(hash16(destKeyID))
		if raw == nil {
			return nil
		}
		ok = true
		var err error
		ks, err = decodeKeyState(raw)
		return err
	})
	return ks.KeyState, ok, err
}

// Pending implements engine.StateStore: the unfinished ops of one origin
// recorded after seq after, in arrival order, at most limit of them, and
// whether there are more.
func (s *Store) Pending(ctx context.Context, origin engine.Origin, after uint64, limit int) ([]*engine.Op, bool, error) {
	var ops []*engine.Op
	more := false
	err := s.db.View(func(t *bolt.Tx) error {
		x := wrap(t)
		class := originByte(origin)
		c := x.pending.Cursor()
		for k, _ := c.Seek(binary.BigEndian.AppendUint64([]byte{class}, after+1)); k != nil && k[0] == class; k, _ = c.Next() {
			if len(ops) >= limit {
				more = true
				return nil
			}
			seq := seqOf(k)
			op, err := x.op(seq)
			if err != nil {
				return err
			}
			ops = append(ops, op)
		}
		return nil
	})
	return ops, more, err
}

// put stores an op's record where its state keeps it.
func (x *tx) put(op *engine.Op, rec []byte) error {
	if finishedOK(op.State) {
		return x.done.Put(seqKey(op.Seq), rec)
	}
	return x.ops.Put(seqKey(op.Seq), rec)
}

// record returns an op's stored record, wherever it is (nil: none).
func (x *tx) record(seq uint64) []byte {
	if raw := x.ops.Get(seqKey(seq)); raw != nil {
		return raw
	}
	return x.done.Get(seqKey(seq))
}

func (x *tx) op(seq uint64) (*engine.Op, error) {
	raw := x.record(seq)
	if raw == nil {
		return nil, fmt.Errorf("operation %d is indexed but not recorded", seq)
	}
	return decodeOp(seq, raw)
}

// oldestScan is how many of the first unfinished ops of each origin the
// oldest pending age is taken from: they arrived first, and one that
// arrived later with an older event time is rare and not much older.
const oldestScan = 64

// OldestPending returns the earliest event (or record) time of the ops
// that have been unfinished longest.
func (s *Store) OldestPending(ctx context.Context) (time.Time, bool, error) {
	var oldest time.Time
	err := s.db.View(func(t *bolt.Tx) error {
		x := wrap(t)
		for _, class := range []byte{0, 1} {
			c := x.pending.Cursor()
			n := 0
			for k, _ := c.Seek([]byte{class}); k != nil && k[0] == class && n < oldestScan; k, _ = c.Next() {
				op, err := x.op(seqOf(k))
				if err != nil {
					return err
				}
				if since := op.Since(); oldest.IsZero() || since.Before(oldest) {
					oldest = since
				}
				n++
			}
		}
		return nil
	})
	return oldest, !oldest.IsZero(), err
}

// OpsOf returns every op recorded for a rule and source version: the first
// copy, any later passes and, for the null version, every write.
func (s *Store) OpsOf(rule, bucket, key, version string) ([]*engine.Op, error) {
	prefix := idPrefix(engine.OpID(rule, bucket, key, version))
	var ops []*engine.Op
	err := s.db.View(func(t *bolt.Tx) error {
		x := wrap(t)
		c := x.ids.Cursor()
		for k, v := c.Seek(prefix); k != nil && len(k) == idKeyLen && string(k[:idBaseLen]) == string(prefix); k, v = c.Next() {
			op, err := x.op(idSeq(v))
			if err != nil {
				return err
			}
			ops = append(ops, op)
		}
		return nil
	})
	slices.SortFunc(ops, func(a, b *engine.Op) int { return cmp.Compare(a.Seq, b.Seq) })
	return ops, err
}

// Find returns the recorded op with op's identity, or nil.
func (s *Store) Find(op *engine.Op) (*engine.Op, error) {
	var found *engine.Op
	err := s.db.View(func(t *bolt.Tx) error {
		x := wrap(t)
		v := x.ids.Get(idKey(op))
		if v == nil {
			return nil
		}
		var err error
		found, err = x.op(idSeq(v))
		return err
	})
	return found, err
}

// Retry implements engine.StateStore: it reads the failed index only.
func (s *Store) Retry(ctx context.Context, keys []string) ([]*engine.Op, error) {
	want := map[string]bool{}
	for _, k := range keys {
		want[k] = true
	}
	var out []*engine.Op
	err := s.db.Update(func(t *bolt.Tx) error {
		out = out[:0]
		x := wrap(t)
		var seqs []uint64
		if err := x.failed.ForEach(func(k, _ []byte) error { seqs = append(seqs, seqOf(k)); return nil }); err != nil {
			return err
		}
		for _, seq := range seqs {
			op, err := x.op(seq)
			if err != nil {
				return err
			}
			if len(want) > 0 && !want[op.Key] {
				continue
			}
			op.State, op.Attempts, op.NextAttempt, op.Reason, op.Finished = engine.Pending, 0, time.Time{}, "", time.Time{}
			if err := x.save(op, encodeOp(op)); err != nil {
				return err
			}
			out = append(out, op)
		}
		return x.commitStats()
	})
	return out, err
}

// LoadUpload implements engine.StateStore.
func (s *Store) LoadUpload(ctx context.Context, opID string) (*engine.Upload, error) {
	var up *engine.Upload
	err := s.db.View(func(t *bolt.Tx) error {
		raw := t.Bucket(bucketUploads).Get([]byte(opID))
		if raw == nil {
			return nil
		}
		up = new(engine.Upload)
		return json.Unmarshal(raw, up)
	})
	return up, err
}

// SaveUpload implements engine.StateStore.
func (s *Store) SaveUpload(ctx context.Context, opID string, up *engine.Upload) error {
	raw, err := json.Marshal(up)
	if err != nil {
		return err
	}
	// Committed at once, not gathered with other writes: the part's slot,
	// and the next part's record, wait for it.
	return s.db.Update(func(t *bolt.Tx) error { return t.Bucket(bucketUploads).Put([]byte(opID), raw) })
}

// DeleteUpload implements engine.StateStore.
func (s *Store) DeleteUpload(ctx context.Context, opID string) error {
	return s.db.Batch(func(t *bolt.Tx) error { return t.Bucket(bucketUploads).Delete([]byte(opID)) })
}

// Cursor is a backfill's listing position for one rule.
type Cursor = engine.Cursor

// LoadCursor returns the backfill cursor of a rule (zero when none).
func (s *Store) LoadCursor(rule string) (Cursor, error) {
	var c Cursor
	err := s.db.View(func(t *bolt.Tx) error {
		raw := t.Bucket(bucketCursors).Get([]byte(rule))
		if raw == nil {
			return nil
		}
		return json.Unmarshal(raw, &c)
	})
	return c, err
}

// SaveCursor stores a backfill cursor.
func (s *Store) SaveCursor(rule string, c Cursor) error {
	raw, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return s.db.Batch(func(t *bolt.Tx) error { return t.Bucket(bucketCursors).Put([]byte(rule), raw) })
}

// pruneBatch is how many finished ops one prune transaction deletes.
const pruneBatch = 5000

// Prune deletes finished ops (completed, skipped, superseded) that
// finished before the given time, with their index entries and, when they
// were the last write to their destination key, its record. It walks the
// finished index from its oldest end and reads nothing else. Failed ops
// stay until retried.
func (s *Store) Prune(before time.Time) (int, error) {
	total := 0
	for {
		n, err := s.PruneStep(before, pruneBatch)
		total += n
		if err != nil || n < pruneBatch {
			return total, err
		}
	}
}

// PruneStep deletes at most limit finished ops in one transaction.
func (s *Store) PruneStep(before time.Time, limit int) (int, error) {
	n := 0
	err := s.db.Update(func(t *bolt.Tx) error {
		n = 0
		x := wrap(t)
		end := finishedKey(before, 0)
		c := x.finished.Cursor()
		for k, _ := c.First(); k != nil && n < limit && string(k) < string(end); k, _ = c.First() {
			seq := seqOf(k)
			if err := c.Delete(); err != nil {
				return err
			}
			raw := x.done.Get(seqKey(seq))
			if raw == nil {
				return fmt.Errorf("operation %d is indexed as finished but not recorded so", seq)
			}
			op, err := decodeOp(seq, raw)
			if err != nil {
				return err
			}
			id, hk := finishedKeys(raw)
			if id == nil {
				id, hk = idKey(op), hash16(op.DestKeyID())
			}
			id, hk = slices.Clone(id), slices.Clone(hk)
			if err := x.done.Delete(seqKey(seq)); err != nil {
				return err
			}
			if err := x.ids.Delete(id); err != nil {
				return err
			}
			if raw := x.keys.Get(hk); raw != nil {
				if ks, err := decodeKeyState(raw); err == nil && ks.Seq == seq {
					if err := x.keys.Delete(hk); err != nil {
						return err
					}
				}
			}
			x.stats.count(op, -1)
			n++
		}
		return x.commitStats()
	})
	return n, err
}

// Stats are the state file's bbolt statistics (benchmarks read them).
func (s *Store) Stats() bolt.Stats { return s.db.Stats() }

// Size is the state file's size in bytes (the scale benchmark reports it
// per operation).
func (s *Store) Size() (int64, error) {
	fi, err := os.Stat(s.db.Path())
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}
