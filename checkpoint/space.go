package checkpoint

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"

	bolt "go.etcd.io/bbolt"
)

// A full disk pauses the daemon until a probe succeeds. The probe must need
// space the way a real write does: an empty transaction rewrites pages the
// file already has and succeeds on a full disk, which made the pause flap.
const (
	// probeSize is the value the probe writes: new pages, about what a
	// busy second of records needs.
	probeSize = 256 << 10
	// probeFree is the free space the file system must report as well, so
	// that the daemon does not resume only to fill the disk again at once.
	probeFree = 1 << 20
)

var keyProbe = []byte("probe")

// Probe reports whether the state file can grow again: its file system has
// room, and a write that needs new pages succeeds (its pages are freed at
// once). Its error wraps syscall.ENOSPC while the disk is full.
func (s *Store) Probe(ctx context.Context) error {
	if free, ok := freeBytes(filepath.Dir(s.db.Path())); ok && free < probeFree {
		return fmt.Errorf("state file's disk has %d bytes free, less than %d: %w", free, probeFree, syscall.ENOSPC)
	}
	blob := make([]byte, probeSize)
	if err := s.db.Update(func(t *bolt.Tx) error { return t.Bucket(bucketMeta).Put(keyProbe, blob) }); err != nil {
		return fmt.Errorf("probe the state file's disk: %w", err)
	}
	if err := s.db.Update(func(t *bolt.Tx) error { return t.Bucket(bucketMeta).Delete(keyProbe) }); err != nil {
		return fmt.Errorf("probe the state file's disk: %w", err)
	}
	return nil
}
