package checkpoint

import (
	"encoding/json"

	bolt "go.etcd.io/bbolt"
	"time"

	"github.com/s3replicad/s3replicad/engine"
)

// Status is the state file summarised; `status -json` prints it as is, so
// its field names are a stable interface.
type Status struct {
	Counts           map[engine.State]int64 `json:"counts"`
	BytesPending     int64                  `json:"bytes_pending"`
	OldestPending    *time.Time             `json:"oldest_pending,omitempty"`
	OldestPendingAge float64                `json:"oldest_pending_seconds"`
	Rules            map[string]RuleStatus  `json:"rules"`
	Failed           []FailedItem           `json:"failed"`
	Uploads          int                    `json:"multipart_uploads_in_progress"`
	BackfillPending  int64                  `json:"backfill_pending"`
	Backfill         map[string]Cursor      `json:"backfill,omitempty"`
	GeneratedAt      time.Time              `json:"generated_at"`
	DaemonRunning    bool                   `json:"daemon_running"`
}

// RuleStatus is the per-rule part of Status.
type RuleStatus struct {
	Counts       map[engine.State]int64 `json:"counts"`
	BytesPending int64                  `json:"bytes_pending"`
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

// Status scans the state file.
func (s *Store) Status(now time.Time) (*Status, error) { return s.StatusWith(now, nil) }

// StatusWith is Status in the running daemon: the ops it has at work count
// as in flight, whatever the file says yet (write marks are saved lazily).
func (s *Store) StatusWith(now time.Time, running map[string]bool) (*Status, error) {
	st := &Status{Counts: newCounts(), Rules: map[string]RuleStatus{}, Failed: []FailedItem{}, GeneratedAt: now.UTC()}
	var oldest time.Time
	err := s.Each(func(op *engine.Op) error {
		if op.State == engine.Pending && running[op.ID()] {
			op.State = engine.InFlight
		}
		st.Counts[op.State]++
		rs, ok := st.Rules[op.Rule]
		if !ok {
			rs = RuleStatus{Counts: newCounts()}
		}
		rs.Counts[op.State]++
		if op.State == engine.Pending || op.State == engine.InFlight {
			if op.Origin == engine.OriginBackfill {
				st.BackfillPending++
			}
			if op.Size > 0 {
				st.BytesPending += op.Size
				rs.BytesPending += op.Size
			}
			if t := op.Since(); oldest.IsZero() || t.Before(oldest) {
				oldest = t
			}
		}
		st.Rules[op.Rule] = rs
		if op.State == engine.Failed && len(st.Failed) < maxFailedListed {
			st.Failed = append(st.Failed, FailedItem{Rule: op.Rule, Bucket: op.Bucket, Key: op.Key, VersionID: op.VersionID,
				Reason: op.Reason, Error: op.LastError, Attempts: op.Attempts, Failed: op.Finished})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !oldest.IsZero() {
		o := oldest.UTC()
		st.OldestPending = &o
		st.OldestPendingAge = now.Sub(oldest).Seconds()
	}
	st.Backfill = map[string]Cursor{}
	err = s.db.View(func(tx *bolt.Tx) error {
		st.Uploads = tx.Bucket(bucketUploads).Stats().KeyN
		return tx.Bucket(bucketCursors).ForEach(func(k, v []byte) error {
			var c Cursor
			if err := json.Unmarshal(v, &c); err != nil {
				return err
			}
			st.Backfill[string(k)] = c
			return nil
		})
	})
	return st, err
}
