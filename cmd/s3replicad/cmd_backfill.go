package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/s3replicad/s3replicad/checkpoint"
	"github.com/s3replicad/s3replicad/config"
	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/reconcile"
)

// backfillProgress is a backfill's progress, also served by the daemon.
type backfillProgress struct {
	ID        string    `json:"id"`
	Rules     []string  `json:"rules"`
	Listed    int64     `json:"listed"`    // source versions looked at
	Submitted int64     `json:"submitted"` // operations queued for copying
	Bytes     int64     `json:"bytes"`     // bytes of the queued copies
	Pending   int64     `json:"pending"`   // backfill operations not finished yet
	Listing   bool      `json:"listing"`
	Done      bool      `json:"done"`
	Error     string    `json:"error,omitempty"`
	Started   time.Time `json:"started"`
}

// backfills runs backfill jobs inside a process that holds the state file
// (the daemon, or `backfill` itself when no daemon runs).
type backfills struct {
	r    *replicator
	mu   sync.Mutex
	jobs map[string]*backfillProgress
	wg   sync.WaitGroup
	ctx  context.Context
	once sync.Once
	set  chan struct{}
}

func newBackfills(r *replicator) *backfills {
	return &backfills{r: r, jobs: map[string]*backfillProgress{}, set: make(chan struct{})}
}

// run holds the context jobs run under until it ends, then waits for them.
func (b *backfills) run(ctx context.Context) {
	b.mu.Lock()
	b.ctx = ctx
	b.mu.Unlock()
	b.once.Do(func() { close(b.set) })
	<-ctx.Done()
	b.wg.Wait()
}

func (b *backfills) start(ruleID string) (*backfillProgress, error) {
	rules, err := b.r.cfg.SelectRules(ruleID)
	if err != nil {
		return nil, err
	}
	<-b.set
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, j := range b.jobs {
		if !j.Done {
			return nil, fmt.Errorf("backfill %s is still running", j.ID)
		}
	}
	p := &backfillProgress{ID: strconv.FormatInt(time.Now().UnixNano(), 36), Listing: true, Started: time.Now().UTC()}
	for _, r := range rules {
		p.Rules = append(p.Rules, r.ID)
	}
	b.jobs[p.ID] = p
	ctx := b.ctx
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		err := b.backfill(ctx, p, rules)
		b.mu.Lock()
		defer b.mu.Unlock()
		if err != nil {
			p.Error = err.Error()
		}
		p.Listing, p.Done = false, true
	}()
	return b.snapshot(p), nil
}

func (b *backfills) snapshot(p *backfillProgress) *backfillProgress {
	cp := *p
	return &cp
}

func (b *backfills) progress(id string) (*backfillProgress, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	p, ok := b.jobs[id]
	if !ok {
		return nil, false
	}
	return b.snapshot(p), true
}

func (b *backfills) update(p *backfillProgress, fn func()) {
	b.mu.Lock()
	fn()
	b.mu.Unlock()
}

