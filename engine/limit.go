package engine

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// adaptive bounds the write requests in flight to one destination. When
// the destination pushes back (SlowDown, 503, 429, timeouts) the limit is
// halved, at most once per cooldown so that one burst of refusals counts
// once; every success raises it by 1/limit, that is by one per round of
// requests, up to the ceiling.
type adaptive struct {
	ceiling  float64
	cooldown time.Duration
	gauge    prometheus.Gauge
	throttle prometheus.Counter

	mu       sync.Mutex
	limit    float64
	inFlight int
	lastCut  time.Time
	wake     chan struct{} // closed when a slot may have opened
}

func newAdaptive(ceiling int, gauge prometheus.Gauge, throttle prometheus.Counter) *adaptive {
	a := &adaptive{ceiling: float64(ceiling), cooldown: time.Second, gauge: gauge, throttle: throttle,
		limit: float64(ceiling), wake: make(chan struct{})}
	gauge.Set(a.limit)
	return a
}

func (a *adaptive) acquire(ctx context.Context) error {
	for {
		a.mu.Lock()
		if a.inFlight < int(a.limit) {
			a.inFlight++
			a.mu.Unlock()
			return nil
		}
		wake := a.wake
		a.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		}
	}
}

// release ends a request and adapts the limit to how it went.
func (a *adaptive) release(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.inFlight--
	switch {
	case pushback(err):
		a.throttle.Inc()
		if now := time.Now(); now.Sub(a.lastCut) >= a.cooldown {
			a.limit = max(1, a.limit/2)
			a.lastCut = now
		}
	case err == nil:
		a.limit = min(a.ceiling, a.limit+1/a.limit)
	}
	a.gauge.Set(float64(int(a.limit)))
	close(a.wake)
	a.wake = make(chan struct{})
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
	if d := time.Until(at); d > 0 && !sleep(ctx, d) {
		return ctx.Err()
	}
	return nil
}

// limitedDest applies a destination's adaptive concurrency and bandwidth
// limit to every write sent to it.
type limitedDest struct {
	Destination
	conc *adaptive
	bw   *pacer
}

func (d *limitedDest) do(ctx context.Context, n int64, f func() error) error {
	if err := d.bw.wait(ctx, n); err != nil {
		return err
	}
	if err := d.conc.acquire(ctx); err != nil {
		return err
	}
	err := f()
	d.conc.release(err)
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
