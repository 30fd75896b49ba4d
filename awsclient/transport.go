package awsclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Deadlines for every connection to an S3 endpoint.
const (
	// DefaultStallTimeout is how long a request may go without a byte sent
	// or received before it is abandoned (transfer.stall_timeout).
	DefaultStallTimeout = 30 * time.Second
	// maxConnectTimeout bounds TCP connects and TLS handshakes.
	maxConnectTimeout = 10 * time.Second
)

// TransportConfig describes the HTTP client of one endpoint.
type TransportConfig struct {
	// CAFile is a PEM bundle of a private CA, added to the system roots'
	// place; empty trusts the system roots. Verification is never off.
	CAFile string
	// MaxConns bounds idle connections kept per host.
	MaxConns int
	// StallTimeout abandons a request that sends and receives nothing for
	// this long (0: DefaultStallTimeout). It bounds silence, not duration,
	// so a multi-GiB part that keeps moving is never cut off.
	StallTimeout time.Duration
	// NoProgressDeadline leaves connections without the stall deadline:
	// only connect and handshake timeouts apply. The SQS client uses it,
	// where a long poll is silent by design and each call has a context
	// deadline instead.
	NoProgressDeadline bool
}

// NewHTTPClient builds the HTTP client for an endpoint: pooled connections
// sized for many parallel copies, TLS session resumption, the private CA
// when one is given, and deadlines on connecting, handshaking and on every
// silence longer than the stall timeout.
func NewHTTPClient(c TransportConfig) (*http.Client, error) {
	// Full-size TLS records from the first byte: the copier's requests are
	// bulk transfers, not pages waiting to be rendered.
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, DynamicRecordSizingDisabled: true}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s holds no PEM certificate", c.CAFile)
		}
		tlsCfg.RootCAs = pool
	}
	if c.MaxConns <= 0 {
		c.MaxConns = 256
	}
	stall := c.StallTimeout
	if stall <= 0 {
		stall = DefaultStallTimeout
	}
	connect := min(stall, maxConnectTimeout)
	// Resumed sessions skip the certificate exchange and its verification
	// on every new connection to the same endpoint.
	tlsCfg.ClientSessionCache = tls.NewLRUClientSessionCache(c.MaxConns)
	dialer := &net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dialer.DialContext(ctx, network, addr)
		if err != nil || c.NoProgressDeadline {
			return conn, err
		}
		return newProgressConn(conn, stall), nil
	}
	tr := &http.Transport{
		Proxy:       http.ProxyFromEnvironment,
		DialContext: dial,
		// The TLS connection is made here rather than by the transport only
		// so that it can take request bodies with ReadFrom (see copyConn).
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			raw, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			cfg := tlsCfg.Clone()
			if cfg.ServerName == "" {
				cfg.ServerName, _, _ = net.SplitHostPort(addr)
			}
			rc := newRecordConn(raw)
			conn := tls.Client(rc, cfg)
			hctx, cancel := context.WithTimeout(ctx, connect)
			defer cancel()
			if err := conn.HandshakeContext(hctx); err != nil {
				raw.Close()
				return nil, err
			}
			return &copyConn{Conn: conn, rc: rc}, nil
		},
		TLSClientConfig:     tlsCfg,
		TLSHandshakeTimeout: connect,
		MaxIdleConns:        c.MaxConns,
		MaxIdleConnsPerHost: c.MaxConns,
		// Bodies go out through a buffer of two full TLS records, not
		// net/http's 4 KiB, each of which would be a record and a write of
		// its own. (Large reads bypass the read buffer.)
		WriteBufferSize: 32 << 10,
		// An idle connection is closed before its silence reaches the stall
		// deadline, rather than failing the request that picks it up.
		IdleConnTimeout: min(90*time.Second, stall*3/4),
		// Object bytes go as they are: net/http must not ask for gzip and
		// silently inflate an object stored with Content-Encoding: gzip.
		DisableCompression: true,
		// S3 speaks HTTP/1.1; a connection per request in flight is the
		// parallelism the copier wants.
		ForceAttemptHTTP2: false,
	}
	return &http.Client{Transport: tr}, nil
}

