package checkpoint

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/s3replicad/s3replicad/engine"
)

// deltas are counter changes made by one transaction, applied once at its
// end. Counters: ops by rule and state ("n" rule state), bytes pending by
// rule ("b" rule), unfinished ops by origin ("o" origin), late versions
// written with the newest put back on top, by rule ("l" rule); the parts
// NUL-separated, built by concatenation (one allocation per key).
type deltas map[string]int64

// count adds (sign +1) or removes (-1) an op's contribution.
func (d deltas) count(op *engine.Op, sign int64) {
	d["n\x00"+op.Rule+"\x00"+string(op.State)] += sign
	if unfinished(op.State) {
		d["o\x00"+string(op.Origin)] += sign
		if op.Size > 0 {
			d["b\x00"+op.Rule] += sign * op.Size
		}
	}
}

func (d deltas) apply(b *bolt.Bucket) error {
	for k, v := range d {
		if v == 0 {
			continue
		}
		key := []byte(k)
		cur := int64(0)
		if raw := b.Get(key); len(raw) == 8 {
			cur = int64(binary.BigEndian.Uint64(raw))
		}
		cur += v
		var err error
		if cur == 0 {
			err = b.Delete(key)
		} else {
			err = b.Put(key, binary.BigEndian.AppendUint64(nil, uint64(cur)))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Status is the state file summarised; `status -json` prints it as is, so
// its field names are a stable interface.
type Status struct {
	Counts       map[engine.State]int64 `json:"counts"`
	BytesPending int64                  `json:"bytes_pending"`
	// LateVersions counts the versions written after a newer one of
	// their key, each followed by a copy of the newest on top (guarantee
	// 4): the extra copies replication made.
	LateVersions     int64                 `json:"late_versions"`
	OldestPending    *time.Time            `json:"oldest_pending,omitempty"`
	OldestPendingAge float64               `json:"oldest_pending_seconds"`
	Rules            map[string]RuleStatus `json:"rules"`
	Failed           []FailedItem          `json:"failed"`
	Uploads          int                   `json:"multipart_uploads_in_progress"`
	BackfillPending  int64                 `json:"backfill_pending"`
	Backfill         map[string]Cursor     `json:"backfill,omitempty"`
	GeneratedAt      time.Time             `json:"generated_at"`
	DaemonRunning    bool                  `json:"daemon_running"`
	// IntakePaused says the daemon stopped receiving because the state
	// file's disk is full (daemon only).
	IntakePaused bool `json:"intake_paused,omitempty"`
}

// RuleStatus is the per-rule part of Status.
type RuleStatus struct {
	Counts       map[engine.State]int64 `json:"counts"`
	BytesPending int64                  `json:"bytes_pending"`
	LateVersions int64                  `json:"late_versions"`
}

// FailedItem is one failed op with its last error.
type FailedItem struct {
	Rule      string    `json:"rule"`
	Bucket    string    `json:"bucket"`
	Key       string    `json:"key"`
	VersionID string    `json:"version_id"`
	Reason    string    `json:"reason"`
	Error     string    `json:"error"`
	Attempts  int       `json:"attempts"`
	Failed    time.Time `json:"failed_at"`
}

// maxFailedListed bounds the failed items Status lists (counts stay exact).
const maxFailedListed = 1000

func newCounts() map[engine.State]int64 {
	c := map[engine.State]int64{}
	for _, s := range engine.States {
		c[s] = 0
	}
	return c
}

// EmptyStatus is the status of a daemon that has recorded nothing yet (no
// state file).
func EmptyStatus(now time.Time) *Status {
	return &Status{Counts: newCounts(), Rules: map[string]RuleStatus{}, Failed: []FailedItem{}, Backfill: map[string]Cursor{}, GeneratedAt: now.UTC()}
}

// Status summarises the state file from its counters and indexes: it reads
// the same few pages whatever the number of operations.
func (s *Store) Status(now time.Time) (*Status, error) {
	st := EmptyStatus(now)
	err := s.db.View(func(t *bolt.Tx) error {
		x := wrap(t)
		err := t.Bucket(bucketStats).ForEach(func(k, v []byte) error {
			parts := strings.Split(string(k[2:]), "\x00")
			n := int64(binary.BigEndian.Uint64(v))
			rule := func(id string) RuleStatus {
				rs, ok := st.Rules[id]
				if !ok {
					rs = RuleStatus{Counts: newCounts()}
				}
				return rs
			}
			switch {
			case k[0] == 'n' && len(parts) == 2:
				rs := rule(parts[0])
				rs.Counts[engine.State(parts[1])] += n
				st.Rules[parts[0]] = rs
				st.Counts[engine.State(parts[1])] += n
			case k[0] == 'b' && len(parts) == 1:
				rs := rule(parts[0])
				rs.BytesPending += n
				st.Rules[parts[0]] = rs
				st.BytesPending += n
			case k[0] == 'l' && len(parts) == 1:
				rs := rule(parts[0])
				rs.LateVersions += n
				st.Rules[parts[0]] = rs
				st.LateVersions += n
			case k[0] == 'o' && len(parts) == 1 && parts[0] == string(engine.OriginBackfill):
				st.BackfillPending = n
			}
			return nil
		})
		if err != nil {
			return err
		}
		c := x.failed.Cursor()
		for k, _ := c.First(); k != nil && len(st.Failed) < maxFailedListed; k, _ = c.Next() {
			op, err := x.op(seqOf(k))
			if err != nil {
				return err
			}
			st.Failed = append(st.Failed, FailedItem{Rule: op.Rule, Bucket: op.Bucket, Key: op.Key, VersionID: op.VersionID,
				Reason: op.Reason, Error: op.LastError, Attempts: op.Attempts, Failed: op.Finished})
		}
		st.Uploads = t.Bucket(bucketUploads).Stats().KeyN
		return t.Bucket(bucketCursors).ForEach(func(k, v []byte) error {
			var c Cursor
			if err := json.Unmarshal(v, &c); err != nil {
				return err
			}
			st.Backfill[string(k)] = c
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	if oldest, ok, err := s.OldestPending(context.Background()); err != nil {
		return nil, err
	} else if ok {
		o := oldest.UTC()
		st.OldestPending = &o
		st.OldestPendingAge = max(now.Sub(oldest).Seconds(), 0)
	}
	return st, nil
}

// Counts returns the unfinished ops and bytes pending of each rule (the
// daemon starts its gauges from them).
func (s *Store) Counts(ctx context.Context) (map[string]int64, map[string]int64, error) {
	st, err := s.Status(time.Now())
	if err != nil {
		return nil, nil, err
	}
	ops, bytes := map[string]int64{}, map[string]int64{}
	for id, rs := range st.Rules {
		ops[id] = rs.Counts[engine.Pending] + rs.Counts[engine.InFlight]
		bytes[id] = rs.BytesPending
	}
	return ops, bytes, nil
}

// WithRunning adjusts a status for the ops a running daemon has at work:
// they count as in flight whatever the file says yet (write marks are
// saved lazily).
func (st *Status) WithRunning(running map[string]int) {
	for rule, n := range running {
		rs, ok := st.Rules[rule]
		if !ok {
			continue
		}
		open := rs.Counts[engine.Pending] + rs.Counts[engine.InFlight]
		n := min(int64(n), open)
		st.Counts[engine.Pending] += (open - n) - rs.Counts[engine.Pending]
		st.Counts[engine.InFlight] += n - rs.Counts[engine.InFlight]
		rs.Counts[engine.Pending], rs.Counts[engine.InFlight] = open-n, n
		st.Rules[rule] = rs
	}
}
