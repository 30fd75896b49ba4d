// Package retry is the one way s3replicad waits and tries again: an
// exponential backoff with jitter, bounded, that stops on a permanent error
// or when its context ends. Writes are retried by the engine per operation
// (with the look for an earlier replica first); every other loop that waits
// and tries again uses this.
package retry

import (
	"context"
	"math/rand/v2"
	"time"
)

// Policy is a backoff: the delay before attempt n+1 doubles from Min up to
// Max, with jitter in its upper half, for at most Attempts attempts (0:
// until the context ends).
type Policy struct {
	Min, Max time.Duration
	Attempts int
}

// Backoff is the delay after the attempt-th failure (attempt from 1).
func (p Policy) Backoff(attempt int) time.Duration {
	d := p.Min
	for i := 1; i < attempt && d < p.Max; i++ {
		d *= 2
	}
	d = min(d, p.Max)
	return d/2 + rand.N(d/2+1)
}

// Do calls f until it succeeds, returns an error that permanent says is
// permanent (nil: none is), runs out of attempts, or ctx ends; it returns
// f's last error (or ctx's). retrying, when set, hears of each failure
// before the wait.
func (p Policy) Do(ctx context.Context, f func(attempt int) error, permanent func(error) bool, retrying func(attempt int, err error, wait time.Duration)) error {
	for attempt := 1; ; attempt++ {
		err := f(attempt)
		if err == nil || permanent != nil && permanent(err) || p.Attempts > 0 && attempt >= p.Attempts {
			return err
		}
		if ctx.Err() != nil {
			return err
		}
		wait := p.Backoff(attempt)
		if retrying != nil {
			retrying(attempt, err, wait)
		}
		if !Sleep(ctx, wait) {
			return err
		}
	}
}

// Sleep waits d, or until ctx ends; it reports whether it waited all of d.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
