package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/s3replicad/s3replicad/admin"
	"github.com/s3replicad/s3replicad/config"
	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/internal/units"
	"github.com/s3replicad/s3replicad/reconcile"
)

// newJobs builds the backfill runner of a process that holds the state.
func newJobs(r *replicator) *reconcile.Jobs {
	return &reconcile.Jobs{
		Source:      r.source,
		Destination: func(rule engine.Rule) reconcile.Destination { return r.dests[rule.Destination] },
		State:       r.state, Queue: r.engine, Log: r.log.With("component", "backfill"),
		Pending: func(ctx context.Context) (int64, error) {
			st, err := r.state.report(ctx, time.Now())
			if err != nil {
				return 0, err
			}
			return st.BackfillPending, nil
		},
	}
}

func cmdBackfill(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cfgFlag := flags("backfill", stderr)
	ruleID := fs.String("rule", "", "backfill only this rule (default: every rule)")
	dryRun := fs.Bool("dry-run", false, "print what would be copied (versions, bytes, requests) and copy nothing")
	// A running daemon does the work with its own configuration and
	// secrets: finding it needs only state_dir.
	cfg, err := loadStateFor(fs, cfgFlag, args)
	if err != nil {
		return err
	}
	if *dryRun {
		full, _, err := loadFor(flag.NewFlagSet("", flag.ContinueOnError), cfgFlag, nil, stderr)
		if err != nil {
			return err
		}
		return backfillDryRun(ctx, full, *ruleID, stdout, stderr)
	}
	if _, err := cfg.SelectRules(*ruleID); err != nil {
		return err
	}
	show := reconcile.NewProgressPrinter(stderr, "backfill")
	d, err := findDaemon(cfg)
	if err != nil {
		return err
	}
	var final *reconcile.Progress
	if d == nil {
		var log *slog.Logger
		if cfg, log, err = loadFor(flag.NewFlagSet("", flag.ContinueOnError), cfgFlag, nil, stderr); err != nil {
			return err
		}
		final, err = backfillHere(ctx, cfg, log, *ruleID, show)
	} else {
		fmt.Fprintln(stderr, "backfill: a daemon is running: the backfill runs inside it")
		final, err = backfillInDaemon(ctx, d, *ruleID, show)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "backfill done: %d versions listed, %d copies queued (%s), all finished\n", final.Listed, final.Submitted, units.Bytes(final.Bytes))
	return nil
}

// backfillDryRun walks what a backfill would walk and prints the copies it
// would queue, one per line, then their number, bytes and the requests
// they would take. It writes nothing. What the state file knows (copies
// already queued) is taken into account when no daemon holds it.
func backfillDryRun(ctx context.Context, cfg *config.Config, ruleID string, stdout, stderr io.Writer) error {
	rules, err := cfg.SelectRules(ruleID)
	if err != nil {
		return err
	}
	src, dests, err := stores(ctx, cfg, warnLogger(stderr))
	if err != nil {
		return err
	}
	var state reconcile.State
	if d, err := findDaemon(cfg); err != nil {
		return err
	} else if d != nil {
		fmt.Fprintln(stderr, "backfill -dry-run: a daemon holds the state file: copies it has queued are counted as to do")
	} else if ok, err := stateFileExists(cfg); err != nil {
		return err
	} else if ok {
		st, err := openLocal(cfg, true)
		if err != nil {
			return err
		}
		defer st.Close()
		state = st
	}
	var versions, requests int
	var bytes int64
	heads, err := reconcile.DryRun(ctx, src, func(r engine.Rule) reconcile.Destination { return dests[r.Destination] }, state, rules, func(p reconcile.Planned) {
		op := p.Op
		versions++
		bytes += max(op.Size, 0)
		requests += reconcile.Requests(op, int64(cfg.Transfer.PartSize), int64(cfg.Transfer.MultipartThreshold))
		what := "copy"
		switch {
		case op.Action == engine.ActionDeleteMarker:
			what = "delete-marker"
		case op.Pass != "":
			what = "copy-again"
		}
		fmt.Fprintf(stdout, "%-13s %s  version %s  %s (rule %s)\n", what, op.Key, orNull(op.VersionID), units.Bytes(max(op.Size, 0)), p.Rule.ID)
	})
	if err != nil {
		return fmt.Errorf("backfill -dry-run: %w", err)
	}
	fmt.Fprintf(stdout, "would copy %d versions, %s, in about %d requests (the comparison took %d HEAD requests besides the listings)\n",
		versions, units.Bytes(bytes), requests, heads)
	return nil
}

func orNull(v string) string {
	if v == "" {
		return "null"
	}
	return v
}

// backfillHere runs the engine in this process, without a queue.
func backfillHere(ctx context.Context, cfg *config.Config, log *slog.Logger, ruleID string, show func(*reconcile.Progress)) (*reconcile.Progress, error) {
	rules, err := cfg.SelectRules(ruleID)
	if err != nil {
		return nil, err
	}
	r, err := newReplicator(ctx, cfg, log, cfg.EngineRules(), false)
	if err != nil {
		return nil, err
	}
	defer r.state.Close()
	jobs := newJobs(r)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	engineDone := make(chan error, 1)
	go func() { engineDone <- r.engine.Run(runCtx) }()
	go jobs.Run(runCtx)
	p, err := jobs.Start(rules)
	if err != nil {
		return nil, err
	}
	for {
		cur, _ := jobs.Progress(p.ID)
		show(cur)
		if cur.Done {
			cancel()
			<-engineDone
			if cur.Error != "" {
				return cur, errors.New(cur.Error)
			}
			return cur, nil
		}
		select {
		case <-ctx.Done():
			cancel()
			<-engineDone
			return cur, fmt.Errorf("backfill interrupted; run it again to resume: %w", ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func backfillInDaemon(ctx context.Context, d *admin.Client, ruleID string, show func(*reconcile.Progress)) (*reconcile.Progress, error) {
	var p reconcile.Progress
	if err := d.StartBackfill(ctx, ruleID, &p); err != nil {
		return nil, err
	}
	for {
		var cur reconcile.Progress
		if err := d.Backfill(ctx, p.ID, &cur); err != nil {
			return nil, err
		}
		show(&cur)
		if cur.Done {
			if cur.Error != "" {
				return &cur, errors.New(cur.Error)
			}
			return &cur, nil
		}
		select {
		case <-ctx.Done():
			return &cur, fmt.Errorf("stopped waiting; the backfill goes on inside the daemon: %w", ctx.Err())
		case <-time.After(time.Second):
		}
	}
}
