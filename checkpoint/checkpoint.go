// Package checkpoint keeps the replicator's durable state in a bbolt file:
// every recorded operation, the last version written to each destination
// key, multipart uploads in progress and backfill cursors.
package checkpoint

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/engine/event"
)

// FileName is the state file's name inside state_dir.
const FileName = "state.db"

// SchemaVersion is bumped when the layout changes incompatibly.
const SchemaVersion = 1

var (
	bucketMeta     = []byte("meta")
	bucketOps      = []byte("ops")
	bucketKeys     = []byte("keys")
	bucketUploads  = []byte("uploads")
	bucketCursors  = []byte("cursors")
	keySchema      = []byte("schema")
	keyRunning     = []byte("running") // set while a process runs the engine
	allBuckets     = [][]byte{bucketMeta, bucketOps, bucketKeys, bucketUploads, bucketCursors}
	errWrongSchema = errors.New("state file schema")
)

// ErrLocked means another process (normally the running daemon) holds the
// state file.
var ErrLocked = errors.New("state file is in use by another process")

// Store is the bbolt-backed engine.StateStore.
type Store struct {
	db *bolt.DB
}

var _ engine.StateStore = (*Store)(nil)

// Options for Open.
type Options struct {
	ReadOnly bool
	// Timeout is how long to wait for the file lock.
	Timeout time.Duration
}

// Open opens (creating when needed) the state file in dir.
func Open(dir string, o Options) (*Store, error) {
	if !o.ReadOnly {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create state_dir: %w", err)
		}
	}
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Second
	}
	path := filepath.Join(dir, FileName)
	if o.ReadOnly {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("open state file: %w", err)
		}
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: o.Timeout, ReadOnly: o.ReadOnly})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("%s: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("open state file %s: %w", path, err)
	}
	// Many workers finish at once: let their writes share one fsync.
	db.MaxBatchDelay = 2 * time.Millisecond
	s := &Store{db: db}
	if o.ReadOnly {
		err = db.View(func(tx *bolt.Tx) error { return checkSchema(tx.Bucket(bucketMeta)) })
	} else {
		err = db.Update(func(tx *bolt.Tx) error {
			for _, b := range allBuckets {
				if _, err := tx.CreateBucketIfNotExists(b); err != nil {
					return err
				}
			}
			meta := tx.Bucket(bucketMeta)
			if meta.Get(keySchema) == nil {
				return meta.Put(keySchema, []byte(strconv.Itoa(SchemaVersion)))
			}
			return checkSchema(meta)
		})
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open state file %s: %w", path, err)
	}
	return s, nil
}

