package engine

import (
	"context"
	"errors"
	"testing"
	"time"
)

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
