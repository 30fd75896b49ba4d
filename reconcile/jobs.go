package reconcile

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/internal/units"
)

// Progress is a backfill's (or a verify's, a restore's) progress; the
// daemon serves it over its admin socket, so its fields are JSON.
type Progress struct {
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

// BackfillPending reads how many backfill operations are unfinished.
type BackfillPending func(ctx context.Context) (int64, error)

// Jobs runs backfills inside the process that holds the state (the daemon,
// or `backfill` itself when no daemon runs), one at a time, and keeps
// their progress for whoever asks.
type Jobs struct {
	Source      Source
	Destination func(rule engine.Rule) Destination
	State       State
	Queue       Submitter
	Pending     BackfillPending
	Log         *slog.Logger

	mu   sync.Mutex
	jobs map[string]*Progress
	wg   sync.WaitGroup
	ctx  context.Context
	once sync.Once
	set  chan struct{}
}

func (j *Jobs) init() {
	j.once.Do(func() {
		j.jobs = map[string]*Progress{}
		j.set = make(chan struct{})
	})
}

// Run holds the context jobs run under until it ends, then waits for them.
func (j *Jobs) Run(ctx context.Context) {
	j.init()
	j.mu.Lock()
	j.ctx = ctx
	j.mu.Unlock()
	close(j.set)
	<-ctx.Done()
	j.wg.Wait()
}

// Start begins a backfill of rules and returns its progress.
func (j *Jobs) Start(rules []engine.Rule) (*Progress, error) {
	j.init()
	<-j.set
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, p := range j.jobs {
		if !p.Done {
			return nil, fmt.Errorf("backfill %s is still running", p.ID)
		}
	}
	p := &Progress{ID: strconv.FormatInt(time.Now().UnixNano(), 36), Listing: true, Started: time.Now().UTC()}
	for _, r := range rules {
		p.Rules = append(p.Rules, r.ID)
	}
	j.jobs[p.ID] = p
	ctx := j.ctx
	j.wg.Add(1)
	go func() {
		defer j.wg.Done()
		err := j.backfill(ctx, p, rules)
		j.mu.Lock()
		defer j.mu.Unlock()
		if err != nil {
			p.Error = err.Error()
		}
		p.Listing, p.Done = false, true
	}()
	cp := *p
	return &cp, nil
}

// Progress returns a job's progress.
func (j *Jobs) Progress(id string) (*Progress, bool) {
	j.init()
	j.mu.Lock()
	defer j.mu.Unlock()
	p, ok := j.jobs[id]
	if !ok {
		return nil, false
	}
	cp := *p
	return &cp, true
}

func (j *Jobs) update(fn func()) {
	j.mu.Lock()
	fn()
	j.mu.Unlock()
}

// backfill lists every rule's source versions from its checkpointed
// cursor, queues what the destination lacks, then waits for the copies.
func (j *Jobs) backfill(ctx context.Context, p *Progress, rules []engine.Rule) error {
	run := &Backfill{
		Source: j.Source, Destination: j.Destination, State: j.State, Queue: j.Queue, Pass: p.ID,
		Progress: func(listed, submitted int, bytes int64) {
			j.update(func() { p.Listed += int64(listed); p.Submitted += int64(submitted); p.Bytes += bytes })
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
		if j.Log != nil {
			j.Log.Info("backfill listing finished", "rule", rule.ID, "listed", cur.Listed, "submitted", cur.Submitted)
		}
	}
	j.update(func() { p.Listing = false })
	// Wait for the copies the backfill queued.
	for {
		n, err := j.Pending(ctx)
		if err != nil {
			return err
		}
		j.update(func() { p.Pending = n })
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Planned is one copy a dry run would queue.
type Planned struct {
	Rule engine.Rule
	Op   *engine.Op
}

// DryRun walks what a backfill of rules would walk and calls each with
// every copy it would queue; it writes nothing. state, when set, is what
// the state knows (copies already queued count as done); it returns the
// HEAD requests the comparison took.
func DryRun(ctx context.Context, src Source, dest func(engine.Rule) Destination, state State, rules []engine.Rule, each func(Planned)) (int, error) {
	heads := 0
	for _, rule := range rules {
		if !rule.Enabled {
			continue
		}
		dst := dest(rule)
		err := Walk(ctx, src, dst, rule, "", func(pair Pair) error {
			if len(pair.Source) == 0 {
				return nil
			}
			vs, err := Selected(ctx, src, rule, pair.Key, pair.Source)
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
			have, err := Inspect(ctx, dst, rule.DestinationBucket, pair.DestKey, pair.Source, pair.Dest)
			if err != nil {
				return err
			}
			heads += have.Heads
			for _, op := range Plan(rule, pair.Key, pair.DestKey, vs, have, known, pair.DestListedAt, "dry-run", time.Now()) {
				each(Planned{Rule: rule, Op: op})
			}
			return nil
		})
		if err != nil {
			return heads, fmt.Errorf("rule %s: %w", rule.ID, err)
		}
	}
	return heads, nil
}

// NewProgressPrinter draws a progress line on a terminal and writes a log
// line every 10 seconds otherwise.
func NewProgressPrinter(w io.Writer, label string) func(*Progress) {
	tty := false
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	var last time.Time
	return func(p *Progress) {
		elapsed := time.Since(p.Started).Seconds()
		rate := float64(p.Listed) / max(elapsed, 0.001)
		copied := p.Submitted - p.Pending
		if p.Listing {
			copied = 0
		}
		line := fmt.Sprintf("%s: %d versions listed (%.0f/s), %d copies queued (%s), %d finished", label,
			p.Listed, rate, p.Submitted, units.Bytes(p.Bytes), max(copied, 0))
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
