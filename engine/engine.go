package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/s3replicad/s3replicad/engine/event"
	"github.com/s3replicad/s3replicad/internal/retry"
)

// Config is everything an Engine needs; the caller builds the adapters.
type Config struct {
	Rules        []Rule
	Source       Source
	Destinations map[string]Destination
	State        StateStore
	Queue        Queue // nil: no intake (backfill-only runs)

	Workers            int
	Pollers            int
	PartSize           int64
	PartConcurrency    int
	MultipartThreshold int64
	// ServerSideCopy names the destinations that share the source's
	// endpoint: their copies are made inside the store when the
	// destination implements ServerSideCopier.
	ServerSideCopy map[string]bool
	// BandwidthLimit caps the bytes per second written to a destination.
	BandwidthLimit map[string]int64
	// BufferMemory bounds the bytes held in copy buffers (objects copied
	// in one PUT and parts) for each destination, so that one destination
	// that stalls with its buffers full cannot starve another; 0 means one
	// part per part slot.
	BufferMemory      int64
	VisibilityTimeout time.Duration
	// OrderWindow holds an op from a fresh event until this long after the
	// event, so that an older version of its key whose event crossed it in
	// the queue is written first, without a copy on top (0: no hold).
	OrderWindow time.Duration
	// DrainTimeout bounds how long copies already running may go on after
	// the context ends (graceful shutdown); 0 stops them at once.
	DrainTimeout time.Duration
	// BackoffMin and BackoffMax bound the retry delay of transient failures.
	BackoffMin, BackoffMax time.Duration
	// MaxBacklog bounds the unfinished ops the engine holds in memory; the
	// rest of the backlog waits in the state file, so that memory does not
	// grow with a backlog.
	MaxBacklog int
	// StatePath names the state file in log lines.
	StatePath string

	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Engine replicates. Construct with New, start with Run, which returns when
// its context ends and in-flight work has been finished or checkpointed.
type Engine struct {
	cfg     Config
	rules   Rules
	log     *slog.Logger
	m       *metrics
	sched   *scheduler
	buffers map[string]*bufferPool  // by destination
	dests   map[string]Destination  // wrapped in their limits
	inStore map[string]*atomic.Bool // server-side copy still allowed

	// finishing counts the completions being committed in the background,
	// at most cap(finishers) at a time: one per worker. The state file
	// gathers writes for up to 10 ms, which at the default 32 workers holds
	// no worker up below about 2,000 objects/s; more would leave more
	// written but unrecorded versions for a crash to reconcile.
	finishing sync.WaitGroup
	finishers chan struct{}

	// cluster is the state store as a cluster's (nil: one node alone).
	cluster Cluster
	cl      clusterState

	started atomic.Bool
	ready   atomic.Bool
	// refused holds the queue's permanent refusal (a missing queue,
	// refused credentials) while it lasts.
	refused atomic.Pointer[string]
	loaded  chan struct{}

	// intake (see intake.go)
	records    chan recordReq
	refill     chan struct{}
	intakeDone chan struct{}
	spill      [2]spill // owned by the intake goroutine
	suspect    uint64
	// settleUntil is when the ops a crashed run left unfinished may run: a
	// write it had sent may still be landing at the store, and must be
	// there when their replica lookup looks.
	settleUntil  time.Time
	backfillOpen atomic.Int64
	statePath    string
	paused       atomic.Bool
	pauseMu      sync.Mutex
	pauseChanged chan struct{}

	// health is, for the source and each destination, whether a copy has
	// failed there since the last success: the next success there wakes the
	// ops in backoff because of it (at most once per wakeEvery).
	health map[string]*health
}

type health struct {
	failing  atomic.Bool
	lastWake atomic.Int64
}

// sourceSide names the source in Engine.health and Op.failSide.
const sourceSide = "\x00source"

// wakeEvery bounds how often a success wakes the ops in backoff.
const wakeEvery = time.Second

// New validates cfg and builds an Engine.
func New(cfg Config) (*Engine, error) {
	if cfg.Source == nil || cfg.State == nil {
		return nil, errors.New("engine: source and state are required")
	}
	for _, r := range cfg.Rules {
		if _, ok := cfg.Destinations[r.Destination]; !ok {
			return nil, fmt.Errorf("engine: rule %q: no destination %q", r.ID, r.Destination)
		}
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 32
	}
	if cfg.Pollers <= 0 {
		cfg.Pollers = 8
	}
	if cfg.PartSize <= 0 {
		cfg.PartSize = 16 << 20
	}
	if cfg.PartConcurrency <= 0 {
		cfg.PartConcurrency = 4
	}
	if cfg.MultipartThreshold <= 0 {
		cfg.MultipartThreshold = 32 << 20
	}
	if cfg.BufferMemory <= 0 {
		cfg.BufferMemory = int64(cfg.PartConcurrency) * cfg.PartSize
	}
	if cfg.VisibilityTimeout <= 0 {
		cfg.VisibilityTimeout = 5 * time.Minute
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = time.Second
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = time.Minute
	}
	if cfg.MaxBacklog <= 0 {
		cfg.MaxBacklog = max(1000, 100*cfg.Workers)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	e := &Engine{
		cfg:          cfg,
		rules:        NewRules(cfg.Rules),
		log:          cfg.Logger,
		loaded:       make(chan struct{}),
		finishers:    make(chan struct{}, cfg.Workers),
		records:      make(chan recordReq, 4*cfg.Pollers),
		refill:       make(chan struct{}, 1),
		intakeDone:   make(chan struct{}),
		statePath:    cfg.StatePath,
		pauseChanged: make(chan struct{}),
	}
	names := slices.Sorted(maps.Keys(cfg.Destinations))
	e.m = newMetrics(cfg.Registerer, e.rules, names, func() float64 {
		if e.cluster != nil && !e.cluster.Leads() {
			return 0 // one node reports the cluster's
		}
		t, ok, err := e.cfg.State.OldestPending(context.Background())
		if err != nil || !ok {
			return 0
		}
		return max(time.Since(t).Seconds(), 0)
	})
	limits := map[string]*adaptive{}
	e.dests, e.inStore, e.buffers = map[string]Destination{}, map[string]*atomic.Bool{}, map[string]*bufferPool{}
	e.health = map[string]*health{sourceSide: {}}
	for _, name := range names {
		d := cfg.Destinations[name]
		limits[name] = newAdaptive(cfg.Workers, e.m.concurrency.WithLabelValues(name), e.m.throttled.WithLabelValues(name))
		ld := &limitedDest{Destination: d, conc: limits[name]}
		if bw := cfg.BandwidthLimit[name]; bw > 0 {
			ld.bw = &pacer{rate: float64(bw)}
		}
		e.dests[name] = ld
		if c, ok := d.(ServerSideCopier); ok && cfg.ServerSideCopy[name] {
			e.dests[name] = &limitedCopier{limitedDest: ld, c: c}
			e.inStore[name] = &atomic.Bool{}
			e.inStore[name].Store(true)
		}
		e.buffers[name] = newBufferPool(e.cfg.BufferMemory)
		e.health[name] = &health{}
	}
	e.sched = newScheduler(cfg.Workers, limits)
	for _, a := range limits {
		a.onRaise = e.sched.poke
	}
	if c, ok := cfg.State.(Cluster); ok {
		e.cluster = c
		e.m.clusterMode = true
		e.startCluster()
	}
	// The window is topped up once half of it is done.
	e.sched.low, e.sched.onLow = cfg.MaxBacklog/2, func() {
		select {
		case e.refill <- struct{}{}:
		default:
		}
	}
	return e, nil
}

// Ready reports whether the engine has loaded its backlog, its state disk
// is not full and, when it has a queue, it received from it successfully
// in the last few wait periods; when not, it says why.
func (e *Engine) Ready() (bool, string) {
	switch {
	case e.paused.Load():
		return false, "the state file's disk is full; intake is paused"
	case e.refused.Load() != nil:
		return false, "the queue refuses: " + *e.refused.Load()
	case !e.ready.Load():
		select {
		case <-e.loaded:
			return false, "the queue does not answer"
		default:
			return false, "loading the backlog"
		}
	}
	return true, ""
}

// Run loads unfinished work from the state file, then receives and
// replicates until ctx ends.
func (e *Engine) Run(ctx context.Context) error {
	if !e.started.CompareAndSwap(false, true) {
		return errors.New("engine: Run called twice; build a new Engine")
	}
	defer e.sched.Close()
	crashed, err := e.beginRun(ctx)
	if err != nil {
		return err
	}
	if err := e.load(ctx, crashed); err != nil {
		return err
	}
	close(e.loaded)
	// Copies that are running when ctx ends get DrainTimeout to finish.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stop := context.AfterFunc(ctx, func() {
		if e.cfg.DrainTimeout <= 0 {
			cancelWork()
			return
		}
		time.AfterFunc(e.cfg.DrainTimeout, cancelWork)
	})
	defer stop()

	g, gctx := errgroup.WithContext(ctx)
	// The intake outlives the pollers and backfill, which wait on it.
	intakeCtx, stopIntake := context.WithCancel(context.WithoutCancel(ctx))
	intakeDone := make(chan struct{})
	go func() { defer close(intakeDone); e.runIntake(intakeCtx) }()
	defer func() { stopIntake(); <-intakeDone }()
	if e.cluster != nil {
		g.Go(func() error { e.refreshClusterGauges(gctx); return nil })
	}
	for i := 0; i < e.cfg.Workers; i++ {
		g.Go(func() error { e.work(gctx, workCtx); return nil })
	}
	if e.cfg.Queue != nil {
		// Deleting a batch is off the pollers' path: they receive again as
		// soon as its operations are durable. Deleters outlive the pollers
		// so that no recorded batch is left undeleted at shutdown.
		acks := make(chan []Message, e.cfg.Pollers)
		var pollers sync.WaitGroup
		for i := 0; i < e.cfg.Pollers; i++ {
			pollers.Add(1)
			g.Go(func() error { defer pollers.Done(); return e.poll(gctx, workCtx, acks) })
			g.Go(func() error { e.deleteAcked(workCtx, acks); return nil })
		}
		g.Go(func() error { pollers.Wait(); close(acks); return nil })
	} else {
		e.ready.Store(true)
	}
	err = g.Wait()
	e.finishing.Wait()
	if serr := e.stopCleanly(); serr != nil {
		e.log.Error("cannot record a clean stop; the next start checks every unfinished copy on the destination", "err", serr)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// beginRun marks the state file in use, waiting (and saying so) while its
// disk is full.
func (e *Engine) beginRun(ctx context.Context) (bool, error) {
	for attempt := 1; ; attempt++ {
		crashed, err := e.cfg.State.BeginRun(ctx)
		if err == nil || !diskFull(err) {
			return crashed, err
		}
		if attempt == 1 {
			e.m.intakePaused.Set(1)
			e.log.Error("the state file's disk is full: waiting for space before starting", "state", e.statePath, "err", err)
		}
		if !retry.Sleep(ctx, 2*time.Second) {
			return false, ctx.Err()
		}
		e.m.intakePaused.Set(0)
	}
}

// stopCleanly saves the write marks of the ops still held, then records
// that this run stopped cleanly.
func (e *Engine) stopCleanly() error {
	var marked []*Op
	for _, op := range e.sched.Held() {
		if op.WriteStarted.IsZero() {
			continue
		}
		if e.cluster != nil {
			if _, ok := e.cluster.Owned(op.DestKeyID()); !ok {
				continue // another node's now: it looks for replicas anyway
			}
		}
		marked = append(marked, op)
	}
	if len(marked) > 0 {
		if err := e.cfg.State.SaveAll(context.Background(), marked); err != nil {
			return err
		}
	}
	return e.cfg.State.EndRun(context.Background())
}

// load fills the window from the state file and starts the gauges from
// its counters. After a crash any unfinished op may have been written
// without its write mark being saved: each one read back (now or later)
// looks for its replica first.
func (e *Engine) load(ctx context.Context, crashed bool) error {
	var err error
	if e.suspect, err = e.cfg.State.SuspectThrough(ctx); err != nil {
		return fmt.Errorf("load backlog: %w", err)
	}
	ops, bytes, err := e.cfg.State.Counts(ctx)
	if err != nil {
		return fmt.Errorf("load backlog: %w", err)
	}
	var total int64
	for rule, n := range ops {
		if !e.m.clusterMode {
			e.m.pending.WithLabelValues(rule).Add(float64(n))
			e.m.bytesPending.WithLabelValues(rule).Add(float64(bytes[rule]))
		}
		total += n
	}
	for class := range e.spill {
		e.spill[class].on = true
	}
	if crashed {
		e.settleUntil = time.Now().Add(crashSettle)
	}
	e.fill(ctx)
	if crashed && total > 0 {
		e.log.Warn("the previous run did not stop cleanly; unfinished copies look for a replica on the destination before writing",
			"operations", total, "after", crashSettle)
	}
	if total > 0 {
		e.log.Info("resuming backlog from state file", "operations", total, "in_memory", e.sched.Len())
	}
	return nil
}

// Submit records ops durably and schedules the new ones (backfill uses it).
// It waits while the unfinished backfill ops are many times what memory
// holds, so that a backfill does not list far ahead of its copies.
func (e *Engine) Submit(ctx context.Context, ops []*Op) (int, error) {
	for e.backfillOpen.Load() >= int64(backfillAhead*e.cfg.MaxBacklog) {
		if !retry.Sleep(ctx, 100*time.Millisecond) {
			return 0, ctx.Err()
		}
	}
	if err := e.waitUnpaused(ctx); err != nil {
		return 0, err
	}
	added, err := e.record(ctx, ops)
	if err != nil {
		return 0, err
	}
	return len(added), nil
}

// backfillAhead is how many windows of backfill ops may wait in the state
// file.
const backfillAhead = 10

// Retry puts failed ops back to pending (all when keys is empty).
func (e *Engine) Retry(ctx context.Context, keys []string) (int, error) {
	<-e.loaded
	ops, err := e.cfg.State.Retry(ctx, keys)
	if err != nil {
		return 0, err
	}
	n := len(ops)
	if e.cluster != nil {
		// Every node's failed ops are pending again; this node runs its own
		// and the others find theirs in the table.
		ops = e.cluster.Claim(ops)
	}
	// Retried ops go straight into memory, over the window if need be:
	// they sit below its edge in the state file.
	for _, op := range ops {
		e.m.track(op, 1)
		if op.Origin == OriginBackfill {
			e.backfillOpen.Add(1)
		}
	}
	e.sched.Add(ops...)
	return n, nil
}

// Running counts the ops being copied now, by rule.
func (e *Engine) Running() map[string]int { return e.sched.Running() }

// Backlog is the number of unfinished ops the engine holds.
func (e *Engine) Backlog() int { return e.sched.Len() }

// How the pollers wait and try again: after a failed receive, after an
// empty short poll, and between attempts to delete a batch.
var (
	receiveRetry = retry.Policy{Min: time.Second, Max: 10 * time.Second}
	refusedRetry = retry.Policy{Min: 5 * time.Second, Max: time.Minute}
	idlePoll     = retry.Policy{Min: 20 * time.Millisecond, Max: 500 * time.Millisecond}
	deleteRetry  = retry.Policy{Min: 200 * time.Millisecond, Max: 2 * time.Second, Attempts: 3}
)

// shortPoll is how fast an empty receive must come back to be taken for a
// short poll rather than a long poll that waited in vain.
const shortPoll = 200 * time.Millisecond

func (e *Engine) poll(ctx, workCtx context.Context, acks chan<- []Message) error {
	failures, empty := 0, 0
	for ctx.Err() == nil {
		if e.waitUnpaused(ctx) != nil {
			return nil
		}
		began := time.Now()
		msgs, err := e.cfg.Queue.Receive(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			failures++
			e.m.queueErrors.Inc()
			if c, _ := Classify(err); c == Permanent {
				// A missing queue or refused credentials: nothing a retry
				// mends, so it is said loudly (once, and again when it
				// changes), and tried again slowly in case it is fixed.
				e.queueRefused(err)
				if !retry.Sleep(ctx, refusedRetry.Backoff(failures)) {
					return nil
				}
				continue
			}
			if failures >= 3 {
				e.ready.Store(false)
			}
			e.log.Warn("receive from queue failed", "err", err, "attempt", failures)
			if !retry.Sleep(ctx, receiveRetry.Backoff(failures)) {
				return nil
			}
			continue
		}
		failures = 0
		e.queueAccepted()
		e.ready.Store(true)
		if len(msgs) == 0 {
			// An empty answer that came at once is a short poll (wait_time
			// 0): pause, so that idle pollers do not spin against the queue.
			empty++
			if time.Since(began) < shortPoll && !retry.Sleep(ctx, idlePoll.Backoff(empty)) {
				return nil
			}
			continue
		}
		empty = 0
		if ack := e.handle(ctx, msgs); len(ack) > 0 {
			select {
			case acks <- ack:
			case <-workCtx.Done():
				return nil
			}
		}
	}
	return nil
}

// deleteAcked deletes the batches whose operations are recorded.
func (e *Engine) deleteAcked(ctx context.Context, acks <-chan []Message) {
	for ack := range acks {
		for attempt := 1; ; attempt++ {
			err := e.cfg.Queue.Delete(ctx, ack)
			if err == nil {
				break
			}
			e.m.queueErrors.Inc()
			if attempt == 3 || ctx.Err() != nil {
				// Harmless: the ops are recorded, a redelivery is a duplicate.
				e.log.Warn("delete messages failed; they will come again as duplicates", "err", err)
				break
			}
			if !retry.Sleep(ctx, deleteRetry.Backoff(attempt)) {
				break
			}
		}
	}
}

// handle decodes a batch, records what it asks for and returns the
// messages whose work is durable, to be deleted. Messages that fail are
// left for redelivery.
func (e *Engine) handle(ctx context.Context, msgs []Message) []Message {
	// Keep the messages invisible while this batch is being recorded (tag
	// look-ups and a slow disk can take a while).
	hbCtx, stopHB := context.WithCancel(ctx)
	defer stopHB()
	go e.heartbeat(hbCtx, msgs)

	var (
		ack []Message
		ops []*Op
	)
	for _, msg := range msgs {
		recs, err := event.Decode(msg.Body)
		if err != nil {
			e.m.events.WithLabelValues("malformed").Inc()
			e.log.Warn("malformed message left for the queue's redrive policy",
				"message_id", msg.ID, "receive_count", msg.ReceiveCount, "err", err)
			continue
		}
		msgOps, err := e.opsFor(ctx, recs)
		if err != nil {
			e.log.Warn("message will be retried", "message_id", msg.ID, "err", err)
			continue
		}
		ops = append(ops, msgOps...)
		ack = append(ack, msg)
	}
	for len(ops) > 0 {
		_, err := e.record(ctx, ops)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			e.release(ctx, ack)
			return nil
		}
		if !errors.Is(err, errPaused) && !diskFull(err) {
			// Let the queue deliver them again (here or on another node).
			e.release(ctx, ack)
			return nil
		}
		// The state disk is full. Hold on to the batch, still invisible
		// (the heartbeat keeps it so), and record it once space returns:
		// returned to the queue, every message would be received again at
		// each try and end in the dead-letter queue.
		if e.waitUnpaused(ctx) != nil {
			e.release(ctx, ack)
			return nil
		}
	}
	return ack
}

// queueRefused reports the queue's permanent refusal: an ERROR line when it
// starts or changes, /readyz, and s3replicad_queue_refused.
func (e *Engine) queueRefused(err error) {
	msg := err.Error()
	if prev := e.refused.Swap(&msg); prev == nil || *prev != msg {
		e.log.Error("the queue refuses this daemon: nothing is received until this is fixed (checked again every minute)", "err", err)
	}
	e.m.queueRefused.Set(1)
	e.ready.Store(false)
}

// queueAccepted ends a refusal.
func (e *Engine) queueAccepted() {
	if e.refused.Swap(nil) != nil {
		e.m.queueRefused.Set(0)
		e.log.Info("the queue answers again")
	}
}

// release makes messages whose work was not recorded visible again at once.
func (e *Engine) release(ctx context.Context, msgs []Message) {
	if len(msgs) == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := e.cfg.Queue.ExtendVisibility(rctx, msgs, 0); err != nil {
		e.m.queueErrors.Inc()
		e.log.Warn("cannot return messages to the queue; they come back after the visibility timeout", "err", err)
	}
}

func (e *Engine) heartbeat(ctx context.Context, msgs []Message) {
	every := e.cfg.VisibilityTimeout / 2
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := e.cfg.Queue.ExtendVisibility(ctx, msgs, e.cfg.VisibilityTimeout); err != nil && ctx.Err() == nil {
				e.m.queueErrors.Inc()
				e.log.Warn("extend message visibility failed", "err", err)
			}
		}
	}
}

