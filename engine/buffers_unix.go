//go:build unix

package engine

import "syscall"

// Copy buffers live outside the Go heap: they are long-lived and large, and
// on the heap they would set the garbage collector's pace (GOGC grows the
// heap in proportion to what is live), letting short-lived garbage pile up
// to several times their size.
func allocBuffer(size int64) []byte {
	b, err := syscall.Mmap(-1, 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return make([]byte, size)
	}
	return b
}

// releaseBuffer gives a kept buffer's memory back to the system. The
// mapping itself stays valid, never unmapped: an HTTP transport may still
// be reading a request body after the response came back, and must read
// zeros then, not fault.
func releaseBuffer(b []byte) {
	_ = syscall.Madvise(b[:cap(b)], syscall.MADV_DONTNEED)
}
