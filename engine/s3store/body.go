package s3store

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"syscall"

	"github.com/s3replicad/s3replicad/engine"
)

// setBody makes p the request's body. Over plain HTTP, a payload that sits
// in a memory file goes to the socket with sendfile(2): net/http hands a
// body that offers a syscall.Conn to the kernel instead of copying it
// 32 KiB at a time through a buffer of its own.
func setBody(req *http.Request, p engine.Payload, plain bool) {
	n := int64(len(p.Data))
	req.ContentLength = n
	if n == 0 {
		req.Body, req.GetBody = http.NoBody, func() (io.ReadCloser, error) { return http.NoBody, nil }
		return
	}
	if p.Mem == nil || !plain {
		req.Body = io.NopCloser(bytes.NewReader(p.Data))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(p.Data)), nil }
		return
	}
	// Not wrapped in io.NopCloser: net/http looks through its own
	// wrapper only, and the syscall.Conn must be what it finds.
	req.Body = &memBody{data: p.Data, fd: p.Mem.FD()}
	req.GetBody = func() (io.ReadCloser, error) { return &memBody{data: p.Data, fd: p.Mem.FD()}, nil }
}

// memBody reads data, which is also the start of the memory file fd. Its
// position is its own; the file's offset is set from it only around a
// sendfile, the one reader of that offset. A buffer is in one request at
// a time, so nothing else moves the offset meanwhile.
type memBody struct {
	data []byte
	fd   int
	pos  int64
}

func (b *memBody) Read(p []byte) (int, error) {
	if b.pos >= int64(len(b.data)) {
		return 0, io.EOF
	}
	n := copy(p, b.data[b.pos:])
	b.pos += int64(n)
	memBodyCopied.Add(int64(n))
	return n, nil
}

// memBodyCopied counts the bytes of memory-file bodies that went through
// user space after all, which over plain HTTP on Linux should be none.
var memBodyCopied atomic.Int64

// Close leaves the file open: it is the buffer's, not the request's.
func (b *memBody) Close() error { return nil }

// SyscallConn lets net's sendfile find the descriptor.
func (b *memBody) SyscallConn() (syscall.RawConn, error) { return memRawConn{b}, nil }

type memRawConn struct{ b *memBody }

func (c memRawConn) Control(f func(fd uintptr)) error {
	f(uintptr(c.b.fd))
	return nil
}

// Read positions the file at the body's position, lets f send from it
// (sendfile advances the offset), and takes the new offset back.
func (c memRawConn) Read(f func(fd uintptr) bool) error {
	if _, err := syscall.Seek(c.b.fd, c.b.pos, io.SeekStart); err != nil {
		return err
	}
	f(uintptr(c.b.fd))
	off, err := syscall.Seek(c.b.fd, 0, io.SeekCurrent)
	if err != nil {
		return err
	}
	// Never past the payload, whatever the file holds beyond it.
	c.b.pos = min(off, int64(len(c.b.data)))
	return nil
}

func (memRawConn) Write(func(fd uintptr) bool) error {
	return errors.New("a request body is read only")
}
