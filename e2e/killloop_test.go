package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/internal/faultproxy"
	"github.com/s3replicad/s3replicad/internal/testenv"
)

// envInt reads a positive integer from the environment.
func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q is not a number", name, v)
	}
	return n
}

// TestKillLoop kills the daemon with kill -9 at random moments (seeded:
// S3REPLICAD_KILL_SEED replays a run; the seed is printed) while a mixed
// workload is written and published: small objects, objects copied in
// parts, new versions of the same keys and delete markers, with the
// destination behind a proxy that adds latency. After S3REPLICAD_KILLS
// kills (10 by default; `make soak` runs 50) and restarts, the destination
// must be an exact replica of the source, with nothing failed. It runs on
// versitygw, and with MinIO as both source and destination.
func TestKillLoop(t *testing.T) {
	t.Parallel()
	t.Run("versitygw", func(t *testing.T) {
		t.Parallel()
		killLoop(t, "")
	})
	t.Run("minio", func(t *testing.T) {
		t.Parallel()
		killLoop(t, testenv.MinIO)
	})
}

func killLoop(t *testing.T, store testenv.Kind) {
	kills := envInt(t, "S3REPLICAD_KILLS", 10)
	seed := uint64(envInt(t, "S3REPLICAD_KILL_SEED", int(time.Now().UnixNano()%1e9)))
	t.Logf("kill loop: %d kills, seed %d (S3REPLICAD_KILL_SEED=%d replays it)", kills, seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))

	proxy, err := faultproxy.Start(storeURL(t, store, "destination"))
	must(t, err)
	t.Cleanup(proxy.Close)
	proxy.Set(faultproxy.Fault{Kind: faultproxy.Latency, Delay: 15 * time.Millisecond})
	// Short polls: local-aws-sqs holds a long poll until it has ten
	// messages, so a kill would leave many more messages in flight than
	// SQS, which answers as soon as it has any.
	w := newWorld(t, worldOpts{rules: markerRules, transfer: faultTransfer, visibility: "5s", waitTime: "0s", dstEndpoint: proxy.URL(),
		srcStore: store, dstStore: store})

	// The writer's choices come from their own generator, seeded from the
	// test's, so that the kills' timing does not change the workload.
	writer := rand.New(rand.NewPCG(rng.Uint64(), 1))
	keys := make([]string, 24)
	for i := range keys {
		keys[i] = fmt.Sprintf("key/%02d", i)
	}
	deleted := map[string]bool{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var written, markers, large int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			key := keys[writer.IntN(len(keys))]
			var ev testenv.Event
			var err error
			switch r := writer.IntN(100); {
			case r < 10 && !deleted[key]:
				// A marker only on a live key: two markers in a row on one
				// key cannot be told apart after a crash (see README).
				ev, err = w.pub.DeleteMarker(w.ctx, w.src, w.srcBucket, key)
				deleted[key] = true
				markers++
			case r < 14:
				ev, err = w.pub.Put(w.ctx, w.src, w.srcBucket, key, randBytes(w, 6<<20+writer.IntN(6<<20)))
				deleted[key] = false
				large++
			default:
				ev, err = w.pub.Put(w.ctx, w.src, w.srcBucket, key, randBytes(w, 1+writer.IntN(200<<10)))
				deleted[key] = false
			}
			if err != nil {
				t.Error(err)
				return
			}
			if err := w.pub.SendEvents(w.ctx, ev); err != nil {
				t.Error(err)
				return
			}
			written++
			time.Sleep(time.Duration(writer.IntN(40)) * time.Millisecond)
		}
	}()

	start := time.Now()
	for i := 0; i < kills; i++ {
		d := w.start()
		// Anywhere from at once to a few seconds in: at start-up, while
		// loading, recording, copying parts or completing.
		time.Sleep(time.Duration(rng.IntN(2500)) * time.Millisecond)
		d.kill()
	}
	close(stop)
	wg.Wait()
	killed := time.Since(start)
	d := w.start()
	took, missing := w.waitReplica(keys, 120*time.Second)
	if took > 30*time.Second {
		t.Logf("slow drain; the last daemon's warnings:\n%s", warnings(d.logs.String()))
	}
	d.stop()
	// Events that were in flight at a kill come back after the visibility
	// timeout, often after a newer version of their key was written: those
	// versions are superseded (guarantee 4), each one recorded as such.
	w.checkSuperseded(missing)
	t.Logf("kill loop: %d kills in %v while %d changes were written (%d copied in parts, %d delete markers); seed %d; exact replica %v after the last restart; %d versions superseded by a newer one written first",
		kills, killed.Round(time.Second), written, large, markers, seed, took.Round(10*time.Millisecond), len(missing))
}

// warnings keeps a log's WARN and ERROR lines.
func warnings(log string) string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
