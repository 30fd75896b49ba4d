package engine

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Cluster is a StateStore that several nodes share (cluster mode): every
// destination key belongs to one node at a time, under a lease held in the
// store, so that versions of a key are written by one node, in order.
type Cluster interface {
	// Owned reports whether this node may write to destKeyID now, and the
	// time by which it must have stopped (its lease's safe end).
	Owned(destKeyID string) (deadline time.Time, ok bool)
	// Changes is signalled when this node gains or loses keys.
	Changes() <-chan struct{}
	// Claim returns those of the ops this node just recorded that it runs
	// itself (its own keys); the others wait in the store for their owner.
	Claim(ops []*Op) []*Op
	// Current re-reads an op's stored record (nil: none): an op handed out
	// may have been finished meanwhile by another node.
	Current(ctx context.Context, op *Op) (*Op, error)
	// LeaseLost tells an error of a write the store refused because this
	// node no longer holds the key.
	LeaseLost(err error) bool
	// Leads reports whether this node reports the cluster-wide gauges, so
	// that they are not counted once per node.
	Leads() bool
	// SetHandoff sets what the store calls before it hands keys over to
	// another node: the engine stops starting writes for them, waits for
	// those in flight, saves their ops' write marks and drops them.
	SetHandoff(func(ctx context.Context, lost func(destKeyID string) bool) error)
	// SetActivity sets what the store reports as this node's work.
	SetActivity(func() (held, inFlight int))
}

// errNotOwner ends the copies of keys this node no longer holds.
var errNotOwner = errors.New("this node no longer holds the key's lease")

// clusterState is the engine's side of cluster mode.
type clusterState struct {
	mu        sync.Mutex
	releasing map[int]func(destKeyID string) bool
	nextID    int
	// lastFound is when a refill last found ops: an idle node asks the
	// store less often.
	lastFound time.Time
	lastFill  time.Time
}

// idleFill is how often an idle node asks the store for ops other nodes
// recorded; a busy one asks every intake tick.
const idleFill = 5 * time.Second

func (e *Engine) startCluster() {
	c := e.cluster
	c.SetActivity(func() (int, int) { return e.sched.Len(), e.sched.Busy() })
	c.SetHandoff(e.handOff)
}

// releasingKey reports whether destKeyID is being handed over.
func (e *Engine) releasingKey(destKeyID string) bool {
	e.cl.mu.Lock()
	defer e.cl.mu.Unlock()
	for _, lost := range e.cl.releasing {
		if lost(destKeyID) {
			return true
		}
	}
	return false
}