func checkSchema(meta *bolt.Bucket) error {
	if meta == nil {
		return fmt.Errorf("%w: not an s3replicad state file", errWrongSchema)
	}
	v, _ := strconv.Atoi(string(meta.Get(keySchema)))
	if v != SchemaVersion {
		return fmt.Errorf("%w version %d, this build reads %d", errWrongSchema, v, SchemaVersion)
	}
	return nil
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// Path is the state file's path.
func (s *Store) Path() string { return s.db.Path() }

// Record implements engine.StateStore.
func (s *Store) Record(ctx context.Context, ops []*engine.Op) ([]*engine.Op, error) {
	var added []*engine.Op
	err := s.db.Batch(func(tx *bolt.Tx) error {
		added = added[:0] // Batch may run the function again
		b := tx.Bucket(bucketOps)
		seen := map[string]bool{}
		for _, op := range ops {
			id := op.ID()
			if seen[id] || b.Get([]byte(id)) != nil {
				continue
			}
			seen[id] = true
			seq, err := b.NextSequence()
			if err != nil {
				return err
			}
			op.Seq = seq
			if err := putJSON(b, id, op); err != nil {
				return err
			}
			added = append(added, op)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("record %d operations: %w", len(ops), err)
	}
	return added, nil
}

// Save implements engine.StateStore.
func (s *Store) Save(ctx context.Context, op *engine.Op) error {
	err := s.db.Batch(func(tx *bolt.Tx) error {
		if err := putJSON(tx.Bucket(bucketOps), op.ID(), op); err != nil {
			return err
		}
		if op.State != engine.Completed {
			return nil
		}
		keys := tx.Bucket(bucketKeys)
		id := op.DestKeyID()
		var last engine.KeyState
		if raw := keys.Get([]byte(id)); raw != nil {
			if err := json.Unmarshal(raw, &last); err != nil {
				return err
			}
		}
		// Move forward only: a backfilled or unsequenced op does not erase
		// what a sequenced event established.
		if op.Sequencer == "" && last.Sequencer != "" {
			return nil
		}
		if last.Sequencer != "" && event.CompareSequencer(op.Sequencer, last.Sequencer) < 0 {
			return nil
		}
		return putJSON(keys, id, engine.KeyState{Sequencer: op.Sequencer, VersionID: op.VersionID})
	})
	if err != nil {
		return fmt.Errorf("save %s: %w", op, err)
	}
	return nil
}

// SaveAll implements engine.StateStore: one transaction for all.
func (s *Store) SaveAll(ctx context.Context, ops []*engine.Op) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketOps)
		for _, op := range ops {
			if err := putJSON(b, op.ID(), op); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("save %d operations: %w", len(ops), err)
	}
	return nil
}

// BeginRun implements engine.StateStore.
func (s *Store) BeginRun() (bool, error) {
	var crashed bool
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		crashed = meta.Get(keyRunning) != nil
		return meta.Put(keyRunning, []byte(time.Now().UTC().Format(time.RFC3339)))
	})
	if err != nil {
		return false, fmt.Errorf("mark the state file in use: %w", err)
	}
	return crashed, nil
}

// EndRun implements engine.StateStore.
func (s *Store) EndRun() error {
	err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Delete(keyRunning) })
	if err != nil {
		return fmt.Errorf("mark a clean stop in the state file: %w", err)
	}
	return nil
}

// LastWritten implements engine.StateStore.
func (s *Store) LastWritten(destKeyID string) (engine.KeyState, bool, error) {
	var ks engine.KeyState
	var ok bool
	err := s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketKeys).Get([]byte(destKeyID))
		if raw == nil {
			return nil
		}
		ok = true
		return json.Unmarshal(raw, &ks)
	})
	return ks, ok, err
}

// Unfinished implements engine.StateStore.
func (s *Store) Unfinished(fn func(*engine.Op) error) error {
	return s.Each(func(op *engine.Op) error {
		if op.State == engine.Pending || op.State == engine.InFlight {
			return fn(op)
		}
		return nil
	})
}

// Each calls fn for every recorded op. The op is decoded from a copy, so fn
// may keep it.
func (s *Store) Each(fn func(*engine.Op) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketOps).ForEach(func(k, v []byte) error {
			var op engine.Op
			if err := json.Unmarshal(v, &op); err != nil {
				return fmt.Errorf("decode op %q: %w", k, err)
			}
			return fn(&op)
		})
	})
}

// Get returns the op with the given ID.
func (s *Store) Get(id string) (*engine.Op, error) {
	var op *engine.Op
	err := s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketOps).Get([]byte(id))
		if raw == nil {
			return nil
		}
		op = new(engine.Op)
		return json.Unmarshal(raw, op)
	})
	return op, err
}

// OpsOf returns every op recorded for a rule and source version: the first
// copy and any later passes.
func (s *Store) OpsOf(rule, bucket, key, version string) ([]*engine.Op, error) {
	id := []byte(engine.OpID(rule, bucket, key, version))
	var ops []*engine.Op
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketOps).Cursor()
		for k, v := c.Seek(id); k != nil && bytes.HasPrefix(k, id); k, v = c.Next() {
			if len(k) > len(id) && k[len(id)] != 0 {
				continue // another key that starts with this one
			}
			op := new(engine.Op)
			if err := json.Unmarshal(v, op); err != nil {
				return fmt.Errorf("decode op %q: %w", k, err)
			}
			ops = append(ops, op)
		}
		return nil
	})
	return ops, err
}

