//go:build linux

package engine

import (
	"golang.org/x/sys/unix"
)

// memFileMin is the smallest buffer kept in a memory file: below it the
// copy that sendfile saves is cheaper than the descriptor it costs.
const memFileMin = 1 << 20

// Copy buffers live outside the Go heap: they are long-lived and large, and
// on the heap they would set the garbage collector's pace (GOGC grows the
// heap in proportion to what is live), letting short-lived garbage pile up
// to several times their size. Large ones are memory files, so that a
// plain-HTTP upload can go from them to the socket with sendfile(2).
func allocBuffer(size int64) ([]byte, *MemFile) {
	if size >= memFileMin {
		if b, m, err := memFileBuffer(size); err == nil {
			return b, m
		}
	}
	b, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return make([]byte, size), nil
	}
	return b, nil
}

func memFileBuffer(size int64) ([]byte, *MemFile, error) {
	fd, err := unix.MemfdCreate("s3replicad-buffer", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, nil, err
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		unix.Close(fd)
		return nil, nil, err
	}
	b, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, nil, err
	}
	return b, &MemFile{fd: fd}, nil
}

// releaseBuffer gives a kept buffer's memory back to the system. The
// mapping itself stays valid, never unmapped: an HTTP transport may still
// be reading a request body after the response came back, and must read
// zeros then, not fault.
func releaseBuffer(b []byte, m *MemFile) {
	advice := unix.MADV_DONTNEED
	if m != nil {
		advice = unix.MADV_REMOVE // a shared mapping's pages live in the file
	}
	_ = unix.Madvise(b[:cap(b)], advice)
}
