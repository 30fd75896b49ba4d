package testenv

import (
	"errors"
	"io"
	"math/rand/v2"
	"sync"
)

// Synthetic is deterministic, incompressible object content generated on
// the fly, so that large objects need neither memory nor local files.
type Synthetic struct {
	size  int64
	off   int64
	block []byte
	seed  uint64
	mu    sync.Mutex
}

const synthBlock = 1 << 20

var sharedBlock = func() []byte {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, synthBlock)
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return b
}()

// NewSynthetic returns size bytes of content; different seeds differ.
func NewSynthetic(size int64, seed uint64) *Synthetic {
	return &Synthetic{size: size, block: sharedBlock, seed: seed}
}

// ReadAt fills p with the bytes at off: the shared random block, with each
// block's first 16 bytes naming the object and the block's index.
func (s *Synthetic) ReadAt(p []byte, off int64) (int, error) {
	if off >= s.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && off < s.size {
		in := off % synthBlock
		c := copy(p[n:], s.block[in:min(int64(synthBlock), in+s.size-off)])
		for i := 0; i < c; i++ {
			if pos := in + int64(i); pos < 16 {
				idx := uint64(off/synthBlock) ^ s.seed<<20
				p[n+i] = byte(idx >> (8 * (pos % 8)))
			}
		}
		n += c
		off += int64(c)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (s *Synthetic) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.ReadAt(p, s.off)
	s.off += int64(n)
	return n, err
}

func (s *Synthetic) Seek(offset int64, whence int) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += s.off
	case io.SeekEnd:
		offset += s.size
	}
	if offset < 0 {
		return 0, errors.New("negative offset")
	}
	s.off = offset
	return offset, nil
}
