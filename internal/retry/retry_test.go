package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestBackoffDoublesWithinBounds(t *testing.T) {
	p := Policy{Min: 100 * time.Millisecond, Max: time.Second}
	for attempt, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 3: 400 * time.Millisecond, 9: time.Second} {
		for range 50 {
			if d := p.Backoff(attempt); d < want/2 || d > want {
				t.Fatalf("Backoff(%d) = %v, want within [%v, %v]", attempt, d, want/2, want)
			}
		}
	}
}

var errPermanent = errors.New("permanent")

func TestDoStopsOnSuccessPermanentAttemptsAndContext(t *testing.T) {
	p := Policy{Min: time.Millisecond, Max: 2 * time.Millisecond}
	perm := func(err error) bool { return errors.Is(err, errPermanent) }
	calls := 0
	if err := p.Do(context.Background(), func(n int) error {
		calls++
		if n < 3 {
			return errors.New("transient")
		}
		return nil
	}, perm, nil); err != nil || calls != 3 {
		t.Fatalf("success on the third attempt: %v after %d calls", err, calls)
	}
	calls = 0
	if err := p.Do(context.Background(), func(int) error { calls++; return errPermanent }, perm, nil); !errors.Is(err, errPermanent) || calls != 1 {
		t.Fatalf("permanent error: %v after %d calls, want it after 1", err, calls)
	}
	calls = 0
	p.Attempts = 4
	heard := 0
	if err := p.Do(context.Background(), func(int) error { calls++; return errors.New("transient") }, perm,
		func(int, error, time.Duration) { heard++ }); err == nil || calls != 4 || heard != 3 {
		t.Fatalf("4 attempts: %v after %d calls, %d retries heard", err, calls, heard)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	p = Policy{Min: time.Hour, Max: time.Hour}
	start := time.Now()
	if err := p.Do(ctx, func(int) error { return errors.New("transient") }, perm, nil); err == nil || time.Since(start) > time.Second {
		t.Fatalf("a context ending during the wait: %v after %v", err, time.Since(start))
	}
}