// opsFor turns the records of one message into ops. An error means the
// message should be tried again later (a transient tag look-up failure).
func (e *Engine) opsFor(ctx context.Context, recs []event.Record) ([]*Op, error) {
	var ops []*Op
	now := time.Now()
	for _, rec := range recs {
		e.m.events.WithLabelValues(rec.Kind.MetricKind()).Inc()
		cands := e.rules.Candidates(rec.Bucket, rec.Key)
		if len(cands) == 0 {
			continue
		}
		switch rec.Kind {
		case event.VersionDeleted:
			for _, r := range cands {
				e.m.deletes.WithLabelValues(r.ID).Inc()
			}
			e.log.Info("version delete not propagated", "bucket", rec.Bucket, "key", rec.Key, "version", rec.VersionID)
			continue
		case event.DeleteMarker:
			// Tags of a delete marker cannot be read; like S3, rules that
			// filter on tags do not replicate delete markers.
			sel, _ := Select(cands, func() (map[string]string, error) { return nil, nil })
			for _, r := range sel {
				if !r.ReplicateDeleteMarkers || r.NeedsTags() {
					e.m.deletes.WithLabelValues(r.ID).Inc()
					continue
				}
				ops = append(ops, newOp(r, rec, ActionDeleteMarker, OriginEvent, now))
			}
			continue
		case event.Created:
		default:
			continue
		}
		gone := false
		sel, err := Select(cands, func() (map[string]string, error) {
			tags, err := e.cfg.Source.Tags(ctx, rec.Bucket, rec.Key, rec.VersionID)
			if err != nil {
				if c, _ := Classify(err); c == Gone {
					gone = true
					return nil, nil
				}
				return nil, fmt.Errorf("read tags of %s@%s: %w", rec.Key, rec.VersionID, err)
			}
			return tags, nil
		})
		if err != nil {
			return nil, err
		}
		if gone {
			// Which rule would have taken it cannot be known; record it
			// under the first candidate so that status shows it.
			op := newOp(cands[0], rec, ActionCopy, OriginEvent, now)
			op.State, op.Reason, op.Finished = Skipped, "source version no longer exists", now
			ops = append(ops, op)
			continue
		}
		for _, r := range sel {
			ops = append(ops, newOp(r, rec, ActionCopy, OriginEvent, now))
		}
	}
	return ops, nil
}