// copyConn takes request bodies with ReadFrom through pooled buffers.
// net/http hands a body to the connection as an io.LimitReader, which has
// no WriteTo; to a connection without ReadFrom (a TLS connection, or one
// wrapped for its deadlines) io.Copy then allocates a 32 KiB buffer for
// every request, the copier's largest allocation by far.
type copyConn struct {
	net.Conn
	rc *recordConn // under TLS; nil on plain connections
}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (c *copyConn) ReadFrom(r io.Reader) (int64, error) {
	if c.rc == nil {
		return copyFrom(c.Conn, r)
	}
	c.rc.gather()
	n, err := copyFrom(c.Conn, r)
	if ferr := c.rc.release(); err == nil {
		err = ferr
	}
	return n, err
}

// Write sends what net/http has buffered (headers and the start of a
// body) with its records gathered.
func (c *copyConn) Write(b []byte) (int, error) {
	if c.rc == nil || len(b) <= maxRecord {
		return c.Conn.Write(b)
	}
	c.rc.gather()
	n, err := c.Conn.Write(b)
	if ferr := c.rc.release(); err == nil {
		err = ferr
	}
	return n, err
}

// maxRecord is the most plaintext a TLS record carries.
const maxRecord = 16 << 10

// recordConn is the connection as TLS sees it. While a request goes out
// (copyConn marks it), the TLS records gather in a pooled buffer and leave
// several at a time, instead of a write system call for each 16 KiB record:
// three fewer writes per 64 KiB object. Nothing is held between requests,
// and every write beneath is still a real one, where the stall deadline
// watches for progress.
type recordConn struct {
	net.Conn

	mu       sync.Mutex // TLS's reader may write too (a key update)
	gathered *[]byte    // set while gathering
}

// A gather buffer holds four full records with their overhead.
var gatherBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4*(maxRecord+256)); return &b }}

func newRecordConn(c net.Conn) *recordConn { return &recordConn{Conn: c} }

func (c *recordConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gathered == nil {
		return c.Conn.Write(b)
	}
	buf := *c.gathered
	if len(buf)+len(b) > cap(buf) {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		buf = *c.gathered
		if len(b) > cap(buf) {
			return c.Conn.Write(b)
		}
	}
	*c.gathered = append(buf, b...)
	return len(b), nil
}

// gather starts holding back records.
func (c *recordConn) gather() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gathered == nil {
		c.gathered = gatherBuffers.Get().(*[]byte)
	}
}

// release sends what was held back and stops holding back.
func (c *recordConn) release() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gathered == nil {
		return nil
	}
	err := c.flushLocked()
	gatherBuffers.Put(c.gathered)
	c.gathered = nil
	return err
}

