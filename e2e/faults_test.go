package e2e

import (
	"net/http"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/internal/faultproxy"
	"github.com/s3replicad/s3replicad/internal/testenv"
)

// markerRules replicate delete markers, so that faults hit them too.
const markerRules = `
  - id: all
    priority: 1
    source_bucket: %[1]s
    destination: dr
    destination_bucket: %[2]s
    replicate_delete_markers: true
`

// faultTransfer makes multipart copies small and stalls short.
const faultTransfer = "  workers: 4\n  part_size: 5MiB\n  multipart_threshold: 6MiB\n  stall_timeout: 2s\n"

type faultCase struct {
	side  string // source, destination or queue
	name  string
	fault faultproxy.Fault
	// hold is how long the fault lasts; 0 lasts until its Times are used.
	hold time.Duration
}

func faultCases() []faultCase {
	f := func(k faultproxy.Kind, match func(*http.Request) bool, times int) faultproxy.Fault {
		return faultproxy.Fault{Kind: k, Match: match, Times: times}
	}
	latency := faultproxy.Fault{Kind: faultproxy.Latency, Delay: 300 * time.Millisecond}
	return []faultCase{
		{"destination", "refused", f(faultproxy.Refuse, nil, 0), 4 * time.Second},
		{"destination", "stalled", f(faultproxy.Stall, nil, 0), 5 * time.Second},
		{"destination", "reset mid-body", f(faultproxy.Reset, faultproxy.ObjectWrites, 4), 0},
		{"destination", "SlowDown", f(faultproxy.SlowDown, faultproxy.Writes, 10), 0},
		{"destination", "500 before the store", f(faultproxy.Error500, nil, 8), 0},
		{"destination", "500 after the store wrote", f(faultproxy.Error500After, faultproxy.Writes, 8), 0},
		{"destination", "500 after Complete", f(faultproxy.Error500After, faultproxy.Completes, 1), 0},
		{"destination", "latency", latency, 4 * time.Second},

		{"source", "refused", f(faultproxy.Refuse, nil, 0), 4 * time.Second},
		{"source", "stalled", f(faultproxy.Stall, nil, 0), 5 * time.Second},
		{"source", "reset mid-body", f(faultproxy.Reset, faultproxy.Reads, 4), 0},
		{"source", "SlowDown", f(faultproxy.SlowDown, nil, 10), 0},
		{"source", "500", f(faultproxy.Error500, nil, 8), 0},
		{"source", "latency", latency, 4 * time.Second},

		{"queue", "refused", f(faultproxy.Refuse, nil, 0), 4 * time.Second},
		{"queue", "stalled", f(faultproxy.Stall, nil, 0), 5 * time.Second},
		{"queue", "reset mid-body", f(faultproxy.Reset, nil, 4), 0},
		{"queue", "503", f(faultproxy.SlowDown, nil, 6), 0},
		{"queue", "500 before the queue", f(faultproxy.Error500, nil, 6), 0},
		{"queue", "500 after the queue handled it", f(faultproxy.Error500After,
			faultproxy.Any(faultproxy.SQSAction("ReceiveMessage"), faultproxy.SQSAction("DeleteMessageBatch")), 8), 0},
		{"queue", "latency", latency, 4 * time.Second},
	}
}

// TestFaults puts a fault proxy between the daemon and each of the source
// S3, the destination S3 and SQS, makes it misbehave in each way they do in
// production while a mixed workload is replicated, and ends each case with
// the same strict check once the fault is over: the destination an exact
// replica of the source (one destination version per source version,
// identical bytes, the current version the last write, delete markers
// replicated), nothing failed or skipped, the daemon alive throughout and
// the backlog drained by itself, without a restart, within a bound.
func TestFaults(t *testing.T) {
	for _, c := range faultCases() {
		t.Run(c.side+"/"+c.name, func(t *testing.T) {
			t.Parallel()
			runFault(t, c, "")
		})
		// The source's and the destination's cases again with MinIO on
		// the faulty side (the queue's do not involve the store).
		if c.side != "queue" {
			t.Run("minio/"+c.side+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				runFault(t, c, testenv.MinIO)
			})
		}
	}
}