// backfill lists every rule's source versions from its checkpointed cursor,
// queues what the destination lacks, then waits for the copies.
func (b *backfills) backfill(ctx context.Context, p *backfillProgress, rules []engine.Rule) error {
	r := b.r
	log := r.log.With("component", "backfill")
	run := &reconcile.Backfill{
		Source:      r.source,
		Destination: func(rule engine.Rule) reconcile.Destination { return r.dests[rule.Destination] },
		State:       r.state,
		Queue:       r.engine,
		Pass:        p.ID,
		Progress: func(listed, submitted int, bytes int64) {
			b.update(p, func() { p.Listed += int64(listed); p.Submitted += int64(submitted); p.Bytes += bytes })
		},
	}
	for _, rule := range rules {
		if !rule.Enabled {
			continue
		}
		cur, err := run.Rule(ctx, rule)
		if err != nil {
			return err
		}
		log.Info("backfill listing finished", "rule", rule.ID, "listed", cur.Listed, "submitted", cur.Submitted)
	}
	b.update(p, func() { p.Listing = false })
	// Wait for the copies the backfill queued.
	for {
		st, err := r.state.report(ctx, time.Now())
		if err != nil {
			return err
		}
		b.update(p, func() { p.Pending = st.BackfillPending })
		if st.BackfillPending == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
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
	show := newProgressPrinter(stderr, "backfill")
	d, err := findDaemon(cfg)
	if err != nil {
		return err
	}
	var final *backfillProgress
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
	fmt.Fprintf(stdout, "backfill done: %d versions listed, %d copies queued (%s), all finished\n", final.Listed, final.Submitted, config.HumanBytes(final.Bytes))
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
	var state *checkpoint.Store
	if d, err := findDaemon(cfg); err != nil {
		return err
	} else if d != nil {
		fmt.Fprintln(stderr, "backfill -dry-run: a daemon holds the state file: copies it has queued are counted as to do")
	} else if ok, err := stateFileExists(cfg); err != nil {
		return err
	} else if ok {
		if state, err = openLocal(cfg, true); err != nil {
			return err
		}
		defer state.Close()
	}
	var versions, requests, heads int
	var bytes int64
	for _, rule := range rules {
		if !rule.Enabled {
			continue
		}
		dst := dests[rule.Destination]
		err := reconcile.Walk(ctx, src, dst, rule, "", func(pair reconcile.Pair) error {
			if len(pair.Source) == 0 {
				return nil
			}
			vs, err := reconcile.Selected(ctx, src, rule, pair.Key, pair.Source)
			if err != nil || len(vs) == 0 {
				return err
			}
			known := map[string][]*engine.Op{}
			if state != nil {
				for _, v := range vs {
					if known[v.VersionID], err = state.OpsOf(rule.ID, rule.SourceBucket, pair.Key, v.VersionID); err != nil {
						return err
					}
				}
			}
			have, err := reconcile.Inspect(ctx, dst, rule.DestinationBucket, pair.DestKey, pair.Source, pair.Dest)
			if err != nil {
				return err
			}
			heads += have.Heads
			for _, op := range reconcile.Plan(rule, pair.Key, pair.DestKey, vs, have, known, pair.DestListedAt, "dry-run", time.Now()) {
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
				fmt.Fprintf(stdout, "%-13s %s  version %s  %s (rule %s)\n", what, op.Key, orNull(op.VersionID), config.HumanBytes(max(op.Size, 0)), rule.ID)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("backfill -dry-run rule %s: %w", rule.ID, err)
		}
	}
	fmt.Fprintf(stdout, "would copy %d versions, %s, in about %d requests (the comparison took %d HEAD requests besides the listings)\n",
		versions, config.HumanBytes(bytes), requests, heads)
	return nil
}

func orNull(v string) string {
	if v == "" {
		return "null"
	}
	return v
}

// backfillHere runs the engine in this process, without a queue.
func backfillHere(ctx context.Context, cfg *config.Config, log *slog.Logger, ruleID string, show func(*backfillProgress)) (*backfillProgress, error) {
	r, err := newReplicator(ctx, cfg, log, cfg.EngineRules(), false)
	if err != nil {
		return nil, err
	}
	defer r.state.Close()
	bf := newBackfills(r)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	engineDone := make(chan error, 1)
	go func() { engineDone <- r.engine.Run(runCtx) }()
	go bf.run(runCtx)
	p, err := bf.start(ruleID)
	if err != nil {
		return nil, err
	}
	for {
		cur, _ := bf.progress(p.ID)
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

func backfillInDaemon(ctx context.Context, d *daemon, ruleID string, show func(*backfillProgress)) (*backfillProgress, error) {
	var p backfillProgress
	path := "/backfill"
	if ruleID != "" {
		path += "?rule=" + url.QueryEscape(ruleID)
	}
	if err := d.call(ctx, http.MethodPost, path, nil, &p); err != nil {
		return nil, err
	}
	for {
		var cur backfillProgress
		if err := d.call(ctx, http.MethodGet, "/backfill?id="+url.QueryEscape(p.ID), nil, &cur); err != nil {
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

// newProgressPrinter draws a progress line on a terminal and writes a log
// line every 10 seconds otherwise.
func newProgressPrinter(w io.Writer, label string) func(*backfillProgress) {
	tty := false
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	var last time.Time
	return func(p *backfillProgress) {
		elapsed := time.Since(p.Started).Seconds()
		rate := float64(p.Listed) / max(elapsed, 0.001)
		copied := p.Submitted - p.Pending
		if p.Listing {
			copied = 0
		}
		line := fmt.Sprintf("%s: %d versions listed (%.0f/s), %d copies queued (%s), %d finished", label,
			p.Listed, rate, p.Submitted, config.HumanBytes(p.Bytes), max(copied, 0))
		if !p.Listing && p.Pending > 0 {
			line += fmt.Sprintf(", %d to go", p.Pending)
		}
		switch {
		case tty:
			fmt.Fprintf(w, "\r\033[K%s", line)
			if p.Done {
				fmt.Fprintln(w)
			}
		case p.Done || time.Since(last) >= 10*time.Second:
			last = time.Now()
			fmt.Fprintln(w, line)
		}
	}
}
