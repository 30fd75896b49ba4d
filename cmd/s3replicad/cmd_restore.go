package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/s3replicad/s3replicad/checkpoint"
	"github.com/s3replicad/s3replicad/config"
	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/engine/s3store"
	"github.com/s3replicad/s3replicad/internal/retry"
	"github.com/s3replicad/s3replicad/metrics"
	"github.com/s3replicad/s3replicad/reconcile"
)

// setupRetry waits about a minute for a restore target that does not
// answer.
var setupRetry = retry.Policy{Min: time.Second, Max: 10 * time.Second, Attempts: 10}

// restoreJob is what a restore keeps beside its state file, so that a run
// after an interruption continues the same restore and the final summary
// covers every run of it.
type restoreJob struct {
	Rule     string         `json:"rule"`
	AsOf     time.Time      `json:"as_of"` // pinned at the first run when none was given
	Latest   bool           `json:"latest"`
	Bucket   string         `json:"bucket"`
	Endpoint string         `json:"endpoint"`
	Prefix   string         `json:"prefix"`
	Created  bool           `json:"created_bucket"`
	Keys     int64          `json:"keys"`
	Bytes    int64          `json:"bytes"`
	Skipped  map[string]int `json:"skipped"`
	Started  time.Time      `json:"started"`
}

func (j *restoreJob) save(dir string) error {
	raw, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "job.json.tmp")
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "job.json"))
}

// parseAsOf reads -as-of: RFC 3339 (with or without fractions), or a date
// and time in UTC.
func parseAsOf(v string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t, nil
		}
	}
	return time.Time{}, &usageError{fmt.Sprintf("-as-of %q: use RFC 3339 (2026-12-01T09:30:00Z, 2026-12-01T10:30:00+01:00) or a UTC date and time (2026-12-01 09:30:00)", v)}
}

