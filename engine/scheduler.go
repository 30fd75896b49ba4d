package engine

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/s3replicad/s3replicad/engine/event"
)

// scheduler hands out pending ops to workers. Ops for one destination key
// run one at a time, oldest sequencer first; keys whose head op comes from a
// live event are served before keys that only hold backfill work; an op
// waiting for its backoff does not hold up other keys.
type scheduler struct {
	mu      sync.Mutex
	keys    map[string]*keyQueue
	ready   [2][]*keyQueue // [0] live, [1] backfill
	wake    chan struct{}
	count   int    // ops held
	onReady func() // test hook
	// onLow is called (with the lock held: it must not block) when the
	// ops held fall to low.
	low   int
	onLow func()
}

type keyQueue struct {
	id      string
	ops     []*Op // sorted by sequencer, then arrival
	busy    bool  // head op is with a worker
	queued  bool  // in a ready list
	waiting bool  // head op waits for its NextAttempt
	timer   *time.Timer
}

func newScheduler() *scheduler {
	return &scheduler{keys: map[string]*keyQueue{}, wake: make(chan struct{}, 1)}
}

// opBefore orders ops of one key: by sequencer when both have one, else
// keep arrival order.
func opBefore(a, b *Op) bool {
	if a.Sequencer != "" && b.Sequencer != "" {
		return event.CompareSequencer(a.Sequencer, b.Sequencer) < 0
	}
	return false
}

// Add queues ops; an op whose ID is already held is ignored.
func (s *scheduler) Add(ops ...*Op) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, op := range ops {
		kq := s.keys[op.DestKeyID()]
		if kq == nil {
			kq = &keyQueue{id: op.DestKeyID()}
			s.keys[kq.id] = kq
		}
		dup := false
		for _, o := range kq.ops {
			if o.ID() == op.ID() {
				dup = true
				break
			}
		}
		if dup {
			continue
		}
		// Insert after every op it does not sort before; the head op stays
		// put while a worker has it.
		i := len(kq.ops)
		for i > 0 && opBefore(op, kq.ops[i-1]) && !(kq.busy && i-1 == 0) {
			i--
		}
		kq.ops = append(kq.ops, nil)
		copy(kq.ops[i+1:], kq.ops[i:])
		kq.ops[i] = op
		s.count++
		if i == 0 && kq.waiting && op.NextAttempt.IsZero() {
			// A new head that needs no backoff runs at once.
			kq.timer.Stop()
			kq.waiting = false
		}
		s.makeReadyLocked(kq)
	}
}

func (s *scheduler) makeReadyLocked(kq *keyQueue) {
	if kq.busy || kq.queued || kq.waiting || len(kq.ops) == 0 {
		return
	}
	head := kq.ops[0]
	if d := time.Until(head.NextAttempt); d > 0 {
		kq.waiting = true
		kq.timer = time.AfterFunc(d, func() {
			s.mu.Lock()
			kq.waiting = false
			s.makeReadyLocked(kq)
			s.mu.Unlock()
		})
		return
	}
	class := 0
	if head.Origin == OriginBackfill {
		class = 1
	}
	kq.queued = true
	s.ready[class] = append(s.ready[class], kq)
	select {
	case s.wake <- struct{}{}:
	default:
	}
	if s.onReady != nil {
		s.onReady()
	}
}

// Next blocks until an op is ready or ctx ends.
func (s *scheduler) Next(ctx context.Context) (*Op, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err // stopping: start nothing new
		}
		s.mu.Lock()
		for class := range s.ready {
			for len(s.ready[class]) > 0 {
				kq := s.ready[class][0]
				s.ready[class][0] = nil
				s.ready[class] = s.ready[class][1:]
				kq.queued = false
				if kq.busy || kq.waiting || len(kq.ops) == 0 {
					continue
				}
				kq.busy = true
				op := kq.ops[0]
				more := len(s.ready[0])+len(s.ready[1]) > 0
				s.mu.Unlock()
				if more {
					// Pass the wake-up on so another idle worker looks too.
					select {
					case s.wake <- struct{}{}:
					default:
					}
				}
				return op, nil
			}
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.wake:
		}
	}
}

// Done releases an op's key. When finished is false the op stays at the
// head of its key and runs again at op.NextAttempt.
func (s *scheduler) Done(op *Op, finished bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	kq := s.keys[op.DestKeyID()]
	if kq == nil {
		return
	}
	kq.busy = false
	if finished {
		for i, o := range kq.ops {
			if o == op {
				kq.ops = append(kq.ops[:i], kq.ops[i+1:]...)
				s.count--
				if s.count == s.low && s.onLow != nil {
					s.onLow()
				}
				break
			}
		}
	}
	// Ops that arrived while the head was busy may sort before it.
	sort.SliceStable(kq.ops, func(i, j int) bool { return opBefore(kq.ops[i], kq.ops[j]) })
	if len(kq.ops) == 0 {
		delete(s.keys, kq.id)
		return
	}
	s.makeReadyLocked(kq)
}

// WakeAll ends every backoff wait: the ops held back by a failure run as
// soon as a worker is free. Called when a copy succeeds after failures, so
// that a backlog held up by an outage drains as soon as it ends rather
// than when each op's own backoff runs out.
func (s *scheduler) WakeAll() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, kq := range s.keys {
		if !kq.waiting {
			continue
		}
		kq.timer.Stop()
		kq.waiting = false
		kq.ops[0].NextAttempt = time.Time{}
		s.makeReadyLocked(kq)
		n++
	}
	return n
}

// Running counts the ops with a worker, by rule.
func (s *scheduler) Running() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := map[string]int{}
	for _, kq := range s.keys {
		if kq.busy && len(kq.ops) > 0 {
			n[kq.ops[0].Rule]++
		}
	}
	return n
}

// Held returns the ops held.
func (s *scheduler) Held() []*Op {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ops []*Op
	for _, kq := range s.keys {
		ops = append(ops, kq.ops...)
	}
	return ops
}

// Len is the number of ops held.
func (s *scheduler) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// Close stops backoff timers.
func (s *scheduler) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, kq := range s.keys {
		if kq.timer != nil {
			kq.timer.Stop()
		}
	}
}
