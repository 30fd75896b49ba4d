//go:build !unix

package engine

func allocBuffer(size int64) ([]byte, *MemFile) { return make([]byte, size), nil }

func releaseBuffer([]byte, *MemFile) {}
