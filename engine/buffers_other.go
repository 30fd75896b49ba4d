//go:build !unix

package engine

func allocBuffer(size int64) []byte { return make([]byte, size) }

func releaseBuffer([]byte) {}