func newOp(r *Rule, rec event.Record, a Action, origin Origin, now time.Time) *Op {
	return &Op{
		Rule: r.ID, Bucket: rec.Bucket, Key: rec.Key, VersionID: rec.VersionID,
		Sequencer: rec.Sequencer, ETag: rec.ETag, Size: rec.Size, Action: a, Origin: origin,
		Dest: r.Destination, DestBucket: r.DestinationBucket, DestKey: r.DestKey(rec.Key),
		EventTime: rec.Time, Recorded: now, State: Pending,
	}
}

// work runs ops until ctx ends; copies use workCtx, which outlives ctx by
// the drain timeout.
func (e *Engine) work(ctx, workCtx context.Context) {
	for {
		if e.waitUnpaused(ctx) != nil {
			return
		}
		op, err := e.sched.Next(ctx)
		if err != nil {
			return
		}
		opCtx, done, ok := e.mayRun(workCtx, op)
		if !ok {
			continue
		}
		e.runOp(opCtx, op)
		done()
	}
}

func (e *Engine) runOp(ctx context.Context, op *Op) {
	rule, ok := e.rules.ByID(op.Rule)
	dest := e.dests[op.Dest]
	if !ok || dest == nil {
		e.finish(ctx, op, Skipped, "rule or destination no longer in the configuration")
		return
	}
	if op.Sequencer != "" && !op.Late() {
		last, ok, err := e.cfg.State.LastWritten(ctx, op.DestKeyID())
		if err != nil {
			e.retryLater(ctx, op, err)
			return
		}
		if ok && last.Sequencer != "" {
			switch c := event.CompareSequencer(op.Sequencer, last.Sequencer); {
			case c == 0 && last.Version == VersionDigest(op.VersionID):
				e.finish(ctx, op, Completed, "")
				return
			case c < 0 && op.VersionID == "":
				// A null version is replaced in place: the source no
				// longer has this write's content, only the newer one.
				e.finish(ctx, op, Superseded, "a newer write of the key (sequencer "+last.Sequencer+") replaced this null version")
				return
			case c < 0:
				// A late version: written all the same, then the newest put
				// back on top (guarantee 4).
				if err := e.planOnTop(ctx, dest, op, last); err != nil {
					e.failed(ctx, op, err)
					return
				}
			}
		}
	}
	resumed := op.Late() && op.Replica != "" // the late version is written
	if e.log.Enabled(ctx, slog.LevelDebug) {
		e.opLog(op).Debug("writing", "seq", op.Seq, "origin", op.Origin, "attempts", op.Attempts,
			"write_started", op.WriteStarted, "late", op.Late(), "resumed", resumed)
	}
	if !resumed {
		replica, err := e.replicate(ctx, rule, dest, op)
		if errors.Is(err, errOverwritten) {
			e.finish(ctx, op, Superseded, err.Error())
			return
		}
		if err != nil {
			e.failed(ctx, op, err)
			return
		}
		op.Replica = replica
		if e.log.Enabled(ctx, slog.LevelDebug) {
			e.opLog(op).Debug("written", "seq", op.Seq, "replica", replica)
		}
		if op.Late() {
			// Recorded before the copy on top, so that a crash does not
			// have the late version looked for, or written, again.
			if err := e.cfg.State.Save(context.WithoutCancel(ctx), op); err != nil {
				e.stateFailed(err)
				e.retryLater(ctx, op, fmt.Errorf("save state: %w", err))
				return
			}
		}
	}
	if op.Late() {
		v, err := e.putOnTop(ctx, dest, op, resumed)
		if err != nil {
			e.failed(ctx, op, err)
			return
		}
		op.OnTopReplica = v
		e.opLog(op).Info("late version written, and the newest put back on top", "replica", op.Replica, "on_top", v)
	}
	e.recovered(op)
	// The worker goes on to the next op while the state file commits this
	// one; the key stays taken until then, so its order holds.
	select {
	case e.finishers <- struct{}{}:
	case <-ctx.Done():
		e.finish(ctx, op, Completed, "")
		return
	}
	e.finishing.Add(1)
	go func() {
		defer e.finishing.Done()
		defer func() { <-e.finishers }()
		e.finish(ctx, op, Completed, "")
	}()
}

