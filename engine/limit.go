package engine

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/s3replicad/s3replicad/internal/retry"
)

// adaptive is a destination's limit on operations in flight. When the
// destination pushes back (SlowDown, 503, 429, timeouts) the limit is
// halved, at most once per cooldown so that one burst of refusals counts
// once; every success raises it by 1/limit, that is by one per round of
// requests, up to the ceiling. The scheduler admits a destination's
// operations against it, so a destination that is slow or stalled holds
// few workers and never makes a worker wait for it.
type adaptive struct {
	ceiling  float64
	cooldown time.Duration
	gauge    prometheus.Gauge
	throttle prometheus.Counter
	// onRaise is called (without the lock) when the limit rises past a
	// whole number: an operation held back by it may run now.
	onRaise func()

	mu           sync.Mutex
	limit        float64
	lastCut      time.Time
	lastPushback time.Time
}

func newAdaptive(ceiling int, gauge prometheus.Gauge, throttle prometheus.Counter) *adaptive {
	a := &adaptive{ceiling: float64(ceiling), cooldown: time.Second, gauge: gauge, throttle: throttle,
		limit: float64(ceiling)}
	gauge.Set(a.limit)
	return a
}

// Limit is the number of operations the destination may have in flight.
func (a *adaptive) Limit() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return int(a.limit)
}

// healthy reports whether the destination has not pushed back lately:
// only then may it borrow workers beyond its share.
func (a *adaptive) healthy(now time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return now.Sub(a.lastPushback) >= activeWindow
}

// observe adapts the limit to how a request to the destination went.
func (a *adaptive) observe(err error) {
	a.mu.Lock()
	before := int(a.limit)
	switch {
	case pushback(err):
		a.throttle.Inc()
		a.lastPushback = time.Now()
		if now := time.Now(); now.Sub(a.lastCut) >= a.cooldown {
			a.limit = max(1, a.limit/2)
			a.lastCut = now
		}
	case err == nil:
		a.limit = min(a.ceiling, a.limit+1/a.limit)
	}
	after := int(a.limit)
	a.gauge.Set(float64(after))
	a.mu.Unlock()
	if after > before && a.onRaise != nil {
		a.onRaise()
	}
}

// pushback tells whether err means the destination wants less load.
func pushback(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if _, reason := Classify(err); reason == ReasonThrottled {
		return true
	}
	var t interface{ Timeout() bool }
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &t) && t.Timeout()
}

// pacer spreads writes so that their bytes average at most rate per
// second: each write waits for its turn, then goes at full speed.
type pacer struct {
	rate float64 // bytes per second
	mu   sync.Mutex
	next time.Time
}

// reserve books n bytes and returns when they may be sent.
func (p *pacer) reserve(now time.Time, n int64) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.next.Before(now) {
		p.next = now
	}
	at := p.next
	p.next = p.next.Add(time.Duration(float64(n) / p.rate * float64(time.Second)))
	return at
}

func (p *pacer) wait(ctx context.Context, n int64) error {
	if p == nil || n <= 0 {
		return nil
	}
	at := p.reserve(time.Now(), n)
	if d := time.Until(at); d > 0 && !retry.Sleep(ctx, d) {
		return ctx.Err()
	}
	return nil
}

// limitedDest paces the bytes written to a destination and feeds how
// each write went to its adaptive limit; admission against that limit is
// the scheduler's (see scheduler.Next), so no write waits here for other
// operations.
type limitedDest struct {
	Destination
	conc *adaptive
	bw   *pacer
}

func (d *limitedDest) do(ctx context.Context, n int64, f func() error) error {
	if err := d.bw.wait(ctx, n); err != nil {
		return err
	}
	err := f()
	d.conc.observe(err)
	return err
}

func (d *limitedDest) Put(ctx context.Context, bucket, key string, meta ObjectMeta, body Payload) (v string, err error) {
	err = d.do(ctx, int64(len(body.Data)), func() error {
		v, err = d.Destination.Put(ctx, bucket, key, meta, body)
		return err
	})
	return v, err
}

func (d *limitedDest) UploadPart(ctx context.Context, bucket, key, uploadID string, n int32, body Payload) (etag string, err error) {
	err = d.do(ctx, int64(len(body.Data)), func() error {
		etag, err = d.Destination.UploadPart(ctx, bucket, key, uploadID, n, body)
		return err
	})
	return etag, err
}

func (d *limitedDest) PutDeleteMarker(ctx context.Context, bucket, key string) (v string, err error) {
	err = d.do(ctx, 0, func() error {
		v, err = d.Destination.PutDeleteMarker(ctx, bucket, key)
		return err
	})
	return v, err
}

// limitedCopier adds the server-side copy calls; copies inside the store
// count against concurrency but not against the bandwidth limit, which is
// about the daemon's own link.
type limitedCopier struct {
	*limitedDest
	c ServerSideCopier
}

func (d *limitedCopier) Copy(ctx context.Context, src VersionRef, bucket, key string, meta ObjectMeta) (v string, err error) {
	err = d.do(ctx, 0, func() error {
		v, err = d.c.Copy(ctx, src, bucket, key, meta)
		return err
	})
	return v, err
}

func (d *limitedCopier) CopyPart(ctx context.Context, src VersionRef, r ByteRange, bucket, key, uploadID string, n int32) (etag string, err error) {
	err = d.do(ctx, 0, func() error {
		etag, err = d.c.CopyPart(ctx, src, r, bucket, key, uploadID, n)
		return err
	})
	return etag, err
}

func (d *limitedDest) CopyVersion(ctx context.Context, bucket, key, versionID string) (v string, err error) {
	err = d.do(ctx, 0, func() error {
		v, err = d.Destination.CopyVersion(ctx, bucket, key, versionID)
		return err
	})
	return v, err
}