// cmdRestore writes, for every key of a rule, the replica version that was
// the source's current version at -as-of into a bucket (contract 17).
func cmdRestore(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	flagSet, cfgFlag := flags("restore", stderr)
	ruleID := flagSet.String("rule", "", "the rule whose replica is restored (required when there are several)")
	asOfFlag := flagSet.String("as-of", "", "restore what the source held at this time (RFC 3339; default: now)")
	bucket := flagSet.String("to-bucket", "", "the bucket written to (created, with versioning, when missing)")
	endpoint := flagSet.String("to-endpoint", "source", "where that bucket is: source or destination")
	prefix := flagSet.String("prefix", "", "restore only the source keys starting with this")
	dryRun := flagSet.Bool("dry-run", false, "print what would be written and the requests it would take; write nothing")
	intoExisting := flagSet.Bool("into-existing", false, "restore into a bucket that already holds objects")
	cfg, log, err := loadFor(flagSet, cfgFlag, args, stderr)
	if err != nil {
		return err
	}
	if *bucket == "" {
		return &usageError{"restore needs -to-bucket NAME"}
	}
	if *endpoint != "source" && *endpoint != "destination" {
		return &usageError{fmt.Sprintf("-to-endpoint %q: use source or destination", *endpoint)}
	}
	rule, err := cfg.RuleFor(*ruleID)
	if err != nil {
		return err
	}
	job := &restoreJob{Rule: rule.ID, Bucket: *bucket, Endpoint: *endpoint, Prefix: *prefix, Latest: *asOfFlag == "",
		AsOf: time.Now().UTC(), Skipped: map[string]int{}, Started: time.Now().UTC()}
	if !job.Latest {
		if job.AsOf, err = parseAsOf(*asOfFlag); err != nil {
			return err
		}
	}
	conns := cfg.Transfer.Workers*cfg.Transfer.PartConcurrency + 16
	dest := cfg.Destination(rule.Destination)
	replica, err := s3store.New(ctx, dest.StoreConfig(conns, cfg.Transfer.StallTimeout.D()))
	if err != nil {
		return fmt.Errorf("destination %s: %w", dest.Name, err)
	}
	targetCfg, bw := cfg.Source, int64(0)
	if *endpoint == "destination" {
		targetCfg, bw = dest.EndpointConfig, int64(dest.BandwidthLimit)
	}
	tc := targetCfg.StoreConfig(conns, cfg.Transfer.StallTimeout.D())
	tc.Logger = log.With("component", "restore-target")
	target, err := s3store.New(ctx, tc)
	if err != nil {
		return fmt.Errorf("restore target: %w", err)
	}
	if *dryRun {
		return restoreDryRun(ctx, cfg, rule, replica, job, config.SameEndpoint(targetCfg, dest.EndpointConfig), stdout, stderr)
	}

	// One state directory per restore: the same command again continues it.
	id := sha256.Sum256([]byte(strings.Join([]string{rule.ID, *asOfFlag, *bucket, *endpoint, *prefix}, "\x00")))
	dir := filepath.Join(cfg.StateDir, "restore", hex.EncodeToString(id[:8]))
	continuing := false
	if raw, err := os.ReadFile(filepath.Join(dir, "job.json")); err == nil {
		var prev restoreJob
		if err := json.Unmarshal(raw, &prev); err != nil {
			return fmt.Errorf("restore state %s: %w", dir, err)
		}
		job, continuing = &prev, true
		if job.Skipped == nil {
			job.Skipped = map[string]int{}
		}
		fmt.Fprintf(stderr, "restore: continuing the restore begun %s (state in %s)\n", job.Started.Format(time.RFC3339), dir)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("restore state %s: %w", dir, err)
	}
	if !continuing {
		// A target that is down for a moment is waited for, with a line
		// saying so; one that refuses (credentials, a bad name) is not.
		retrying := func(attempt int, err error, wait time.Duration) {
			log.Warn("the restore target does not answer; trying again", "bucket", *bucket, "attempt", attempt, "next_in", wait.Round(time.Millisecond), "err", err)
		}
		var created, empty bool
		err := setupRetry.Do(ctx, func(int) error {
			var err error
			created, err = target.EnsureBucket(ctx, *bucket)
			return err
		}, reconcile.Permanent, retrying)
		if err != nil {
			return fmt.Errorf("restore target bucket %s: %w", *bucket, err)
		}
		job.Created = created
		if !created && !*intoExisting {
			err := setupRetry.Do(ctx, func(int) error {
				var err error
				empty, err = target.Empty(ctx, *bucket)
				return err
			}, reconcile.Permanent, retrying)
			if err != nil {
				return fmt.Errorf("restore target bucket %s: %w", *bucket, err)
			}
			if !empty {
				return &usageError{fmt.Sprintf("bucket %s is not empty: restoring into it would mix with what it holds; give -into-existing to do it anyway (nothing is ever deleted)", *bucket)}
			}
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("restore state: %w", err)
		}
		if err := job.save(dir); err != nil {
			return fmt.Errorf("restore state: %w", err)
		}
	}
	state, err := checkpoint.Open(dir, checkpoint.Options{Timeout: time.Second})
	if errors.Is(err, checkpoint.ErrLocked) {
		return fmt.Errorf("%w: is the same restore running already?", err)
	}
	if err != nil {
		return err
	}
	defer state.Close()

	target1 := reconcile.RestoreRule(rule, *bucket, "")
	e, err := engine.New(engine.Config{
		Rules: []engine.Rule{target1}, Source: replica, Destinations: map[string]engine.Destination{"target": target},
		State: state, Workers: cfg.Transfer.Workers, PartSize: int64(cfg.Transfer.PartSize),
		PartConcurrency: cfg.Transfer.PartConcurrency, MultipartThreshold: int64(cfg.Transfer.MultipartThreshold),
		BufferMemory:   int64(cfg.Transfer.BufferMemory),
		ServerSideCopy: map[string]bool{"target": config.SameEndpoint(targetCfg, dest.EndpointConfig)},
		BandwidthLimit: map[string]int64{"target": bw}, StatePath: state.Path(),
		Registerer: metrics.NewRegistry(), Logger: log.With("component", "restore"),
	})
	if err != nil {
		return err
	}
	var mu sync.Mutex
	listed, submitted := int64(0), int64(0)
	walker := &reconcile.Restore{
		Replica: replica, Rule: rule, Prefix: *prefix, AsOf: job.AsOf, Latest: job.Latest, Target: target1,
		State: jobCursor{state, job, dir, &mu}, Queue: e,
		Each: func(c reconcile.Choice, _ int) {
			mu.Lock()
			defer mu.Unlock()
			listed++
			if c.Skip != "" {
				job.Skipped[c.Skip]++
				return
			}
			submitted++
			job.Keys++
			job.Bytes += c.Version.Size
		},
	}
	show := newProgressPrinter(stderr, "restore")
	p := &backfillProgress{Started: time.Now(), Listing: true}
	final, err := reconcile.RunRestore(ctx, e, walker, func(ctx context.Context) (map[engine.State]int64, error) {
		st, err := state.Status(time.Now())
		if err != nil {
			return nil, err
		}
		return st.Counts, nil
	}, func(listing bool, c map[engine.State]int64) {
		mu.Lock()
		p.Listed, p.Submitted, p.Bytes, p.Listing = listed, submitted, job.Bytes, listing
		mu.Unlock()
		p.Pending = c[engine.Pending] + c[engine.InFlight]
		show(p)
	})
	p.Done, p.Listing = true, false
	show(p)
	mu.Lock()
	saveErr := job.save(dir)
	mu.Unlock()
	if err != nil {
		return fmt.Errorf("restore interrupted; run the same command again to continue: %w", err)
	}
	if saveErr != nil {
		return fmt.Errorf("restore state: %w", saveErr)
	}
	printRestoreSummary(stdout, job, final)
	if final[engine.Failed] > 0 {
		return errSilent{exitFailure}
	}
	return nil
}

