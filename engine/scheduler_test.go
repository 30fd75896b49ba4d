package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var errSlowDown = &Error{Class: Transient, Reason: ReasonThrottled, Err: errors.New("SlowDown")}

func testAdaptive(ceiling int) *adaptive {
	return newAdaptive(ceiling, prometheus.NewGauge(prometheus.GaugeOpts{Name: "g"}), prometheus.NewCounter(prometheus.CounterOpts{Name: "c"}))
}

func testOp(dest string, i int) *Op {
	return &Op{Rule: "r", Bucket: "b", Key: fmt.Sprintf("k%04d", i), VersionID: "v", Dest: dest, DestBucket: "d",
		DestKey: fmt.Sprintf("k%04d", i), Action: ActionCopy, Origin: OriginEvent, State: Pending}
}

// A destination that refuses more than 4 operations at a time: its limit
// falls from the ceiling to about what it takes, every operation eventually
// succeeds, and once the pressure is gone the limit climbs back.
func TestAdaptiveLimitBacksOffAndRecovers(t *testing.T) {
	gauge := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g"})
	a := newAdaptive(32, gauge, prometheus.NewCounter(prometheus.CounterOpts{Name: "c"}))
	a.cooldown = 0 // every refusal counts, to converge within the test
	s := newScheduler(64, map[string]*adaptive{"d": a})
	a.onRaise = s.poke
	const ops, capacity = 1280, 4
	for i := range ops {
		s.Add(testOp("d", i))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var inFlight, refusals, successes atomic.Int64
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				op, err := s.Next(ctx)
				if err != nil {
					return
				}
				if inFlight.Add(1) > capacity {
					inFlight.Add(-1)
					refusals.Add(1)
					a.observe(errSlowDown)
					s.Done(op, false)
					continue
				}
				time.Sleep(100 * time.Microsecond)
				inFlight.Add(-1)
				a.observe(nil)
				if successes.Add(1) == ops {
					cancel()
				}
				s.Done(op, true)
			}
		}()
	}
	wg.Wait()
	if successes.Load() != ops {
		t.Fatalf("%d successes, want %d", successes.Load(), ops)
	}
	if refusals.Load() == 0 {
		t.Fatal("the destination never refused: the test did not exercise back-off")
	}
	t.Logf("%d refusals for %d successes", refusals.Load(), successes.Load())
	if refusals.Load() > successes.Load()/2 {
		t.Errorf("%d refusals for %d successes: the limit did not adapt to the destination", refusals.Load(), successes.Load())
	}
	if got := testutil.ToFloat64(gauge); got != float64(a.Limit()) {
		t.Errorf("gauge %v, limit %v", got, a.Limit())
	}
	for range 1000 {
		a.observe(nil)
	}
	if a.Limit() != 32 {
		t.Errorf("limit %v after 1000 successes, want back at the ceiling 32", a.Limit())
	}
}

func TestSchedulerNextHonoursContext(t *testing.T) {
	s := newScheduler(4, map[string]*adaptive{"d": testAdaptive(1)})
	s.Add(testOp("d", 1), testOp("d", 2))
	if _, err := s.Next(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The destination's limit is 1 and its op is out: the next waits.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := s.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Next at limit 1: %v, want the context's error", err)
	}
}

// Destination B never answers: every worker that takes one of its ops is
// stuck with it. A's ops must all still run, on the workers B cannot take.
func TestStalledDestinationDoesNotStarveAnother(t *testing.T) {
	const workers = 8
	s := newScheduler(workers, map[string]*adaptive{"A": testAdaptive(workers), "B": testAdaptive(workers)})
	for i := range 40 {
		s.Add(testOp("B", i))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stuck, doneA atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				op, err := s.Next(ctx)
				if err != nil {
					return
				}
				if op.Dest == "B" {
					stuck.Add(1)
					<-ctx.Done() // stalled for good
					return
				}
				doneA.Add(1)
				s.Done(op, true)
			}
		}()
	}
	// B's ops arrive first and take what they may; then A's arrive.
	time.Sleep(20 * time.Millisecond)
	for i := range 40 {
		s.Add(testOp("A", i))
	}
	deadline := time.Now().Add(5 * time.Second)
	for doneA.Load() < 40 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	wg.Wait()
	if doneA.Load() != 40 {
		t.Fatalf("%d of A's 40 ops ran while B stalled with %d workers", doneA.Load(), stuck.Load())
	}
	if stuck.Load() >= workers {
		t.Fatalf("B holds %d of %d workers", stuck.Load(), workers)
	}
	t.Logf("B held %d of %d workers; A's ops all ran", stuck.Load(), workers)
}

// With one destination, its limit alone bounds it: all workers can serve it.
func TestOneDestinationUsesEveryWorker(t *testing.T) {
	const workers = 8
	s := newScheduler(workers, map[string]*adaptive{"A": testAdaptive(workers)})
	for i := range workers {
		s.Add(testOp("A", i))
	}
	for range workers {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := s.Next(ctx)
		cancel()
		if err != nil {
			t.Fatalf("worker could not take an op: %v", err)
		}
	}
}

// Waking after a recovery wakes only the ops that match (those held back
// by the destination that recovered).
func TestWakeOnlyMatchingOps(t *testing.T) {
	s := newScheduler(4, nil)
	a, b := testOp("A", 1), testOp("B", 2)
	far := time.Now().Add(time.Hour)
	a.NextAttempt, b.NextAttempt = far, far
	s.Add(a, b)
	if n := s.Wake(func(o *Op) bool { return o.Dest == "A" }); n != 1 {
		t.Fatalf("woke %d ops, want 1", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	op, err := s.Next(ctx)
	if err != nil || op != a {
		t.Fatalf("Next = %v, %v; want A's op", op, err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	if op, err := s.Next(ctx2); err == nil {
		t.Fatalf("B's op %v ran before its backoff ended", op)
	}
	s.Close()
}