func (c *recordConn) flushLocked() error {
	buf := *c.gathered
	*c.gathered = buf[:0]
	if len(buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(buf)
	return err
}

// copyFrom copies r to w through a pooled buffer; w is wrapped so that
// io.CopyBuffer cannot hand the copy back to a ReadFrom of w's own. A body
// that net/http hands over as in memory (the body limited to its length)
// goes in one write; the SDK's request bodies come wrapped, and take the
// pooled buffer.
func copyFrom(w io.Writer, r io.Reader) (int64, error) {
	if lr, ok := r.(*io.LimitedReader); ok {
		if mem, ok := lr.R.(interface {
			io.WriterTo
			Len() int
		}); ok && int64(mem.Len()) <= lr.N {
			n, err := mem.WriteTo(struct{ io.Writer }{w})
			lr.N -= n
			return n, err
		}
	}
	buf := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(buf)
	return io.CopyBuffer(struct{ io.Writer }{w}, r, *buf)
}

// progressConn fails a read or write only when the connection has made no
// progress in either direction for the stall timeout. A read that waits
// for a response while the request body is still going out is progress;
// so is a slow but moving transfer. It sits under TLS, on the TCP
// connection, where a timed-out read or write can be resumed.
//
// Each read or write waits at most a tick (a quarter of the stall
// timeout) before looking at the clock: a write blocked on a full socket
// buffer reports the bytes it moved only when it returns, so progress is
// known to within a tick, and a stall is declared after stall + tick of
// silence as recorded, which is at least stall of real silence.
type progressConn struct {
	net.Conn
	stall time.Duration
	tick  time.Duration
	last  atomic.Int64 // unix nanoseconds of the last byte either way
	// The deadlines last set; each is moved only once it is within half a
	// tick, not on every read and write (one reader, one writer at a time).
	readBy, writeBy time.Time
	// queued is the send queue's length when last looked at.
	queued atomic.Int64
	// gaveUp is set once either direction declared a stall: the other,
	// which then fails on the closed connection, reports the stall too.
	gaveUp atomic.Bool
}

func newProgressConn(c net.Conn, stall time.Duration) *progressConn {
	p := &progressConn{Conn: c, stall: stall, tick: max(stall/4, 10*time.Millisecond)}
	p.last.Store(time.Now().UnixNano())
	return p
}

// ErrStalled is wrapped by the error of a request abandoned because its
// connection made no progress for the stall timeout.
var ErrStalled = errors.New("no progress")

// stallError is a timeout, as the net package's own, so that it is
// classified and counted with network timeouts.
type stallError struct{ d time.Duration }

func (e *stallError) Error() string {
	return fmt.Sprintf("no byte sent or received for %v (transfer.stall_timeout): connection abandoned", e.d)
}
func (e *stallError) Timeout() bool   { return true }
func (e *stallError) Temporary() bool { return true }
func (e *stallError) Unwrap() error   { return ErrStalled }

// stalled reports whether the connection has been silent for too long.
// Bytes leaving the kernel's send buffer count as progress.
func (p *progressConn) stalled() bool {
	now := time.Now().UnixNano()
	if q, ok := sendQueue(p.Conn); ok && int64(q) != p.queued.Swap(int64(q)) {
		p.last.Store(now)
		return false
	}
	return time.Duration(now-p.last.Load()) >= p.stall+p.tick
}

func (p *progressConn) Read(b []byte) (int, error) {
	for {
		if now := time.Now(); p.readBy.Sub(now) < p.tick/2 {
			p.readBy = now.Add(p.tick)
			if err := p.Conn.SetReadDeadline(p.readBy); err != nil {
				return 0, err
			}
		}
		n, err := p.Conn.Read(b)
		if n > 0 {
			p.last.Store(time.Now().UnixNano())
			return n, nil
		}
		if err != nil && isTimeout(err) {
			if !p.stalled() {
				continue
			}
			return 0, p.giveUp()
		}
		return n, p.afterStall(err)
	}
}

// giveUp declares the connection stalled.
func (p *progressConn) giveUp() error {
	p.gaveUp.Store(true)
	return &stallError{p.stall}
}

// afterStall is err, or the stall when the connection was closed because
// the other direction found it stalled.
func (p *progressConn) afterStall(err error) error {
	if err != nil && p.gaveUp.Load() && errors.Is(err, net.ErrClosed) {
		return &stallError{p.stall}
	}
	return err
}

func (p *progressConn) Write(b []byte) (int, error) {
	done := 0
	for done < len(b) {
		if now := time.Now(); p.writeBy.Sub(now) < p.tick/2 {
			p.writeBy = now.Add(p.tick)
			if err := p.Conn.SetWriteDeadline(p.writeBy); err != nil {
				return done, err
			}
		}
		n, err := p.Conn.Write(b[done:])
		done += n
		if n > 0 {
			p.last.Store(time.Now().UnixNano())
		}
		switch {
		case err == nil:
		case !isTimeout(err):
			return done, p.afterStall(err)
		case p.stalled():
			return done, p.giveUp()
		}
	}
	return done, nil
}

// ReadFrom lets plain-HTTP request bodies through a pooled buffer too.
func (p *progressConn) ReadFrom(r io.Reader) (int64, error) { return copyFrom(p, r) }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
