package engine

import (
	"context"
	"errors"
	"syscall"
	"time"
)

// Intake records what the queue and backfill ask for in the state file and
// decides what the workers see of it. The state file holds the whole
// backlog, however large; memory holds a window of at most MaxBacklog ops,
// refilled from the file in arrival order (live events before backfill) as
// the workers finish ops. So intake never stops while a destination is
// down: messages go on being recorded and deleted from the queue, and the
// backlog is bounded by the state file's disk, not by memory or by the
// queue's retention.
//
// One goroutine does all of it, so that recording (in group commits: every
// batch waiting is written in one transaction) and the window's edge move
// in one order, without locks.

// recordReq asks the intake to record ops.
type recordReq struct {
	ops   []*Op
	reply chan recordResult
}

type recordResult struct {
	added []*Op
	err   error
}

// spill tracks, for one origin, where the window's edge is: every
// unfinished op of that origin recorded up to through is in memory or done;
// on says there may be more in the file.
type spill struct {
	through uint64
	on      bool
}

func originClass(o Origin) int {
	if o == OriginBackfill {
		return 1
	}
	return 0
}

var origins = [2]Origin{OriginEvent, OriginBackfill}

// record hands ops to the intake and waits until they are durable.
func (e *Engine) record(ctx context.Context, ops []*Op) ([]*Op, error) {
	req := recordReq{ops: ops, reply: make(chan recordResult, 1)}
	select {
	case e.records <- req:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-e.intakeDone:
		return nil, ErrClosed
	}
	select {
	case r := <-req.reply:
		return r.added, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// maxGroup bounds the requests recorded in one transaction.
const maxGroup = 64

// runIntake records, refills the window and watches a full disk until ctx
// ends.
func (e *Engine) runIntake(ctx context.Context) {
	defer close(e.intakeDone)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var changes <-chan struct{}
	if e.cluster != nil {
		changes = e.cluster.Changes()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-changes:
			// Keys gained or lost: drop what is another node's now, and ask
			// for what is this node's.
			e.dropLost()
			e.clusterFill(ctx, true)
		case req := <-e.records:
			group := []recordReq{req}
		more:
			for len(group) < maxGroup {
				select {
				case r := <-e.records:
					group = append(group, r)
				default:
					break more
				}
			}
			e.recordGroup(ctx, group)
		case <-e.refill:
			e.fill(ctx)
		case <-tick.C:
			if e.paused.Load() {
				e.probeDisk(ctx)
			} else {
				e.fill(ctx)
			}
		}
	}
}

func (e *Engine) recordGroup(ctx context.Context, group []recordReq) {
	var all []*Op
	for _, r := range group {
		all = append(all, r.ops...)
	}
	if e.paused.Load() {
		for _, r := range group {
			r.reply <- recordResult{err: errPaused}
		}
		return
	}
	added, err := e.cfg.State.Record(ctx, all)
	if err != nil {
		e.stateFailed(err)
		for _, r := range group {
			r.reply <- recordResult{err: err}
		}
		return
	}
	e.admit(added)
	isNew := make(map[*Op]bool, len(added))
	for _, op := range added {
		isNew[op] = true
	}
	for _, r := range group {
		var mine []*Op
		for _, op := range r.ops {
			if isNew[op] {
				mine = append(mine, op)
			}
		}
		r.reply <- recordResult{added: mine}
	}
}

// admit counts newly recorded ops and puts into memory those that fit in
// the window; the rest wait in the state file.
func (e *Engine) admit(ops []*Op) {
	if e.cluster != nil {
		for _, op := range ops {
			if op.State == Skipped {
				e.m.skipped.WithLabelValues(op.Rule).Inc()
			}
		}
		// This node runs the ops of its own keys at once; the others wait
		// in the table for their owners.
		mine := e.cluster.Claim(ops)
		for _, op := range mine {
			e.hold(op)
			if op.Origin == OriginBackfill {
				e.backfillOpen.Add(1)
			}
		}
		e.sched.Add(mine...)
		return
	}
	for _, op := range ops {
		switch op.State {
		case Pending, InFlight:
			e.m.track(op, 1)
			if op.Origin == OriginBackfill {
				e.backfillOpen.Add(1)
			}
		case Skipped:
			e.m.skipped.WithLabelValues(op.Rule).Inc()
			continue
		default:
			continue
		}
		sp := &e.spill[originClass(op.Origin)]
		if !sp.on && e.sched.Len() < e.cfg.MaxBacklog {
			// Read before the op is handed out: a worker's save writes it.
			sp.through = max(sp.through, op.Seq)
			e.hold(op)
			e.sched.Add(op)
		} else {
			sp.on = true
		}
	}
}

// fill tops the window up from the state file: live ops first.
func (e *Engine) fill(ctx context.Context) {
	if e.cluster != nil {
		e.clusterFill(ctx, false)
		return
	}
	for class, origin := range origins {
		sp := &e.spill[class]
		room := e.cfg.MaxBacklog - e.sched.Len()
		if !sp.on || room <= 0 {
			continue
		}
		ops, more, err := e.cfg.State.Pending(ctx, origin, sp.through, room)
		if err != nil {
			e.log.Error("cannot read the backlog from the state file; trying again", "err", err)
			return
		}
		for _, op := range ops {
			e.prepare(op)
			e.hold(op)
			sp.through = max(sp.through, op.Seq)
		}
		e.sched.Add(ops...)
		if !more {
			sp.on = false
		}
	}
}

// crashSettle is how long after a start that follows a crash the crashed
// run's unfinished ops wait: a request it had sent in full may still be
// landing at the store (the kill loop saw one land 70 ms after the restart,
// after the lookup that missed it), and their replica lookup must find it.
const crashSettle = 2 * time.Second

// prepare readies an op read back from the state file: an op that was
// unfinished when a run crashed may have been written without its write
// mark being saved, so it looks for its replica before writing, once what
// the crashed run had in flight has landed.
func (e *Engine) prepare(op *Op) {
	if op.Seq > e.suspect {
		return
	}
	if op.WriteStarted.IsZero() {
		// Nothing is written before an op is recorded.
		op.WriteStarted = op.Recorded
		if op.WriteStarted.IsZero() {
			op.WriteStarted = time.Unix(0, 0)
		}
	}
	if op.NextAttempt.Before(e.settleUntil) {
		op.NextAttempt = e.settleUntil
	}
}

// hold keeps an op from a fresh event back until OrderWindow after the
// event: an older version of the key whose event crossed it in the queue
// then arrives first and is written first, with no copy on top. An event
// older than that (a backlog) is not held.
func (e *Engine) hold(op *Op) {
	if e.cfg.OrderWindow <= 0 || op.Origin != OriginEvent || op.Sequencer == "" || op.EventTime.IsZero() {
		return
	}
	at := op.EventTime.Add(e.cfg.OrderWindow)
	if limit := op.Recorded.Add(e.cfg.OrderWindow); at.After(limit) {
		at = limit // an event dated in the future is held no longer
	}
	if at.After(op.NextAttempt) && at.After(time.Now()) {
		op.NextAttempt = at
	}
}

// errPaused is what a record meets while the state disk is full.
var errPaused = errors.New("intake is paused: the state file's disk is full")

// diskFull reports whether a state file error means its disk (or the
// user's quota on it) is full.
func diskFull(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// stateFailed reacts to a failed state file write: a full disk pauses
// intake and the workers until a write succeeds again.
func (e *Engine) stateFailed(err error) {
	e.m.stateErrors.Inc()
	if !diskFull(err) {
		e.log.Error("cannot write the state file; messages will be redelivered", "err", err)
		return
	}
	if e.paused.CompareAndSwap(false, true) {
		e.m.intakePaused.Set(1)
		e.log.Error("the state file's disk is full: intake and copies are paused, nothing is deleted from the queue that is not recorded; both resume by themselves once space is freed",
			"state", e.statePath, "err", err)
		e.wakePaused()
	}
}

// SpaceProber is a StateStore on a disk that can fill: Probe succeeds only
// when a write that needs new space would (a write of nothing succeeds on a
// full disk).
type SpaceProber interface {
	Probe(ctx context.Context) error
}

// probeDisk ends the pause when the state store can grow again.
func (e *Engine) probeDisk(ctx context.Context) {
	var err error
	if p, ok := e.cfg.State.(SpaceProber); ok {
		err = p.Probe(ctx)
	} else {
		err = e.cfg.State.SaveAll(ctx, nil)
	}
	if err != nil {
		return
	}
	if e.paused.CompareAndSwap(true, false) {
		e.m.intakePaused.Set(0)
		e.log.Info("the state file's disk has space again: intake and copies resume")
		e.wakePaused()
		e.fill(ctx)
	}
}

// wakePaused lets whoever waits on a pause change look again.
func (e *Engine) wakePaused() {
	e.pauseMu.Lock()
	close(e.pauseChanged)
	e.pauseChanged = make(chan struct{})
	e.pauseMu.Unlock()
}

// waitUnpaused blocks while the state disk is full.
func (e *Engine) waitUnpaused(ctx context.Context) error {
	for {
		e.pauseMu.Lock()
		ch := e.pauseChanged
		e.pauseMu.Unlock()
		if !e.paused.Load() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// Paused reports whether intake is paused by a full state disk.
func (e *Engine) Paused() bool { return e.paused.Load() }