// handOff lets go of the keys lost selects: nothing new starts on them,
// the copies in flight finish, the write marks of their ops are saved and
// the ops dropped from memory.
func (e *Engine) handOff(ctx context.Context, lost func(destKeyID string) bool) error {
	e.cl.mu.Lock()
	id := e.cl.nextID
	e.cl.nextID++
	if e.cl.releasing == nil {
		e.cl.releasing = map[int]func(string) bool{}
	}
	e.cl.releasing[id] = lost
	e.cl.mu.Unlock()
	defer func() {
		e.cl.mu.Lock()
		delete(e.cl.releasing, id)
		e.cl.mu.Unlock()
	}()
	match := func(op *Op) bool { return lost(op.DestKeyID()) }
	for {
		dropped, busy := e.sched.Drop(match)
		if err := e.dropOps(ctx, dropped); err != nil {
			return err
		}
		if busy == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// dropOps forgets ops this node lets go of, saving the write marks of
// those that may have written, so that their next owner looks first.
func (e *Engine) dropOps(ctx context.Context, ops []*Op) error {
	var marked []*Op
	for _, op := range ops {
		if !op.WriteStarted.IsZero() {
			marked = append(marked, op)
		}
		if op.Origin == OriginBackfill {
			e.backfillOpen.Add(-1)
		}
	}
	if len(marked) == 0 {
		return nil
	}
	err := e.cfg.State.SaveAll(ctx, marked)
	if err != nil && e.cluster.LeaseLost(err) {
		return nil // already another node's: it looks for replicas anyway
	}
	return err
}

// dropLost drops the ops of keys this node no longer holds (not those in
// flight: their lease context ends them).
func (e *Engine) dropLost() {
	dropped, _ := e.sched.Drop(func(op *Op) bool {
		_, ok := e.cluster.Owned(op.DestKeyID())
		return !ok
	})
	for _, op := range dropped {
		if op.Origin == OriginBackfill {
			e.backfillOpen.Add(-1)
		}
	}
	if len(dropped) > 0 {
		e.log.Info("keys taken over by another node: their operations are left to it", "operations", len(dropped))
	}
}

// clusterFill tops the window up with the ops of this node's keys that
// other nodes recorded (the store hands each out once).
func (e *Engine) clusterFill(ctx context.Context, force bool) {
	now := time.Now()
	if !force && now.Sub(e.cl.lastFound) > time.Minute && now.Sub(e.cl.lastFill) < idleFill {
		return
	}
	e.cl.lastFill = now
	for _, origin := range origins {
		room := e.cfg.MaxBacklog - e.sched.Len()
		if room <= 0 {
			return
		}
		ops, _, err := e.cfg.State.Pending(ctx, origin, 0, room)
		if err != nil {
			e.log.Warn("cannot read this node's backlog from the cluster's table; trying again", "err", err)
			return
		}
		if len(ops) == 0 {
			continue
		}
		e.cl.lastFound = now
		for _, op := range ops {
			e.hold(op)
			if op.Origin == OriginBackfill {
				e.backfillOpen.Add(1)
			}
		}
		e.sched.Add(ops...)
	}
}

// mayRun checks, in cluster mode, that an op handed to a worker is still
// this node's to run and still unfinished; it returns the context its
// copy runs under, which ends when the key's lease does.
func (e *Engine) mayRun(ctx context.Context, op *Op) (context.Context, context.CancelFunc, bool) {
	if e.cluster == nil {
		return ctx, func() {}, true
	}
	if _, ok := e.cluster.Owned(op.DestKeyID()); !ok || e.releasingKey(op.DestKeyID()) {
		e.forget(op)
		return nil, nil, false
	}
	cur, err := e.cluster.Current(ctx, op)
	switch {
	case err != nil:
		e.retryLater(ctx, op, err)
		return nil, nil, false
	case cur == nil || cur.State.Terminal() && cur.State != Failed:
		e.forget(op) // finished meanwhile (by this node before, or another)
		return nil, nil, false
	}
	if !cur.WriteStarted.IsZero() && op.WriteStarted.IsZero() {
		op.WriteStarted = cur.WriteStarted
	}
	lctx, cancel := context.WithCancelCause(ctx)
	var timer *time.Timer
	var mu sync.Mutex
	var check func()
	check = func() {
		dl, ok := e.cluster.Owned(op.DestKeyID())
		if !ok {
			cancel(errNotOwner)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if lctx.Err() == nil {
			// Look again by the deadline, and at least every second: a
			// renewal moves it on.
			timer = time.AfterFunc(min(time.Until(dl), time.Second), check)
		}
	}
	check()
	return lctx, func() {
		cancel(nil)
		mu.Lock()
		if timer != nil {
			timer.Stop()
		}
		mu.Unlock()
	}, true
}

// forget drops an op from memory without recording anything: it is not
// this node's any more, or it is finished.
func (e *Engine) forget(op *Op) {
	if op.Origin == OriginBackfill {
		e.backfillOpen.Add(-1)
	}
	e.sched.Done(op, true)
}

// lostLease reports whether err (or the op's context) says this node no
// longer holds the op's key.
func (e *Engine) lostLease(ctx context.Context, err error) bool {
	if e.cluster == nil {
		return false
	}
	return errors.Is(context.Cause(ctx), errNotOwner) || err != nil && e.cluster.LeaseLost(err)
}

// clusterGaugesEvery is how often the leading node reads the cluster's
// backlog from the store for the pending gauges.
const clusterGaugesEvery = 15 * time.Second

// refreshClusterGauges sets the pending gauges from the whole cluster's
// backlog on the leading node, and to zero on the others, so that a sum
// over the nodes counts every op once.
func (e *Engine) refreshClusterGauges(ctx context.Context) {
	t := time.NewTicker(clusterGaugesEvery)
	defer t.Stop()
	for {
		ops, bytes := map[string]int64{}, map[string]int64{}
		if e.cluster.Leads() {
			var err error
			if ops, bytes, err = e.cfg.State.Counts(ctx); err != nil {
				e.log.Warn("cannot read the cluster's backlog for the pending gauges", "err", err)
			}
		}
		for _, r := range e.rules {
			e.m.pending.WithLabelValues(r.ID).Set(float64(ops[r.ID]))
			e.m.bytesPending.WithLabelValues(r.ID).Set(float64(bytes[r.ID]))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
