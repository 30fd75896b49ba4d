package checkpoint

import (
	"encoding/json"
	"fmt"
	"strconv"

	bolt "go.etcd.io/bbolt"

	"github.com/s3replicad/s3replicad/engine"
)

// Schema 1 kept every op as JSON under its ID in "ops", and the last
// version written to each destination key as JSON under the key's ID in
// "keys"; status and pruning read all of it. Uploads and cursors are the
// same in both schemas.
var (
	v1Ops  = []byte("ops")
	v1Keys = []byte("keys")
)

// migrateBatch is how many records one migration transaction moves: a
// migration interrupted (even by kill -9) resumes where it stopped, the
// file still marked schema 1 until the last step.
const migrateBatch = 10000

func migrateV1(db *bolt.DB, progress func(string, ...any)) error {
	if progress == nil {
		progress = func(string, ...any) {}
	}
	err := db.Update(func(t *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := t.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		// Keep the arrival numbers schema 1 gave: unfinished ops go on in
		// the order they came.
		if old := t.Bucket(v1Ops); old != nil {
			ops := t.Bucket(bucketOps)
			if old.Sequence() > ops.Sequence() {
				return ops.SetSequence(old.Sequence())
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	moved := 0
	for {
		n, err := migrateOps(db)
		if err != nil {
			return err
		}
		moved += n
		if n > 0 {
			progress("migrating the state file to schema %d: %d operations moved", SchemaVersion, moved)
		}
		if n < migrateBatch {
			break
		}
	}
	for {
		n, err := migrateKeys(db)
		if err != nil {
			return err
		}
		if n < migrateBatch {
			break
		}
	}
	return db.Update(func(t *bolt.Tx) error {
		for _, b := range [][]byte{v1Ops, v1Keys} {
			if t.Bucket(b) != nil {
				if err := t.DeleteBucket(b); err != nil {
					return err
				}
			}
		}
		return t.Bucket(bucketMeta).Put(keySchema, []byte(strconv.Itoa(SchemaVersion)))
	})
}

func migrateOps(db *bolt.DB) (int, error) {
	n := 0
	err := db.Update(func(t *bolt.Tx) error {
		n = 0
		old := t.Bucket(v1Ops)
		if old == nil {
			return nil
		}
		x := wrap(t)
		c := old.Cursor()
		for k, v := c.First(); k != nil && n < migrateBatch; k, v = c.First() {
			var op engine.Op
			if err := json.Unmarshal(v, &op); err != nil {
				return fmt.Errorf("decode schema 1 operation %q: %w", k, err)
			}
			if err := c.Delete(); err != nil {
				return err
			}
			n++
			id := idKey(&op)
			if x.ids.Get(id) != nil {
				continue
			}
			if op.Seq == 0 {
				seq, err := x.ops.NextSequence()
				if err != nil {
					return err
				}
				op.Seq = seq
			}
			if err := x.insert(&op, id); err != nil {
				return err
			}
		}
		return x.commitStats()
	})
	return n, err
}

func migrateKeys(db *bolt.DB) (int, error) {
	n := 0
	err := db.Update(func(t *bolt.Tx) error {
		n = 0
		old := t.Bucket(v1Keys)
		if old == nil {
			return nil
		}
		keys := t.Bucket(bucketKeys)
		c := old.Cursor()
		for k, v := c.First(); k != nil && n < migrateBatch; k, v = c.First() {
			var ks struct {
				Sequencer string `json:"sequencer"`
				VersionID string `json:"version_id"`
			}
			if err := json.Unmarshal(v, &ks); err != nil {
				return fmt.Errorf("decode schema 1 key state %q: %w", k, err)
			}
			rec := keyState{KeyState: engine.KeyState{Sequencer: ks.Sequencer, Version: engine.VersionDigest(ks.VersionID)}}
			if err := keys.Put(hash16(string(k)), encodeKeyState(rec)); err != nil {
				return err
			}
			if err := c.Delete(); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}
