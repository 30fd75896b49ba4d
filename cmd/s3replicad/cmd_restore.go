package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/s3replicad/s3replicad/checkpoint"
	"github.com/s3replicad/s3replicad/config"
	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/internal/units"
	"github.com/s3replicad/s3replicad/reconcile"
	"github.com/s3replicad/s3replicad/s3store"
	"github.com/s3replicad/s3replicad/serve"
)

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
	job := &reconcile.RestoreJob{Rule: rule.ID, Bucket: *bucket, Endpoint: *endpoint, Prefix: *prefix, Latest: *asOfFlag == "",
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
		return restoreDryRun(ctx, cfg, rule, replica, job, config.SameEndpoint(targetCfg, dest.EndpointConfig), stdout)
	}

	// One state directory per restore: the same command again continues it.
	job, continuing, err := reconcile.OpenRestoreJob(cfg.StateDir, job, *asOfFlag)
	if err != nil {
		return err
	}
	if continuing {
		fmt.Fprintf(stderr, "restore: continuing the restore begun %s (state in %s)\n", job.Started.Format(time.RFC3339), job.Dir)
	} else {
		if job.Created, err = reconcile.PrepareTarget(ctx, target, *bucket, *intoExisting, log); errors.Is(err, reconcile.ErrTargetNotEmpty) {
			return &usageError{fmt.Sprintf("bucket %s: %v", *bucket, err)}
		} else if err != nil {
			return fmt.Errorf("restore target bucket %s: %w", *bucket, err)
		}
		if err := job.Save(); err != nil {
			return fmt.Errorf("restore state: %w", err)
		}
	}
	dir := job.Dir
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
		Registerer: serve.NewRegistry(), Logger: log.With("component", "restore"),
	})
	if err != nil {
		return err
	}
	var listed int64
	walker := &reconcile.Restore{
		Replica: replica, Rule: rule, Prefix: *prefix, AsOf: job.AsOf, Latest: job.Latest, Target: target1,
		State: reconcile.JobCursor{State: state, Job: job}, Queue: e,
		Each: func(c reconcile.Choice, _ int) { atomic.AddInt64(&listed, 1); job.Count(c) },
	}
	show := reconcile.NewProgressPrinter(stderr, "restore")
	p := &reconcile.Progress{Started: time.Now(), Listing: true}
	final, err := reconcile.RunRestore(ctx, e, walker, func(ctx context.Context) (map[engine.State]int64, error) {
		st, err := state.Status(time.Now())
		if err != nil {
			return nil, err
		}
		return st.Counts, nil
	}, func(listing bool, c map[engine.State]int64) {
		p.Listed, p.Listing = atomic.LoadInt64(&listed), listing
		p.Submitted, p.Bytes = job.Totals()
		p.Pending = c[engine.Pending] + c[engine.InFlight]
		show(p)
	})
	p.Done, p.Listing = true, false
	show(p)
	saveErr := job.Save()
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

func printRestoreSummary(w io.Writer, job *reconcile.RestoreJob, counts map[engine.State]int64) {
	when := "as of " + job.AsOf.Format(time.RFC3339Nano)
	if job.Latest {
		when = "as of now (each key's current version)"
	}
	fmt.Fprintf(w, "restore of rule %s %s into %s (%s endpoint): %d keys, %d versions, %s written",
		job.Rule, when, job.Bucket, job.Endpoint, counts[engine.Completed], counts[engine.Completed], units.Bytes(job.Bytes))
	if job.Created {
		fmt.Fprintf(w, "; bucket created with versioning")
	}
	fmt.Fprintln(w)
	for _, r := range slices.Sorted(maps.Keys(job.Skipped)) {
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
func restoreDryRun(ctx context.Context, cfg *config.Config, rule engine.Rule, replica *s3store.Store, job *reconcile.RestoreJob, inStore bool, stdout io.Writer) error {
	walker := &reconcile.Restore{Replica: replica, Rule: rule, Prefix: job.Prefix, AsOf: job.AsOf, Latest: job.Latest,
		Target: reconcile.RestoreRule(rule, job.Bucket, "")}
	est, err := reconcile.EstimateRestore(ctx, walker, int64(cfg.Transfer.PartSize), int64(cfg.Transfer.MultipartThreshold), inStore,
		func(c reconcile.Choice) {
			fmt.Fprintf(stdout, "restore  %s  from replica version %s (source time %s)  %s\n", c.Key, c.Version.VersionID,
				c.SourceTime.UTC().Format(time.RFC3339Nano), units.Bytes(c.Version.Size))
		})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "would restore %d keys (%d versions, %s) into %s on the %s endpoint, in about %d requests (plus %d HEAD requests and the listing of %d replica versions already made)\n",
		est.Keys, est.Keys, units.Bytes(est.Bytes), job.Bucket, job.Endpoint, est.Requests, est.Heads, est.Listed)
	for _, r := range slices.Sorted(maps.Keys(est.Skipped)) {
		fmt.Fprintf(stdout, "  would skip %d keys: %s\n", est.Skipped[r], r)
	}
	return nil
}
