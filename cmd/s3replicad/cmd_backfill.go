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
	"github.com/s3replicad/s3replicad/engine"
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
	for _, rule := range rules {
		if !rule.Enabled {
			continue
		}
		cur, err := r.state.LoadCursor(rule.ID)
		if err != nil {
			return err
		}
		if cur.Done {
			cur = checkpoint.Cursor{} // a new pass; it copies nothing that is already there
		}
		var batch []*engine.Op
		flush := func(lastKey string) error {
			if len(batch) > 0 {
				if _, err := r.engine.Submit(ctx, batch); err != nil {
					return err
				}
				batch = batch[:0]
			}
			cur.KeyMarker, cur.Updated = lastKey, time.Now().UTC()
			return r.state.SaveCursor(rule.ID, cur)
		}
		keys := 0
		err = eachKey(ctx, r.source, rule.SourceBucket, rule.Prefix, cur.KeyMarker, func(key string, vs []engine.Version) error {
			ops, err := b.plan(ctx, rule, key, vs, p.ID)
			if err != nil {
				return fmt.Errorf("backfill %s: %w", key, err)
			}
			batch = append(batch, ops...)
			var bytes int64
			for _, op := range ops {
				bytes += max(op.Size, 0)
			}
			cur.Listed += int64(len(vs))
			cur.Submitted += int64(len(ops))
			b.update(p, func() { p.Listed += int64(len(vs)); p.Submitted += int64(len(ops)); p.Bytes += bytes })
			keys++
			if len(batch) >= 500 || keys%200 == 0 {
				return flush(key)
			}
			cur.KeyMarker = key
			return nil
		})
		if err != nil {
			return err
		}
		cur.Done = true
		if err := flush(cur.KeyMarker); err != nil {
			return err
		}
		log.Info("backfill listing finished", "rule", rule.ID, "listed", cur.Listed, "submitted", cur.Submitted)
	}
	b.update(p, func() { p.Listing = false })
	// Wait for the copies the backfill queued.
	for {
		st, err := r.state.Status(time.Now())
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

// plan decides the ops for one key: the selected source versions the
// destination lacks, oldest first, then, if the destination's current
// version would not be the source's current one, a fresh copy of it.
func (b *backfills) plan(ctx context.Context, rule engine.Rule, key string, all []engine.Version, pass string) ([]*engine.Op, error) {
	r := b.r
	vs, err := selected(ctx, r.source, rule, rule.SourceBucket, key, all)
	if err != nil || len(vs) == 0 {
		return nil, err
	}
	// The state file is read before the destination is looked at: a copy
	// that finishes in between is then seen as on the destination rather
	// than as lost from it, and is not written a second time.
	known := make(map[string][]*engine.Op, len(vs))
	for _, v := range vs {
		prev, err := r.state.OpsOf(rule.ID, rule.SourceBucket, key, v.VersionID)
		if err != nil {
			return nil, err
		}
		known[v.VersionID] = prev
	}
	destKey := rule.DestinationPrefix + key
	have, err := inspect(ctx, r.dests[rule.Destination], rule.DestinationBucket, destKey)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	mk := func(v engine.Version, a engine.Action) *engine.Op {
		op := &engine.Op{
			Rule: rule.ID, Bucket: rule.SourceBucket, Key: key, VersionID: v.VersionID, ETag: v.ETag, Size: v.Size,
			Action: a, Origin: engine.OriginBackfill, Dest: rule.Destination, DestBucket: rule.DestinationBucket,
			DestKey: destKey, Recorded: now, State: engine.Pending,
		}
		if a == engine.ActionDeleteMarker {
			op.Size = 0
		}
		for _, prev := range known[v.VersionID] {
			if !prev.State.Terminal() || prev.State == engine.Failed {
				return nil // already queued, or failed and waiting for `retry`
			}
			op.Pass = "backfill-" + pass // copied before, since lost on the destination
		}
		return op
	}
	var ops []*engine.Op
	lastWritten := ""
	for i := len(vs) - 1; i >= 0; i-- { // oldest first
		v := vs[i]
		if v.DeleteMarker {
			continue
		}
		if _, ok := have.bySource[v.VersionID]; ok {
			continue
		}
		if op := mk(v, engine.ActionCopy); op != nil {
			ops = append(ops, op)
			lastWritten = v.VersionID
		}
	}
	latest := vs[0]
	switch {
	case latest.DeleteMarker && rule.ReplicateDeleteMarkers && len(rule.Tags) == 0:
		if have.current == nil || !have.current.DeleteMarker || lastWritten != "" {
			if op := mk(latest, engine.ActionDeleteMarker); op != nil {
				ops = append(ops, op)
			}
		}
	case !latest.DeleteMarker && latest.IsLatest:
		currentOK := lastWritten == latest.VersionID ||
			(lastWritten == "" && have.current != nil && have.current.source == latest.VersionID)
		if !currentOK {
			if op := mk(latest, engine.ActionCopy); op != nil {
				if op.Pass == "" {
					op.Pass = "current-" + pass
				}
				ops = append(ops, op)
			}
		}
	}
	return ops, nil
}

func cmdBackfill(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cfgFlag := flags("backfill", stderr)
	ruleID := fs.String("rule", "", "backfill only this rule (default: every rule)")
	// A running daemon does the work with its own configuration and
	// secrets: finding it needs only state_dir.
	cfg, err := loadStateFor(fs, cfgFlag, args)
	if err != nil {
		return err
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
	fmt.Fprintf(stdout, "backfill done: %d versions listed, %d copies queued (%s), all finished\n", final.Listed, final.Submitted, humanBytes(final.Bytes))
	return nil
}

// backfillHere runs the engine in this process, without a queue.
func backfillHere(ctx context.Context, cfg *Config, log *slog.Logger, ruleID string, show func(*backfillProgress)) (*backfillProgress, error) {
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
			p.Listed, rate, p.Submitted, humanBytes(p.Bytes), max(copied, 0))
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
