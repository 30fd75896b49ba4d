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
//
// Ready work is queued per destination (a lane), and a worker only takes
// an op whose destination may have one more in flight: below its adaptive
// limit, and within its fair share of the workers while other destinations
// have work (it may borrow idle workers beyond its share, but never the
// last one another destination with work could use). So a destination that
// stalls or throttles holds few workers, and no worker waits on one
// destination while another has work.
type scheduler struct {
	mu      sync.Mutex
	keys    map[string]*keyQueue
	lanes   map[string]*lane
	order   []*lane // round robin over destinations
	next    int
	workers int
	busy    int // ops handed out and not yet done, all lanes
	// wake carries a token to an idle worker for each op that became
	// ready or each op's worth of room a lane got: one worker looks again,
	// not all of them (waking every idle worker for every ready op was a
	// tenth of the daemon's CPU on a backlog of small objects).
	wake  chan struct{}
	idle  int // workers waiting for a token
	count int // ops held
	// onLow is called (with the lock held: it must not block) when the
	// ops held fall to low.
	low   int
	onLow func()
	now   func() time.Time
}

// lane is one destination's share of the scheduler.
type lane struct {
	name     string
	conc     *adaptive      // the destination's limit; nil: none
	ready    [2][]*keyQueue // [0] live, [1] backfill
	inFlight int            // ops of this lane with a worker
	held     int            // ops held for this destination
	lastBusy time.Time      // last time one of its ops started or ended
}

// activeWindow is how long a destination counts as having work after its
// last op: a destination whose ops are fast is rarely caught with one
// queued, and must still keep its share.
const activeWindow = 10 * time.Second

type keyQueue struct {
	id      string
	lane    *lane
	ops     []*Op // sorted by sequencer, then arrival
	busy    bool  // head op is with a worker
	queued  bool  // in a ready list
	waiting bool  // head op waits for its NextAttempt
	timer   *time.Timer
}

// newScheduler builds a scheduler for workers workers; limits are the
// destinations' adaptive limits (a destination without one is bounded by
// its share only).
func newScheduler(workers int, limits map[string]*adaptive) *scheduler {
	s := &scheduler{keys: map[string]*keyQueue{}, lanes: map[string]*lane{}, workers: max(workers, 1),
		wake: make(chan struct{}, max(workers, 1)), now: time.Now}
	for name, a := range limits {
		s.laneLocked(name).conc = a
	}
	return s
}

func (s *scheduler) laneLocked(name string) *lane {
	l := s.lanes[name]
	if l == nil {
		l = &lane{name: name}
		s.lanes[name] = l
		s.order = append(s.order, l)
		sort.Slice(s.order, func(i, j int) bool { return s.order[i].name < s.order[j].name })
	}
	return l
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
			kq = &keyQueue{id: op.DestKeyID(), lane: s.laneLocked(op.Dest)}
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
		kq.lane.held++
		if i == 0 && kq.waiting {
			// A new head waits for its own time, not the old head's.
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
	if d := head.NextAttempt.Sub(s.now()); d > 0 {
		kq.waiting = true
		kq.timer = time.AfterFunc(d, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if !kq.waiting {
				return
			}
			kq.waiting = false
			s.makeReadyLocked(kq)
		})
		return
	}
	class := 0
	if head.Origin == OriginBackfill {
		class = 1
	}
	kq.queued = true
	kq.lane.ready[class] = append(kq.lane.ready[class], kq)
	s.signalLocked(1)
}

// signalLocked wakes up to n idle workers to look for work again. A token
// sent while no worker waits stays for the next one to wait: no wake-up is
// lost, and a spare one costs a look.
func (s *scheduler) signalLocked(n int) {
	for range min(n, max(s.idle, 1)) {
		select {
		case s.wake <- struct{}{}:
		default:
			return // every waiting worker has one already
		}
	}
}

// poke wakes idle workers: a destination's limit rose.
func (s *scheduler) poke() {
	s.mu.Lock()
	s.signalLocked(s.workers)
	s.mu.Unlock()
}

// Next blocks until an op may run or ctx ends.
func (s *scheduler) Next(ctx context.Context) (*Op, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err // stopping: start nothing new
		}
		s.mu.Lock()
		op := s.pickLocked()
		if op == nil {
			s.idle++
		}
		s.mu.Unlock()
		if op != nil {
			return op, nil
		}
		var err error
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-s.wake:
		}
		s.mu.Lock()
		s.idle--
		s.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
}

