package engine

import (
	"context"
	"math/bits"
	"sync"

	"golang.org/x/sync/semaphore"
)

// minBufferClass is the smallest buffer handed out; smaller objects share it.
const minBufferClass = 64 << 10

// bufferPool hands out copy buffers within a fixed memory budget. Buffers
// come in power-of-two size classes and are kept for reuse, so that a busy
// daemon neither allocates per copy nor faults in fresh pages: memory stays
// at the budget whatever the object sizes and however many copies wait.
type bufferPool struct {
	budget int64
	inUse  *semaphore.Weighted // bytes handed out

	mu      sync.Mutex
	alloc   int64            // bytes held: handed out plus kept free
	free    map[int][][]byte // kept for reuse, by class
	dormant map[int][][]byte // memory released, mapping kept, by class
}

func newBufferPool(budget int64) *bufferPool {
	return &bufferPool{budget: budget, inUse: semaphore.NewWeighted(budget), free: map[int][][]byte{}, dormant: map[int][][]byte{}}
}

// classOf returns the class index and capacity for n bytes.
func classOf(n int64) (int, int64) {
	if n <= minBufferClass {
		return 0, minBufferClass
	}
	c := bits.Len64(uint64(n-1)) - bits.Len64(minBufferClass-1)
	return c, minBufferClass << c
}

// get returns a buffer of length n, waiting while the budget is spent.
func (b *bufferPool) get(ctx context.Context, n int64) ([]byte, error) {
	class, size := classOf(n)
	if n > b.budget {
		// Larger than the whole budget: take all of it, exactly.
		class, size = -1, n
	}
	weight := min(size, b.budget)
	if err := b.inUse.Acquire(ctx, weight); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if class < 0 {
		// Rare (a part larger than the whole budget): the heap's.
		b.alloc += size
		return make([]byte, n), nil
	}
	if buf, ok := pop(b.free, class); ok {
		return buf[:n], nil
	}
	// Make room by dropping kept buffers of other classes; what is handed
	// out is within the budget, so this always suffices.
	for c, l := range b.free {
		for len(l) > 0 && b.alloc+size > b.budget {
			buf := l[len(l)-1]
			l[len(l)-1] = nil
			l = l[:len(l)-1]
			b.alloc -= int64(cap(buf))
			releaseBuffer(buf)
			b.dormant[c] = append(b.dormant[c], buf)
		}
		b.free[c] = l
	}
	b.alloc += size
	if buf, ok := pop(b.dormant, class); ok {
		return buf[:n], nil
	}
	return allocBuffer(size)[:n], nil
}

func pop(lists map[int][][]byte, class int) ([]byte, bool) {
	l := lists[class]
	if len(l) == 0 {
		return nil, false
	}
	buf := l[len(l)-1]
	l[len(l)-1] = nil
	lists[class] = l[:len(l)-1]
	return buf, true
}

// put returns a buffer from get.
func (b *bufferPool) put(buf []byte) {
	size := int64(cap(buf))
	class, csize := classOf(size)
	if csize != size || size > b.budget {
		class = -1
	}
	b.inUse.Release(min(size, b.budget))
	b.mu.Lock()
	defer b.mu.Unlock()
	if class < 0 {
		b.alloc -= size // from the heap, not kept
		return
	}
	b.free[class] = append(b.free[class], buf[:0])
}