// failed handles an op's failed attempt by its class: skipped when the
// source version is gone, failed when permanent, else tried again later.
func (e *Engine) failed(ctx context.Context, op *Op, err error) {
	log := e.opLog(op)
	if e.lostLease(ctx, err) {
		log.Info("the key's lease went to another node: the operation is left to it", "err", err)
		e.forget(op)
		return
	}
	if ctx.Err() != nil {
		// Shutting down: the op stays in flight in the state file and is
		// reconciled with the destination on the next start.
		e.sched.Done(op, false)
		return
	}
	switch class, reason := Classify(err); class {
	case Gone:
		e.m.failed.WithLabelValues(op.Rule, ReasonSourceMissing).Inc()
		e.finish(ctx, op, Skipped, "source version no longer exists: "+err.Error())
	case Permanent:
		e.m.failed.WithLabelValues(op.Rule, reason).Inc()
		op.LastError = err.Error()
		log.Error("replication failed permanently; fix the cause, then run `s3replicad retry`", "reason", reason, "err", err)
		e.finish(ctx, op, Failed, reason)
	default:
		e.m.failed.WithLabelValues(op.Rule, reason).Inc()
		e.retryLater(ctx, op, err)
	}
}

// planOnTop decides, for a late op, what goes back on top of it once it is
// written: the destination key's current version, which holds the newest
// version written (by an event, a backfill or a failback), and records it
// before anything is written, since the late write changes what is
// current. op is changed only once the plan is whole: a plan set on op
// makes it late, and a retry would not plan again.
func (e *Engine) planOnTop(ctx context.Context, dest Destination, op *Op, last KeyState) error {
	cur, ok, err := dest.Current(ctx, op.DestBucket, op.DestKey)
	if err != nil {
		return fmt.Errorf("read the current version of %s/%s: %w", op.DestBucket, op.DestKey, err)
	}
	var plan onTopPlan
	switch {
	case !ok && last.NewestMarker && op.Action == ActionCopy:
		// The newest is a delete marker the store did not make (MinIO and
		// versitygw make none on a key without versions): there is one now.
		plan.marker = true
	case !ok:
		e.opLog(op).Warn("a newer version of the key was written, but the destination has none now; writing the late version alone")
		return nil
	case cur.DeleteMarker && op.Action == ActionDeleteMarker &&
		(last.NewestMarker || last.LastReplica == 0 || VersionDigest(cur.VersionID) == last.LastReplica):
		return nil // a late delete marker over a deleted key leaves it deleted
	case cur.DeleteMarker:
		plan.marker = true
	default:
		plan.version = cur.VersionID
	}
	if ok && last.LastReplica != 0 && VersionDigest(cur.VersionID) != last.LastReplica {
		// What is on top was written and not recorded: by a newer op that
		// stopped before recording it (kill -9), which stays on top, or by
		// an older version's op on a node that did not know of the newest
		// (a cluster's shard moved twice), this op's own write included,
		// which must not: then the recorded newest goes back on top.
		older, err := e.olderThanNewest(ctx, dest, op, cur, last)
		if err != nil {
			return err
		}
		if !older {
			plan.unrecorded = true
		} else if plan, err = e.planNewestOnTop(ctx, dest, op, cur, last); err != nil {
			return err
		}
	}
	op.OnTop, op.OnTopMarker, op.OnTopUnrecorded = plan.version, plan.marker, plan.unrecorded
	op.State = InFlight
	if err := e.cfg.State.Save(context.WithoutCancel(ctx), op); err != nil {
		e.stateFailed(err)
		return fmt.Errorf("save state: %w", err)
	}
	return nil
}