// runFault runs a case with store (versitygw when empty) on the faulty
// side and versitygw on the other.
func runFault(t *testing.T, c faultCase, store testenv.Kind) {
	o := worldOpts{rules: markerRules, transfer: faultTransfer, visibility: "5s"}
	switch c.side {
	case "source":
		o.srcStore = store
	case "destination":
		o.dstStore = store
	}
	targets := map[string]string{"source": storeURL(t, o.srcStore, "source"), "destination": storeURL(t, o.dstStore, "destination"), "queue": env.SQS}
	proxies := map[string]*faultproxy.Proxy{}
	for side, target := range targets {
		p, err := faultproxy.Start(target)
		must(t, err)
		t.Cleanup(p.Close)
		proxies[side] = p
	}
	o.srcEndpoint, o.dstEndpoint, o.sqsEndpoint = proxies["source"].URL(), proxies["destination"].URL(), proxies["queue"].URL()
	w := newWorld(t, o)
	d := w.start()
	p := proxies[c.side]
	p.Set(c.fault)
	evs, keys := w.mixedWorkload(c.side != "queue")
	must(t, w.pub.SendEvents(w.ctx, evs...))
	if c.hold > 0 {
		time.Sleep(c.hold)
		if c.side == "destination" && (c.fault.Kind == faultproxy.Refuse || c.fault.Kind == faultproxy.Stall) {
			// Guarantee 11: intake goes on while the destination is down:
			// every event recorded and deleted from the queue.
			if n := w.queueDepth(); n != 0 {
				t.Fatalf("%d messages still in the queue after %v of a destination outage: intake stopped", n, c.hold)
			}
			if counts, err := w.statusCounts(); err != nil || counts["pending"]+counts["in_flight"] == 0 {
				t.Fatalf("nothing recorded as pending during the outage: %v %v", counts, err)
			}
		}
	} else {
		waitFor(t, 30*time.Second, "the fault to be applied", func() bool { return p.Hits() >= int64(c.fault.Times) })
	}
	if c.fault.Kind == faultproxy.Refuse {
		// Refused connections never reach the proxy: the daemon's own
		// failure counters show it felt them.
		felt := d.metric("s3replicad_operations_failed_total", "reason", "network")
		if c.side == "queue" {
			felt = d.metric("s3replicad_queue_errors_total")
		}
		if felt == 0 {
			t.Fatal("the daemon saw no refused connection")
		}
	} else if p.Hits() == 0 {
		t.Fatalf("the fault was never applied (%d requests went through the proxy)", p.Requests())
	}
	select {
	case <-d.done:
		t.Fatalf("the daemon exited during the fault: %v", d.err)
	default:
	}
	hits := p.Hits()
	must(t, p.Clear())
	drained := w.waitExact(keys, 60*time.Second)
	t.Logf("%s %s: %d requests faulted; exact replica %v after the fault ended", c.side, c.name, hits, drained.Round(10*time.Millisecond))
	d.stop()
}

// SIGTERM while the destination stalls: the daemon exits 0 within
// shutdown_timeout (the harness sets 10s), with the copies in flight
// checkpointed; the next start, once the destination answers, finishes
// them with exactly one replica each.
func TestShutdownDuringAnOutage(t *testing.T) {
	t.Parallel()
	proxy, err := faultproxy.Start(env.Destination)
	must(t, err)
	t.Cleanup(proxy.Close)
	w := newWorld(t, worldOpts{rules: markerRules, transfer: "  workers: 4\n  part_size: 5MiB\n  multipart_threshold: 6MiB\n", dstEndpoint: proxy.URL()})
	d := w.start()
	proxy.Set(faultproxy.Fault{Kind: faultproxy.Stall})
	evs, keys := w.mixedWorkload(true)
	must(t, w.pub.SendEvents(w.ctx, evs...))
	waitFor(t, 20*time.Second, "writes stalled", func() bool { return proxy.Hits() >= 4 })
	start := time.Now()
	d.stop() // requires exit 0 within 20s
	if took := time.Since(start); took > 11*time.Second {
		t.Fatalf("stopped after %v, shutdown_timeout is 10s", took)
	}
	must(t, proxy.Clear())
	d = w.start()
	w.waitExact(keys, 60*time.Second)
	d.stop()
}
