package e2e

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/s3replicad/s3replicad/internal/faultproxy"
	"github.com/s3replicad/s3replicad/internal/testenv"
)

// Two rules replicate the same keys to destinations A and B. B stalls
// (accepts connections, never answers) while versions are written: A's
// replicas keep arriving as fast as with B healthy, and once B answers
// again it catches up with exactly one replica per version. A stalled
// destination must slow only its own operations; refusals fail fast and
// would hide a worker held by B, so this is the stall.
func TestStalledDestinationSlowsOnlyItself(t *testing.T) {
	t.Parallel()
	proxy, err := faultproxy.Start(env.Destination)
	must(t, err)
	t.Cleanup(proxy.Close)
	bBucket := uniqueName("dstb")
	rules := `
  - id: to-a
    priority: 1
    source_bucket: %[1]s
    destination: dr
    destination_bucket: %[2]s
  - id: to-b
    priority: 1
    source_bucket: %[1]s
    destination: b
    destination_bucket: ` + bBucket + `
`
	w := newWorld(t, worldOpts{rules: rules, transfer: "  workers: 8\n  stall_timeout: 3s\n",
		moreDests: fmt.Sprintf("  - name: b\n    endpoint: %s\n    path_style: true\n    access_key_id: ${TEST_AK}\n    secret_access_key: ${TEST_SK}\n", proxy.URL())})
	must(t, testenv.CreateBucket(w.ctx, w.dst, bBucket, true))
	d := w.start()

	// measure writes n versions, one every gap, and returns how long each
	// took to become A's current version of its key.
	measure := func(prefix string, n int, gap time.Duration) []time.Duration {
		var mu sync.Mutex
		var lat []time.Duration
		var wg sync.WaitGroup
		for i := range n {
			key := fmt.Sprintf("%s/%02d", prefix, i)
			ev := w.put(key, []byte(strings.Repeat("v", 1000+i)))
			written := time.Now()
			must(t, w.pub.SendEvents(w.ctx, ev))
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Since(written) < 60*time.Second {
					out, err := w.dst.HeadObject(w.ctx, &s3.HeadObjectInput{Bucket: &w.dstBucket, Key: &key})
					if err == nil && out.Metadata["s3replicad-source-version-id"] == ev.VersionID {
						mu.Lock()
						lat = append(lat, time.Since(written))
						mu.Unlock()
						return
					}
					time.Sleep(50 * time.Millisecond)
				}
			}()
			time.Sleep(gap)
		}
		wg.Wait()
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		if len(lat) != n {
			t.Fatalf("%d of %d versions never reached A", n-len(lat), n)
		}
		return lat
	}

	healthy := measure("healthy", 10, 200*time.Millisecond)
	proxy.Set(faultproxy.Fault{Kind: faultproxy.Stall})
	stalled := measure("stalled", 30, 660*time.Millisecond)
	hits := proxy.Hits()
	worstHealthy, worstStalled := healthy[len(healthy)-1], stalled[len(stalled)-1]
	t.Logf("A's latency: with B healthy median %v worst %v; with B stalled median %v worst %v (%d requests to B stalled; B's limit %v)",
		healthy[len(healthy)/2].Round(time.Millisecond), worstHealthy.Round(time.Millisecond),
		stalled[len(stalled)/2].Round(time.Millisecond), worstStalled.Round(time.Millisecond), hits,
		d.metric("s3replicad_destination_concurrency", "destination", "b"))
	if hits == 0 {
		t.Fatal("no request to B was stalled: the test did not exercise the fault")
	}
	// The stall timeout is 3s: a worker held by B for it shows as a
	// latency of several seconds on A. Allow 2.5s over the healthy worst
	// for a busy machine.
	if worstStalled > worstHealthy+2500*time.Millisecond {
		t.Fatalf("A's worst latency while B stalled is %v, with B healthy %v: B's stall slowed A", worstStalled, worstHealthy)
	}

	must(t, proxy.Clear())
	var keys []string
	for i := range 10 {
		keys = append(keys, fmt.Sprintf("healthy/%02d", i))
	}
	for i := range 30 {
		keys = append(keys, fmt.Sprintf("stalled/%02d", i))
	}
	took := w.waitExact(keys, 90*time.Second)
	wb := *w
	wb.dstBucket = bBucket
	tookB := wb.waitExact(keys, 90*time.Second)
	t.Logf("after the stall: A exact in %v, B caught up in %v more", took.Round(10*time.Millisecond), tookB.Round(10*time.Millisecond))
	d.stop()
}
