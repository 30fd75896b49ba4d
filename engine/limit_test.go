package engine

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var errSlowDown = &Error{Class: Transient, Reason: ReasonThrottled, Err: errors.New("SlowDown")}

// A destination that refuses more than 4 requests at a time: the limit
// falls from its ceiling to about what the destination takes, every
// request eventually succeeds, and once the pressure is gone the limit
// climbs back to the ceiling.
func TestAdaptiveConcurrencyBacksOffAndRecovers(t *testing.T) {
	gauge := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g"})
	throttled := prometheus.NewCounter(prometheus.CounterOpts{Name: "c"})
	a := newAdaptive(32, gauge, throttled)
	a.cooldown = 0 // every refusal counts, to converge within the test

	const capacity = 4
	var inFlight, refusals, successes atomic.Int64
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for done := 0; done < 20; {
				if err := a.acquire(context.Background()); err != nil {
					t.Error(err)
					return
				}
				var err error
				if inFlight.Add(1) > capacity {
					err = errSlowDown
					refusals.Add(1)
				} else {
					time.Sleep(100 * time.Microsecond)
					successes.Add(1)
					done++
				}
				inFlight.Add(-1)
				a.release(err)
			}
		}()
	}
	wg.Wait()
	if successes.Load() != 64*20 {
		t.Fatalf("%d successes, want %d", successes.Load(), 64*20)
	}
	if refusals.Load() == 0 {
		t.Fatal("the destination never refused: the test did not exercise back-off")
	}
	// At a fixed limit of 32 most attempts would be refused (28 of every
	// 32); adapting keeps refusals well under the successes.
	t.Logf("%d refusals for %d successes", refusals.Load(), successes.Load())
	if refusals.Load() > successes.Load()/2 {
		t.Errorf("%d refusals for %d successes: the limit did not adapt to the destination", refusals.Load(), successes.Load())
	}
	if got := testutil.ToFloat64(gauge); got != float64(int(a.limit)) {
		t.Errorf("gauge %v, limit %v", got, a.limit)
	}

	for range 1000 {
		_ = a.acquire(context.Background())
		a.release(nil)
	}
	if a.limit != 32 {
		t.Errorf("limit %v after 1000 successes, want back at the ceiling 32", a.limit)
	}
}

func TestAdaptiveAcquireHonoursContext(t *testing.T) {
	a := newAdaptive(1, prometheus.NewGauge(prometheus.GaugeOpts{Name: "g"}), prometheus.NewCounter(prometheus.CounterOpts{Name: "c"}))
	if err := a.acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := a.acquire(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second acquire at limit 1: %v, want the context's error", err)
	}
}

// The pacer books writes back to back at the configured rate; idle time
// does not build up a burst.
func TestPacerSpacesWritesAtTheRate(t *testing.T) {
	p := &pacer{rate: 1000} // bytes per second
	t0 := time.Unix(1000, 0)
	for _, c := range []struct {
		now  time.Time
		n    int64
		want time.Duration
	}{
		{t0, 500, 0},
		{t0, 500, 500 * time.Millisecond},
		{t0, 1000, time.Second},
		{t0.Add(10 * time.Second), 100, 10 * time.Second},
		{t0.Add(10 * time.Second), 100, 10*time.Second + 100*time.Millisecond},
	} {
		if got := p.reserve(c.now, c.n).Sub(t0); got != c.want {
			t.Errorf("reserve(%v, %d) at +%v, want +%v", c.now.Sub(t0), c.n, got, c.want)
		}
	}
}

func TestPushback(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errSlowDown, true},
		{context.DeadlineExceeded, true},
		{context.Canceled, false},
		{&Error{Class: Permanent, Reason: ReasonAccessDenied, Err: errors.New("denied")}, false},
		{&Error{Class: Transient, Reason: ReasonServerError, Err: errors.New("500")}, false},
	} {
		if got := pushback(c.err); got != c.want {
			t.Errorf("pushback(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
