package engine

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestBufferPoolStaysWithinBudget(t *testing.T) {
	const budget = 4 << 20
	p := newBufferPool(budget)
	ctx := context.Background()

	a, err := p.get(ctx, 3<<20) // class 4 MiB: the whole budget
	if err != nil || len(a) != 3<<20 || cap(a) != 4<<20 {
		t.Fatalf("get 3 MiB: len %d cap %d err %v", len(a), cap(a), err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := p.get(short, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("get beyond the budget returned %v, want to wait until the deadline", err)
	}
	p.put(a)

	// The kept 4 MiB buffer is reused for the same class...
	b, _ := p.get(ctx, 4<<20)
	if &b[0] != &a[0] {
		t.Fatal("a kept buffer of the same class was not reused")
	}
	p.put(b)
	// ...and dropped to make room for smaller classes.
	var small [][]byte
	for range 4 {
		s, err := p.get(ctx, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		small = append(small, s)
	}
	if p.alloc > budget {
		t.Fatalf("pool holds %d bytes, budget %d", p.alloc, budget)
	}
	for _, s := range small {
		p.put(s)
	}

	// A buffer larger than the budget is served alone and not kept.
	big, err := p.get(ctx, 6<<20)
	if err != nil || len(big) != 6<<20 {
		t.Fatalf("get 6 MiB: %v", err)
	}
	p.put(big)
	if p.alloc > budget {
		t.Fatalf("pool holds %d bytes after an oversized buffer, budget %d", p.alloc, budget)
	}
}

func TestClassOf(t *testing.T) {
	for _, c := range []struct{ n, size int64 }{
		{0, 64 << 10}, {1, 64 << 10}, {64 << 10, 64 << 10}, {64<<10 + 1, 128 << 10},
		{16 << 20, 16 << 20}, {16<<20 + 1, 32 << 20},
	} {
		if _, got := classOf(c.n); got != c.size {
			t.Errorf("classOf(%d) = %d, want %d", c.n, got, c.size)
		}
	}
}