// jobCursor keeps the walk's cursor in the restore's state file and its
// counts in job.json, together.
type jobCursor struct {
	*checkpoint.Store
	job *restoreJob
	dir string
	mu  *sync.Mutex
}

func (j jobCursor) SaveCursor(id string, c engine.Cursor) error {
	if err := j.Store.SaveCursor(id, c); err != nil {
		return err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.job.save(j.dir)
}

func printRestoreSummary(w io.Writer, job *restoreJob, counts map[engine.State]int64) {
	when := "as of " + job.AsOf.Format(time.RFC3339Nano)
	if job.Latest {
		when = "as of now (each key's current version)"
	}
	fmt.Fprintf(w, "restore of rule %s %s into %s (%s endpoint): %d keys, %d versions, %s written",
		job.Rule, when, job.Bucket, job.Endpoint, counts[engine.Completed], counts[engine.Completed], config.HumanBytes(job.Bytes))
	if job.Created {
		fmt.Fprintf(w, "; bucket created with versioning")
	}
	fmt.Fprintln(w)
	reasons := make([]string, 0, len(job.Skipped))
	for r := range job.Skipped {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		fmt.Fprintf(w, "  skipped %d keys: %s\n", job.Skipped[r], r)
	}
	if n := counts[engine.Skipped]; n > 0 {
		fmt.Fprintf(w, "  skipped %d keys: the replica version was deleted from the destination meanwhile\n", n)
	}
	if n := counts[engine.Failed]; n > 0 {
		fmt.Fprintf(w, "  FAILED %d keys: see the log; run the same command again once the cause is fixed\n", n)
	}
}

// restoreDryRun prints, per key, what a restore would write, then the
// totals and the requests it would make. It writes nothing.
func restoreDryRun(ctx context.Context, cfg *config.Config, rule engine.Rule, replica *s3store.Store, job *restoreJob, inStore bool, stdout, stderr io.Writer) error {
	var keys, heads, requests int
	var bytes int64
	walker := &reconcile.Restore{Replica: replica, Rule: rule, Prefix: job.Prefix, AsOf: job.AsOf, Latest: job.Latest,
		Target: reconcile.RestoreRule(rule, job.Bucket, ""),
		Each: func(c reconcile.Choice, h int) {
			heads += h
			if c.Skip != "" {
				job.Skipped[c.Skip]++
				return
			}
			keys++
			bytes += c.Version.Size
			op := &engine.Op{Size: c.Version.Size, Action: engine.ActionCopy}
			n := reconcile.Requests(op, int64(cfg.Transfer.PartSize), int64(cfg.Transfer.MultipartThreshold))
			if inStore && n == 2 {
				n = 1 // one CopyObject
			}
			requests += n
			fmt.Fprintf(stdout, "restore  %s  from replica version %s (source time %s)  %s\n", c.Key, c.Version.VersionID,
				c.SourceTime.UTC().Format(time.RFC3339Nano), config.HumanBytes(c.Version.Size))
		}}
	cur, err := walker.Run(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "would restore %d keys (%d versions, %s) into %s on the %s endpoint, in about %d requests (plus %d HEAD requests and the listing of %d replica versions already made)\n",
		keys, keys, config.HumanBytes(bytes), job.Bucket, job.Endpoint, requests, heads, cur.Listed)
	reasons := make([]string, 0, len(job.Skipped))
	for r := range job.Skipped {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		fmt.Fprintf(stdout, "  would skip %d keys: %s\n", job.Skipped[r], r)
	}
	_ = stderr
	return nil
}