// onTopPlan is what planOnTop puts in Op.OnTop, OnTopMarker and
// OnTopUnrecorded.
type onTopPlan struct {
	version            string
	marker, unrecorded bool
}

// olderThanNewest says whether the destination's current version, which
// the key's state does not record, is an older version's write than the
// key's recorded newest: a replica's metadata carries its sequencer; one
// without (a backfill's) cannot be placed and is taken for a newer op's.
// A delete marker carries nothing: unless the newest is a marker too, it
// is taken for an older op's. Should it be a newer op's after all, that op
// looks for it only above the recorded last replica, misses it, and writes
// another on top: an extra marker, where the other guess would leave an
// older version current for good.
func (e *Engine) olderThanNewest(ctx context.Context, dest Destination, op *Op, cur Version, last KeyState) (bool, error) {
	if cur.DeleteMarker {
		return !last.NewestMarker, nil
	}
	_, _, meta, err := dest.Head(ctx, op.DestBucket, op.DestKey, cur.VersionID)
	if err != nil {
		return false, fmt.Errorf("read what the current version of %s/%s replicates: %w", op.DestBucket, op.DestKey, err)
	}
	seq := meta[MetaSourceSequencer]
	return seq != "" && event.CompareSequencer(seq, last.Sequencer) < 0, nil
}

