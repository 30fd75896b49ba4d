package dynamostate

import (
	"context"
	"time"

	"github.com/s3replicad/s3replicad/engine"
)

// Hooks for the package's tests.

// SetRescanEvery changes how often Pending reads a shard's queue from its
// start (0: every time).
func (s *Store) SetRescanEvery(d time.Duration) {
	s.mu.Lock()
	s.rescan = d
	s.mu.Unlock()
}

// ExtendLocally makes this node believe it renewed a shard's lease just
// now, as a node whose clock ran slow would: only the table's fence
// stands between it and the new owner's items then.
func (s *Store) ExtendLocally(shard int, epoch int64) {
	s.mu.Lock()
	s.held[shard] = &lease{epoch: epoch, renewed: time.Now()}
	s.mu.Unlock()
}

// Epoch is the epoch this node holds a shard with (0: not held).
func (s *Store) Epoch(shard int) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.held[shard]; l != nil {
		return l.epoch
	}
	return 0
}

// AdvanceKeyOnly makes the first write of a completion and stops, as a
// node that dies between the two would.
func (s *Store) AdvanceKeyOnly(ctx context.Context, op *engine.Op) error {
	shard := shardOf(op.DestKeyID(), s.shards)
	ep, err := s.fence(shard)
	if err != nil {
		return err
	}
	return s.advanceKey(ctx, op, shard, ep)
}

// SetForgetAfter changes how long a stopped node's item is kept.
func (s *Store) SetForgetAfter(d time.Duration) {
	s.mu.Lock()
	s.forgetAfter = d
	s.mu.Unlock()
}
