package e2e

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/s3replicad/s3replicad/internal/testenv"
)

// churn is a mixed workload written until stopped, for the kill loop and
// the cluster test: small objects and objects copied in parts on a few
// hot keys, delete markers (only on a live key: two markers in a row on
// one key cannot be told apart after a crash, see README), some events
// published after the key's next one (crossed) and some twice.
type churn struct {
	keys                []string
	markerPct, largePct int // chances per write
	crossPct, dupPct    int // chances per event
	maxSmall, maxGap    int // bytes, milliseconds

	written, markers, large, crossed, dups int
	held                                   map[string]testenv.Event
	stop                                   chan struct{}
	wg                                     sync.WaitGroup
}

func newChurn(nkeys int) *churn {
	c := &churn{markerPct: 10, largePct: 4, crossPct: 15, maxSmall: 200 << 10, maxGap: 40,
		held: map[string]testenv.Event{}, stop: make(chan struct{})}
	for i := 0; i < nkeys; i++ {
		c.keys = append(c.keys, fmt.Sprintf("key/%02d", i))
	}
	return c
}

// start writes from the writer's own generator (so that the test's other
// random choices, such as when to kill, do not change the workload).
func (c *churn) start(w *world, writer *rand.Rand) {
	deleted := map[string]bool{}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for {
			select {
			case <-c.stop:
				return
			default:
			}
			key := c.keys[writer.IntN(len(c.keys))]
			var ev testenv.Event
			var err error
			switch r := writer.IntN(100); {
			case r < c.markerPct && !deleted[key]:
				ev, err = w.pub.DeleteMarker(w.ctx, w.src, w.srcBucket, key)
				deleted[key] = true
				c.markers++
			case r < c.markerPct+c.largePct:
				ev, err = w.pub.Put(w.ctx, w.src, w.srcBucket, key, randBytes(w, 6<<20+writer.IntN(6<<20)))
				deleted[key] = false
				c.large++
			default:
				ev, err = w.pub.Put(w.ctx, w.src, w.srcBucket, key, randBytes(w, 1+writer.IntN(c.maxSmall)))
				deleted[key] = false
			}
			if err != nil {
				w.t.Error(err)
				return
			}
			evs := []testenv.Event{ev}
			if prev, ok := c.held[key]; ok {
				evs = append(evs, prev) // crossed: the newer event first
				delete(c.held, key)
				c.crossed++
			} else if writer.IntN(100) < c.crossPct {
				c.held[key] = ev
				evs = nil
			}
			if len(evs) > 0 && writer.IntN(100) < c.dupPct {
				evs = append(evs, evs[0])
				c.dups++
			}
			if err := w.pub.SendEvents(w.ctx, evs...); err != nil {
				w.t.Error(err)
				return
			}
			c.written++
			time.Sleep(time.Duration(writer.IntN(c.maxGap)) * time.Millisecond)
		}
	}()
}

// finish stops the writer and publishes the events it still held.
func (c *churn) finish(w *world) {
	close(c.stop)
	c.wg.Wait()
	for _, ev := range c.held {
		must(w.t, w.pub.SendEvents(w.ctx, ev))
	}
}

func (c *churn) String() string {
	return fmt.Sprintf("%d changes were written (%d copied in parts, %d delete markers, %d events crossed, %d duplicated)",
		c.written, c.large, c.markers, c.crossed, c.dups)
}