// planNewestOnTop plans the key's recorded newest version as what goes on
// top of op, in place of an older version's unrecorded write: a delete
// marker, or the newest of the destination's replicas (and copies) of it,
// found by its sequencer. The key's last replica is not taken on trust: a
// late or backfilled write moves it too.
func (e *Engine) planNewestOnTop(ctx context.Context, dest Destination, op *Op, cur Version, last KeyState) (onTopPlan, error) {
	if last.NewestMarker {
		e.opLog(op).Info("an older version's unrecorded write is on top; a delete marker, the newest, goes back on top", "current", cur.VersionID)
		return onTopPlan{marker: true}, nil
	}
	v, ok, err := dest.FindReplica(ctx, op.DestBucket, op.DestKey, ActionCopy, ReplicaOf{Sequencer: last.Sequencer, BySequencer: true}, time.Time{})
	if err != nil {
		return onTopPlan{}, fmt.Errorf("look for the newest replica of %s/%s: %w", op.DestBucket, op.DestKey, err)
	}
	if !ok {
		e.opLog(op).Warn("an older version's unrecorded write is on top, and the destination holds no replica of the newest version (sequencer "+last.Sequencer+"); writing the late version alone",
			"current", cur.VersionID)
		return onTopPlan{}, nil
	}
	e.opLog(op).Info("an older version's unrecorded write is on top; the newest goes back on top", "current", cur.VersionID, "newest_replica", v)
	return onTopPlan{version: v}, nil
}

