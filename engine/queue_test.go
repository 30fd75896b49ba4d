package engine_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/s3replicad/s3replicad/engine"
)

// refusingQueue refuses for good (as a missing queue does) until fixed.
type refusingQueue struct {
	fixed    atomic.Bool
	receives atomic.Int64
}

func (q *refusingQueue) Receive(context.Context) ([]engine.Message, error) {
	q.receives.Add(1)
	if !q.fixed.Load() {
		return nil, &engine.Error{Class: engine.Permanent, Reason: engine.ReasonInvalid, Err: errors.New("QueueDoesNotExist: the specified queue does not exist")}
	}
	return nil, nil
}
func (q *refusingQueue) Delete(context.Context, []engine.Message) error { return nil }
func (q *refusingQueue) ExtendVisibility(context.Context, []engine.Message, time.Duration) error {
	return nil
}

// A queue that refuses for good is not retried quietly: the daemon is not
// ready and says why, the gauge shows it, and once the queue answers it
// is ready again by itself.
func TestAQueueThatRefusesIsVisible(t *testing.T) {
	q := &refusingQueue{}
	reg := prometheus.NewRegistry()
	e, err := engine.New(engine.Config{
		Rules:  []engine.Rule{{ID: "r", Enabled: true, SourceBucket: "src", Destination: "d", DestinationBucket: "dst"}},
		Source: newMem(), Destinations: map[string]engine.Destination{"d": newMem()},
		State: openState(t), Queue: q, Pollers: 1, Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for q.receives.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	ok, why := e.Ready()
	if ok || !strings.Contains(why, "refuses") || !strings.Contains(why, "QueueDoesNotExist") {
		t.Fatalf("Ready() = %v, %q with a queue that does not exist", ok, why)
	}
	if v := testutil.ToFloat64(mustGauge(t, reg, "s3replicad_queue_refused")); v != 1 {
		t.Fatalf("s3replicad_queue_refused = %v, want 1", v)
	}
	n := q.receives.Load()
	time.Sleep(time.Second)
	if more := q.receives.Load() - n; more > 1 {
		t.Fatalf("%d receives in a second against a queue that refuses for good", more)
	}
	q.fixed.Store(true)
	deadline = time.Now().Add(15 * time.Second)
	for ok, _ := e.Ready(); !ok && time.Now().Before(deadline); ok, _ = e.Ready() {
		time.Sleep(20 * time.Millisecond)
	}
	if ok, why := e.Ready(); !ok {
		t.Fatalf("still not ready once the queue answers: %s", why)
	}
	if v := testutil.ToFloat64(mustGauge(t, reg, "s3replicad_queue_refused")); v != 0 {
		t.Fatalf("s3replicad_queue_refused = %v once the queue answers, want 0", v)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func mustGauge(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) == 1 {
			g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name})
			g.Set(mf.Metric[0].GetGauge().GetValue())
			return g
		}
	}
	t.Fatalf("no gauge %s", name)
	return nil
}
