package engine

import (
	"bytes"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"
)

// readFull's running CRC32C is the checksum of exactly the bytes read,
// however the reader splits them.
func TestReadFullChecksumsWhatItReads(t *testing.T) {
	data := make([]byte, 3<<20+17)
	for i := range data {
		data[i] = byte(rand.IntN(256))
	}
	for _, c := range []struct {
		name string
		r    io.Reader
		n    int
	}{
		{"whole", bytes.NewReader(data), len(data)},
		{"half reads", iotest.HalfReader(bytes.NewReader(data)), len(data)},
		{"one byte at a time", iotest.OneByteReader(bytes.NewReader(data[:70000])), 70000},
	} {
		buf := make([]byte, c.n)
		n, crc, err := readFull(c.r, buf)
		if err != nil || n != c.n {
			t.Fatalf("%s: read %d of %d: %v", c.name, n, c.n, err)
		}
		if want := crc32.Checksum(data[:c.n], castagnoli); crc != want {
			t.Fatalf("%s: crc %08x, want %08x", c.name, crc, want)
		}
	}
	// A short source is an error, and the checksum still covers what came.
	buf := make([]byte, 1<<20)
	n, crc, err := readFull(bytes.NewReader(data[:1000]), buf)
	if !errors.Is(err, io.ErrUnexpectedEOF) || n != 1000 || crc != crc32.Checksum(data[:1000], castagnoli) {
		t.Fatalf("short read: n %d err %v", n, err)
	}
}