// Retry implements engine.StateStore.
func (s *Store) Retry(keys []string) ([]*engine.Op, error) {
	var out []*engine.Op
	err := s.db.Update(func(tx *bolt.Tx) error {
		out = out[:0]
		b := tx.Bucket(bucketOps)
		var ids [][]byte
		var ops []*engine.Op
		err := b.ForEach(func(k, v []byte) error {
			var op engine.Op
			if err := json.Unmarshal(v, &op); err != nil {
				return err
			}
			if op.State != engine.Failed || (len(keys) > 0 && !slices.Contains(keys, op.Key)) {
				return nil
			}
			ids = append(ids, slices.Clone(k))
			ops = append(ops, &op)
			return nil
		})
		if err != nil {
			return err
		}
		for i, op := range ops {
			op.State, op.Attempts, op.NextAttempt, op.Reason, op.Finished = engine.Pending, 0, time.Time{}, "", time.Time{}
			if err := putJSON(b, string(ids[i]), op); err != nil {
				return err
			}
			out = append(out, op)
		}
		return nil
	})
	return out, err
}

// LoadUpload implements engine.StateStore.
func (s *Store) LoadUpload(opID string) (*engine.Upload, error) {
	var up *engine.Upload
	err := s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketUploads).Get([]byte(opID))
		if raw == nil {
			return nil
		}
		up = new(engine.Upload)
		return json.Unmarshal(raw, up)
	})
	return up, err
}

// SaveUpload implements engine.StateStore.
func (s *Store) SaveUpload(opID string, up *engine.Upload) error {
	return s.db.Batch(func(tx *bolt.Tx) error { return putJSON(tx.Bucket(bucketUploads), opID, up) })
}

// DeleteUpload implements engine.StateStore.
func (s *Store) DeleteUpload(opID string) error {
	return s.db.Batch(func(tx *bolt.Tx) error { return tx.Bucket(bucketUploads).Delete([]byte(opID)) })
}

// Cursor is a backfill's listing position for one rule.
type Cursor struct {
	KeyMarker     string    `json:"key_marker"`
	VersionMarker string    `json:"version_marker"`
	Done          bool      `json:"done"`
	Listed        int64     `json:"listed"`
	Submitted     int64     `json:"submitted"`
	Updated       time.Time `json:"updated"`
}

// LoadCursor returns the backfill cursor of a rule (zero when none).
func (s *Store) LoadCursor(rule string) (Cursor, error) {
	var c Cursor
	err := s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketCursors).Get([]byte(rule))
		if raw == nil {
			return nil
		}
		return json.Unmarshal(raw, &c)
	})
	return c, err
}

// SaveCursor stores a backfill cursor.
func (s *Store) SaveCursor(rule string, c Cursor) error {
	return s.db.Batch(func(tx *bolt.Tx) error { return putJSON(tx.Bucket(bucketCursors), rule, c) })
}

// ResetCursor forgets a rule's backfill position.
func (s *Store) ResetCursor(rule string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketCursors).Delete([]byte(rule)) })
}

func putJSON(b *bolt.Bucket, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), raw)
}

// Prune deletes finished ops (completed, skipped, superseded) that finished
// before the given time. Failed ops stay until retried.
func (s *Store) Prune(before time.Time) (int, error) {
	total := 0
	for {
		var ids [][]byte
		err := s.db.View(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketOps).ForEach(func(k, v []byte) error {
				if len(ids) >= 10000 {
					return nil
				}
				var op engine.Op
				if err := json.Unmarshal(v, &op); err != nil {
					return err
				}
				switch op.State {
				case engine.Completed, engine.Skipped, engine.Superseded:
					if !op.Finished.IsZero() && op.Finished.Before(before) {
						ids = append(ids, slices.Clone(k))
					}
				}
				return nil
			})
		})
		if err != nil || len(ids) == 0 {
			return total, err
		}
		err = s.db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketOps)
			for _, id := range ids {
				if err := b.Delete(id); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return total, err
		}
		total += len(ids)
		if len(ids) < 10000 {
			return total, nil
		}
	}
}

// Stats are the state file's bbolt statistics (benchmarks read them).
func (s *Store) Stats() bolt.Stats { return s.db.Stats() }
