package reconcile

import (
	"context"
	"fmt"
	"time"

	"github.com/s3replicad/s3replicad/engine"
)

// Source is what backfill reads of the source: its listing and tags.
type Source interface {
	Lister
	Tagger
}

// Destination is what backfill reads of the destination.
type Destination interface {
	Lister
	Header
}

// State is what backfill reads and writes of the state file: its cursors
// and the ops already recorded for a version.
type State interface {
	LoadCursor(rule string) (engine.Cursor, error)
	SaveCursor(rule string, c engine.Cursor) error
	OpsOf(rule, bucket, key, version string) ([]*engine.Op, error)
}

// Submitter records ops and schedules them (the engine).
type Submitter interface {
	Submit(ctx context.Context, ops []*engine.Op) (int, error)
}

// Backfill queues, rule by rule, what the destination lacks, from each
// rule's checkpointed cursor: an interrupted backfill (even kill -9)
// resumes after the last key whose ops were submitted.
type Backfill struct {
	Source      Source
	Destination func(rule engine.Rule) Destination
	State       State
	Queue       Submitter
	// Pass names this backfill's deliberate second copies.
	Pass string
	// Progress is told of every key: versions listed, ops and bytes queued.
	Progress func(listed, submitted int, bytes int64)
}

// Flushing: ops are submitted, and the cursor saved, every batchOps ops or
// batchKeys keys, whichever comes first.
const batchOps, batchKeys = 500, 200

// Rule lists one rule's keys and queues their copies. A cursor marked done
// starts a new pass from the beginning: it copies nothing that is there.
func (b *Backfill) Rule(ctx context.Context, rule engine.Rule) (engine.Cursor, error) {
	cur, err := b.State.LoadCursor(rule.ID)
	if err != nil {
		return cur, err
	}
	if cur.Done {
		cur = engine.Cursor{}
	}
	var batch []*engine.Op
	flush := func(lastKey string) error {
		if len(batch) > 0 {
			if _, err := b.Queue.Submit(ctx, batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
		cur.KeyMarker, cur.Updated = lastKey, time.Now().UTC()
		return b.State.SaveCursor(rule.ID, cur)
	}
	dst := b.Destination(rule)
	keys := 0
	err = Walk(ctx, b.Source, dst, rule, cur.KeyMarker, func(pair Pair) error {
		if len(pair.Source) == 0 {
			return nil // only on the destination: nothing to copy
		}
		ops, err := b.plan(ctx, rule, dst, pair)
		if err != nil {
			return fmt.Errorf("backfill %s: %w", pair.Key, err)
		}
		batch = append(batch, ops...)
		var bytes int64
		for _, op := range ops {
			bytes += max(op.Size, 0)
		}
		cur.Listed += int64(len(pair.Source))
		cur.Submitted += int64(len(ops))
		if b.Progress != nil {
			b.Progress(len(pair.Source), len(ops), bytes)
		}
		keys++
		if len(batch) >= batchOps || keys%batchKeys == 0 {
			return flush(pair.Key)
		}
		cur.KeyMarker = pair.Key
		return nil
	})
	if err != nil {
		return cur, err
	}
	cur.Done = true
	return cur, flush(cur.KeyMarker)
}

// plan decides one key's ops (Plan), with what the state file knows of
// each version, read after the destination's listing.
func (b *Backfill) plan(ctx context.Context, rule engine.Rule, dst Destination, pair Pair) ([]*engine.Op, error) {
	vs, err := Selected(ctx, b.Source, rule, pair.Key, pair.Source)
	if err != nil || len(vs) == 0 {
		return nil, err
	}
	known := make(map[string][]*engine.Op, len(vs))
	for _, v := range vs {
		if known[v.VersionID], err = b.State.OpsOf(rule.ID, rule.SourceBucket, pair.Key, v.VersionID); err != nil {
			return nil, err
		}
	}
	have, err := Inspect(ctx, dst, rule.DestinationBucket, pair.DestKey, pair.Source, pair.Dest)
	if err != nil {
		return nil, err
	}
	return Plan(rule, pair.Key, pair.DestKey, vs, have, known, pair.DestListedAt, b.Pass, time.Now()), nil
}