// putOnTop writes the newest version once more on top of a late one: a
// copy inside the destination, or a new delete marker. look says an
// earlier attempt may have written it (a crash, a lost answer).
func (e *Engine) putOnTop(ctx context.Context, dest Destination, op *Op, look bool) (string, error) {
	after := VersionDigest(op.Replica)
	since := op.WriteStarted
	if since.IsZero() {
		since = op.Recorded
	}
	if look {
		var (
			v     string
			found bool
			err   error
		)
		if op.OnTopMarker {
			v, found, err = dest.FindReplica(ctx, op.DestBucket, op.DestKey, ActionDeleteMarker, ReplicaOf{After: after}, since)
		} else {
			// The copy carries the metadata of what it copies.
			var size int64
			var meta map[string]string
			size, _, meta, err = dest.Head(ctx, op.DestBucket, op.DestKey, op.OnTop)
			if err == nil {
				of := ReplicaOf{Version: meta[MetaSourceVersion], Pass: meta[MetaPass], After: after, Size: size}
				if of.Version == "null" {
					of.Version, of.Sequencer = "", meta[MetaSourceSequencer]
				}
				v, found, err = dest.FindReplica(ctx, op.DestBucket, op.DestKey, ActionCopy, of, since)
			}
		}
		if err != nil {
			return "", fmt.Errorf("look for the copy on top of %s/%s: %w", op.DestBucket, op.DestKey, err)
		}
		if found {
			return v, nil
		}
	}
	if op.OnTopMarker {
		v, err := dest.PutDeleteMarker(ctx, op.DestBucket, op.DestKey)
		if err != nil {
			return "", fmt.Errorf("put the newest (a delete marker) back on top of %s/%s: %w", op.DestBucket, op.DestKey, err)
		}
		return v, nil
	}
	v, err := dest.CopyVersion(ctx, op.DestBucket, op.DestKey, op.OnTop)
	if err != nil {
		return "", fmt.Errorf("copy the newest (%s) back on top of %s/%s: %w", op.OnTop, op.DestBucket, op.DestKey, err)
	}
	return v, nil
}

