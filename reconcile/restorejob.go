package reconcile

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/internal/retry"
)

// RestoreJob is one restore: what it restores, and what it did so far. It
// is kept, with the restore's state file, in a directory of its own named
// after what was asked, so that the same command run again continues it,
// and the summary at its end covers every run of it.
type RestoreJob struct {
	Rule     string    `json:"rule"`
	AsOf     time.Time `json:"as_of"` // pinned at the first run when none was given
	Latest   bool      `json:"latest"`
	Bucket   string    `json:"bucket"`
	Endpoint string    `json:"endpoint"`
	Prefix   string    `json:"prefix"`
	Created  bool      `json:"created_bucket"`
	// Keys, Bytes and Skipped count what the walk chose; Skipped by
	// reason.
	Keys    int64          `json:"keys"`
	Bytes   int64          `json:"bytes"`
	Skipped map[string]int `json:"skipped"`
	Started time.Time      `json:"started"`

	// Dir is the job's directory (its state file and job.json).
	Dir string `json:"-"`
	mu  sync.Mutex
}

// OpenRestoreJob returns the restore asked (its identity: rule, -as-of as
// given, bucket, endpoint, prefix) under stateDir: the one begun before,
// with continuing set, or a new one (not saved yet).
func OpenRestoreJob(stateDir string, fresh *RestoreJob, asOfGiven string) (*RestoreJob, bool, error) {
	id := sha256.Sum256([]byte(strings.Join([]string{fresh.Rule, asOfGiven, fresh.Bucket, fresh.Endpoint, fresh.Prefix}, "\x00")))
	dir := filepath.Join(stateDir, "restore", hex.EncodeToString(id[:8]))
	raw, err := os.ReadFile(filepath.Join(dir, "job.json"))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		fresh.Dir = dir
		if fresh.Skipped == nil {
			fresh.Skipped = map[string]int{}
		}
		return fresh, false, nil
	case err != nil:
		return nil, false, fmt.Errorf("restore state %s: %w", dir, err)
	}
	j := &RestoreJob{}
	if err := json.Unmarshal(raw, j); err != nil {
		return nil, false, fmt.Errorf("restore state %s: %w", dir, err)
	}
	j.Dir = dir
	if j.Skipped == nil {
		j.Skipped = map[string]int{}
	}
	return j, true, nil
}

// Save writes job.json (atomically), creating the job's directory.
func (j *RestoreJob) Save() error {
	j.mu.Lock()
	raw, err := json.MarshalIndent(j, "", "  ")
	j.mu.Unlock()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(j.Dir, 0o700); err != nil {
		return err
	}
	tmp := filepath.Join(j.Dir, "job.json.tmp")
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(j.Dir, "job.json"))
}

// Count notes a key the walk chose (Restore.Each).
func (j *RestoreJob) Count(c Choice) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if c.Skip != "" {
		j.Skipped[c.Skip]++
		return
	}
	j.Keys++
	j.Bytes += c.Version.Size
}

// Totals returns what the walk chose so far.
func (j *RestoreJob) Totals() (keys, bytes int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.Keys, j.Bytes
}

// JobCursor keeps a restore's cursor in its state file and its counts in
// job.json, together: what the walk counted is what it submitted.
type JobCursor struct {
	State CursorState
	Job   *RestoreJob
}

// LoadCursor implements CursorState.
func (c JobCursor) LoadCursor(id string) (engine.Cursor, error) { return c.State.LoadCursor(id) }

// SaveCursor implements CursorState.
func (c JobCursor) SaveCursor(id string, cur engine.Cursor) error {
	if err := c.State.SaveCursor(id, cur); err != nil {
		return err
	}
	return c.Job.Save()
}

// TargetBucket is the bucket a restore writes to.
type TargetBucket interface {
	EnsureBucket(ctx context.Context, bucket string) (bool, error)
	Empty(ctx context.Context, bucket string) (bool, error)
}

// ErrTargetNotEmpty refuses a restore into a bucket that holds objects.
var ErrTargetNotEmpty = errors.New("the bucket is not empty: restoring into it would mix with what it holds; give -into-existing to do it anyway (nothing is ever deleted)")

// setupRetry waits about a minute for a restore target that does not
// answer.
var setupRetry = retry.Policy{Min: time.Second, Max: 10 * time.Second, Attempts: 10}

// PrepareTarget creates the bucket, with versioning, when it does not
// exist, and otherwise requires it empty unless intoExisting; a target
// that does not answer is waited for a while (with a log line), one that
// refuses is not. It reports whether it created the bucket.
func PrepareTarget(ctx context.Context, t TargetBucket, bucket string, intoExisting bool, log *slog.Logger) (bool, error) {
	retrying := func(attempt int, err error, wait time.Duration) {
		log.Warn("the restore target does not answer; trying again", "bucket", bucket, "attempt", attempt, "next_in", wait.Round(time.Millisecond), "err", err)
	}
	var created, empty bool
	err := setupRetry.Do(ctx, func(int) error {
		var err error
		created, err = t.EnsureBucket(ctx, bucket)
		return err
	}, Permanent, retrying)
	if err != nil || created || intoExisting {
		return created, err
	}
	err = setupRetry.Do(ctx, func(int) error {
		var err error
		empty, err = t.Empty(ctx, bucket)
		return err
	}, Permanent, retrying)
	if err != nil {
		return false, err
	}
	if !empty {
		return false, ErrTargetNotEmpty
	}
	return false, nil
}