// pickLocked takes the first ready op, live work first, going round the
// destinations that may run one more.
func (s *scheduler) pickLocked() *Op {
	now := s.now()
	n := len(s.order)
	for class := range 2 {
		for i := 0; i < n; i++ {
			l := s.order[(s.next+i)%n]
			q := l.ready[class]
			for len(q) > 0 && (q[0].busy || q[0].waiting || len(q[0].ops) == 0) {
				q[0].queued = false
				q[0] = nil
				q = q[1:]
			}
			l.ready[class] = q
			if len(q) == 0 || !s.admitLocked(l, now) {
				continue
			}
			kq := q[0]
			q[0] = nil
			l.ready[class] = q[1:]
			kq.queued, kq.busy = false, true
			l.inFlight++
			l.lastBusy = now
			s.busy++
			s.next = (s.next + i + 1) % n
			return kq.ops[0]
		}
	}
	return nil
}

// admitLocked reports whether lane l may have one more op in flight. Every
// destination gets its first worker whenever one is free; beyond that, a
// destination takes workers up to its fair share of them (among the
// destinations with work) while leaving one free for each other
// destination that has none in flight; it borrows idle workers beyond its
// share only while it answers well (no throttling or timeouts lately), and
// never the last one another destination below its share could use.
func (s *scheduler) admitLocked(l *lane, now time.Time) bool {
	if l.conc != nil && l.inFlight >= l.conc.Limit() {
		return false
	}
	free := s.workers - s.busy
	if free <= 0 {
		return false
	}
	if l.inFlight == 0 {
		return true
	}
	active, idle := 0, 0
	for _, o := range s.order {
		if o == l || o.active(now) {
			active++
		}
		if o != l && o.inFlight == 0 {
			idle++
		}
	}
	idle = min(idle, s.workers/2) // a lone busy destination keeps half at least
	share := (s.workers + active - 1) / active
	if l.inFlight < share {
		return free-1 >= idle
	}
	if l.conc != nil && !l.conc.healthy(now) {
		return false
	}
	reserve := idle
	for _, o := range s.order {
		if o != l && o.inFlight > 0 && o.active(now) && o.inFlight < share {
			reserve++
		}
	}
	return free-1 >= reserve
}

func (l *lane) active(now time.Time) bool {
	return l.held > 0 || l.inFlight > 0 || now.Sub(l.lastBusy) < activeWindow
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
	if kq.busy {
		kq.busy = false
		kq.lane.inFlight--
		kq.lane.lastBusy = s.now()
		s.busy--
	}
	if finished {
		for i, o := range kq.ops {
			if o == op {
				kq.ops = append(kq.ops[:i], kq.ops[i+1:]...)
				s.count--
				kq.lane.held--
				if s.count == s.low && s.onLow != nil {
					s.onLow()
				}
				break
			}
		}
	}
	// Ops that arrived while the head was busy may sort before it.
	if len(kq.ops) > 1 {
		sort.SliceStable(kq.ops, func(i, j int) bool { return opBefore(kq.ops[i], kq.ops[j]) })
	}
	if len(kq.ops) == 0 {
		delete(s.keys, kq.id)
	} else {
		s.makeReadyLocked(kq)
	}
	// The lane has room for another op.
	s.signalLocked(1)
}

// Wake ends the backoff wait of every key whose head op match selects: the
// ops held back by a failure run as soon as a worker is free. Called when a
// copy succeeds after failures, so that a backlog held up by an outage
// drains as soon as it ends rather than when each op's own backoff runs
// out.
func (s *scheduler) Wake(match func(*Op) bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, kq := range s.keys {
		if !kq.waiting || !match(kq.ops[0]) {
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

// Drop removes the ops match selects that no worker has (cluster mode:
// keys handed to another node) and returns them, with the number of
// matching ops still with a worker.
func (s *scheduler) Drop(match func(*Op) bool) (dropped []*Op, busy int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, kq := range s.keys {
		kept := kq.ops[:0]
		for i, op := range kq.ops {
			switch {
			case !match(op):
				kept = append(kept, op)
			case i == 0 && kq.busy:
				kept = append(kept, op)
				busy++
			default:
				dropped = append(dropped, op)
				s.count--
				kq.lane.held--
			}
		}
		for i := len(kept); i < len(kq.ops); i++ {
			kq.ops[i] = nil
		}
		if len(kept) == len(kq.ops) {
			continue
		}
		kq.ops = kept
		if kq.timer != nil {
			kq.timer.Stop()
		}
		kq.waiting = false
		if len(kq.ops) == 0 {
			delete(s.keys, id)
		} else {
			s.makeReadyLocked(kq) // a new head, with its own time
		}
	}
	if len(dropped) > 0 {
		s.signalLocked(s.workers)
	}
	return dropped, busy
}

// Busy is the number of ops with a worker.
func (s *scheduler) Busy() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.busy
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