// opLog is the logger of what happens to op, made when there is something
// to say: With formats its attributes at once, and most ops log nothing.
func (e *Engine) opLog(op *Op) *slog.Logger {
	return e.log.With("rule", op.Rule, "bucket", op.Bucket, "key", op.Key, "version", op.VersionID)
}

// finish records a terminal state and releases the op's key.
func (e *Engine) finish(ctx context.Context, op *Op, s State, reason string) {
	now := time.Now()
	prev := op.State
	op.State, op.Reason, op.Finished = s, reason, now
	op.NextAttempt = time.Time{}
	if err := e.cfg.State.Save(context.WithoutCancel(ctx), op); err != nil {
		if e.lostLease(ctx, err) {
			op.State = prev
			e.log.Info("the key's lease went to another node before the operation was recorded: it is left to it", "key", op.Key, "version", op.VersionID)
			e.forget(op)
			return
		}
		// Not durable: keep it pending in memory and try again; on a crash
		// the copy is found on the destination and not written twice.
		e.stateFailed(err)
		op.State = prev
		e.retryLater(ctx, op, fmt.Errorf("save state: %w", err))
		return
	}
	e.m.track(op, -1)
	if op.Origin == OriginBackfill {
		e.backfillOpen.Add(-1)
	}
	switch s {
	case Completed:
		e.m.done(op, now)
		if op.Late() {
			e.m.late.WithLabelValues(op.Rule).Inc()
		}
	case Superseded:
		e.m.superseded.WithLabelValues(op.Rule).Inc()
		e.log.Info("version superseded, not written", "bucket", op.Bucket, "key", op.Key, "version", op.VersionID, "reason", reason)
	case Skipped:
		e.m.skipped.WithLabelValues(op.Rule).Inc()
		e.log.Warn("version skipped", "bucket", op.Bucket, "key", op.Key, "version", op.VersionID, "reason", reason)
	}
	e.sched.Done(op, true)
}

// recovered wakes the ops held back by failures on the source or on op's
// destination once a copy there succeeds: the store (or the network) is
// back, and they need not wait out their backoff. Ops waiting on another
// destination stay as they are: its outage is not over.
func (e *Engine) recovered(op *Op) {
	for _, side := range []string{op.Dest, sourceSide} {
		h := e.health[side]
		if h == nil || !h.failing.Load() {
			continue
		}
		now := time.Now().UnixNano()
		last := h.lastWake.Load()
		if now-last < int64(wakeEvery) || !h.lastWake.CompareAndSwap(last, now) {
			continue
		}
		h.failing.Store(false)
		if n := e.sched.Wake(func(o *Op) bool { return o.failSide == side }); n > 0 {
			where := "destination " + side
			if side == sourceSide {
				where = "the source"
			}
			e.log.Info("a copy succeeded after failures: retrying the operations in backoff now", "on", where, "operations", n)
		}
	}
}

func (e *Engine) retryLater(ctx context.Context, op *Op, err error) {
	log := e.opLog(op)
	op.failSide = op.Dest
	var se sourceError
	if errors.As(err, &se) {
		op.failSide = sourceSide
	}
	if h := e.health[op.failSide]; h != nil {
		h.failing.Store(true)
	}
	op.Attempts++
	op.State = Pending
	op.LastError = err.Error()
	op.NextAttempt = time.Now().Add(retry.Policy{Min: e.cfg.BackoffMin, Max: e.cfg.BackoffMax}.Backoff(op.Attempts))
	log.Warn("copy failed, will retry", "attempt", op.Attempts, "next", op.NextAttempt.Format(time.RFC3339), "err", err)
	if serr := e.cfg.State.Save(context.WithoutCancel(ctx), op); serr != nil {
		if e.lostLease(ctx, serr) {
			e.forget(op)
			return
		}
		// The op stays pending in memory either way; a full disk pauses.
		e.stateFailed(serr)
	}
	e.sched.Done(op, false)
}

// sourceError marks an error that came from the source store, so that the
// source's recovery wakes the ops it held back, whatever their destination.
type sourceError struct{ error }

func (e sourceError) Unwrap() error { return e.error }

// fromSource marks err as the source's.
func fromSource(err error) error { return sourceError{err} }
