// Package faultproxy is a test proxy that stands between the daemon and a
// real server (S3 or SQS) and misbehaves on demand: it refuses connections,
// accepts and never answers, resets connections half way through a body,
// answers 503 SlowDown or 500 without asking the server, answers 500 after
// the server has handled the request (the ambiguous write), or adds
// latency. Tests switch the fault at run time; everything else is passed
// through with the client's Host header kept, so signatures stay valid.
package faultproxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Kind is a way of misbehaving.
type Kind int

const (
	// Pass forwards the request.
	Pass Kind = iota
	// Refuse closes the listening socket: connects are refused.
	Refuse
	// Stall accepts the request and never answers (until cleared).
	Stall
	// Reset cuts the connection with a TCP reset half way through the body:
	// the request's body for writes, the answer's body for reads.
	Reset
	// SlowDown answers 503 SlowDown without asking the server.
	SlowDown
	// Error500 answers 500 InternalError without asking the server.
	Error500
	// Error500After forwards the request, lets the server handle it, then
	// answers 500: the client cannot tell whether the write happened.
	Error500After
	// Latency delays the request by Fault.Delay, then forwards it.
	Latency
	// NotFound answers a bare 404 without S3's error document, as a wrong
	// endpoint or a proxy in the way does.
	NotFound
)

// Fault is what the proxy does to the requests it matches.
type Fault struct {
	Kind Kind
	// Match selects the requests the fault applies to; nil is all.
	Match func(*http.Request) bool
	// Times limits the fault to the first n matching requests; 0 is every
	// matching request until the fault is cleared.
	Times int
	// Delay is the added latency of Latency.
	Delay time.Duration
}

// Proxy is one misbehaving proxy in front of one server.
type Proxy struct {
	target *url.URL
	addr   string
	rp     *httputil.ReverseProxy
	srv    *http.Server

	mu      sync.Mutex
	ln      net.Listener
	fault   Fault
	applied int
	healed  chan struct{} // closed when the current fault is cleared

	conns  map[net.Conn]bool // open client connections
	scheme string
	tls    *tls.Config

	hits     atomic.Int64 // requests a fault was applied to
	requests atomic.Int64 // requests seen
	refused  atomic.Int64 // connections refused (attempts seen by a probe)
}

// Start listens on a loopback port and forwards to target (a URL such as
// http://127.0.0.1:7070).
func Start(target string) (*Proxy, error) { return start(target, nil) }

// StartTLS is Start serving HTTPS with the given certificate and key.
func StartTLS(target, certFile, keyFile string) (*Proxy, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return start(target, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
}

func start(target string, tc *tls.Config) (*Proxy, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	scheme := "http"
	if tc != nil {
		ln, scheme = tls.NewListener(ln, tc), "https"
	}
	p := &Proxy{target: u, addr: ln.Addr().String(), ln: ln, healed: make(chan struct{}), conns: map[net.Conn]bool{}, scheme: scheme, tls: tc}
	tr := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 256}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = r.In.Host // signed by the client
		},
		Transport:     tr,
		FlushInterval: -1,
		ErrorLog:      log.New(io.Discard, "", 0),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			w.WriteHeader(http.StatusBadGateway)
		},
	}
	p.srv = &http.Server{Handler: http.HandlerFunc(p.serve), ConnState: p.track}
	go p.srv.Serve(ln)
	return p, nil
}

// URL is the proxy's address, to configure as the endpoint.
func (p *Proxy) URL() string { return p.scheme + "://" + p.addr }

// Set replaces the current fault.
func (p *Proxy) Set(f Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clearLocked()
	p.fault, p.applied = f, 0
	if f.Kind == Refuse && p.ln != nil {
		// As a server that died: nothing listens, and the connections it
		// had are gone.
		p.ln.Close()
		p.ln = nil
		for c := range p.conns {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			c.Close()
		}
	}
}

func (p *Proxy) track(c net.Conn, st http.ConnState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	switch st {
	case http.StateNew:
		if p.ln == nil { // accepted just before the listener closed
			c.Close()
			return
		}
		p.conns[c] = true
	case http.StateClosed, http.StateHijacked:
		delete(p.conns, c)
	}
}

// Clear ends the fault: requests pass again, stalled ones are cut off (as
// a dead middlebox's connections are when it comes back), and a refusing
// proxy listens again on the same port.
func (p *Proxy) Clear() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clearLocked()
	p.fault = Fault{}
	if p.ln == nil {
		var err error
		for i := 0; i < 50; i++ {
			if p.ln, err = net.Listen("tcp", p.addr); err == nil {
				if p.tls != nil {
					p.ln = tls.NewListener(p.ln, p.tls)
				}
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("listen again on %s: %w", p.addr, err)
		}
		go p.srv.Serve(p.ln)
	}
	return nil
}

func (p *Proxy) clearLocked() {
	close(p.healed)
	p.healed = make(chan struct{})
}

// Hits is the number of requests a fault was applied to so far.
func (p *Proxy) Hits() int64 { return p.hits.Load() }

// Requests is the number of requests the proxy has seen.
func (p *Proxy) Requests() int64 { return p.requests.Load() }

// Close stops the proxy.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.clearLocked()
	p.mu.Unlock()
	_ = p.srv.Close()
}

// pick decides what to do with a request.
func (p *Proxy) pick(r *http.Request) (Fault, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.fault
	if f.Kind == Pass || f.Match != nil && !f.Match(r) || f.Times > 0 && p.applied >= f.Times {
		return Fault{}, p.healed
	}
	p.applied++
	p.hits.Add(1)
	return f, p.healed
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	p.requests.Add(1)
	f, healed := p.pick(r)
	switch f.Kind {
	case Pass, Refuse:
		p.rp.ServeHTTP(w, r)
	case Latency:
		select {
		case <-time.After(f.Delay):
		case <-r.Context().Done():
			return
		}
		p.rp.ServeHTTP(w, r)
	case Stall:
		// Hold the connection without a byte until the client gives up or
		// the fault is cleared, then drop it.
		select {
		case <-r.Context().Done():
		case <-healed:
		}
		reset(w)
	case SlowDown:
		s3Error(w, http.StatusServiceUnavailable, "SlowDown", "Please reduce your request rate.")
	case Error500:
		s3Error(w, http.StatusInternalServerError, "InternalError", "We encountered an internal error. Please try again.")
	case NotFound:
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, "<html><body>404 Not Found</body></html>")
	case Error500After:
		rec := &discard{header: http.Header{}}
		p.rp.ServeHTTP(rec, r)
		s3Error(w, http.StatusInternalServerError, "InternalError", "We encountered an internal error. Please try again.")
	case Reset:
		if r.ContentLength > 0 {
			// A write: take half the body, then cut the connection.
			_, _ = io.CopyN(io.Discard, r.Body, r.ContentLength/2)
			reset(w)
			return
		}
		// A read: forward, pass on half the answer's body, then cut.
		func() {
			defer func() { _ = recover() }() // the proxy aborts the copy it cannot finish
			p.rp.ServeHTTP(&halfWriter{ResponseWriter: w}, r)
		}()
		reset(w)
	}
}

// s3Error answers as S3 does (SQS's JSON clients read the status).
func s3Error(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>%s</Message><RequestId>faultproxy</RequestId></Error>`, code, msg)
}

// reset takes the connection over and closes it with a TCP reset.
func reset(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	conn.Close()
}

// halfWriter passes on the first half of an answer's body (by its
// Content-Length), then swallows the rest.
type halfWriter struct {
	http.ResponseWriter
	limit   int64
	written int64
	started bool
}

func (h *halfWriter) WriteHeader(code int) {
	if !h.started {
		h.started = true
		n := int64(0)
		fmt.Sscan(h.Header().Get("Content-Length"), &n)
		h.limit = n / 2
		if n == 1 {
			h.limit = 0
		}
	}
	h.ResponseWriter.WriteHeader(code)
}

func (h *halfWriter) Write(b []byte) (int, error) {
	if !h.started {
		h.WriteHeader(http.StatusOK)
	}
	if room := h.limit - h.written; room > 0 {
		n := min(int64(len(b)), room)
		if _, err := h.ResponseWriter.Write(b[:n]); err != nil {
			return 0, err
		}
		h.written += n
		if f, ok := h.ResponseWriter.(http.Flusher); ok && h.written >= h.limit {
			f.Flush()
		}
	}
	if h.written >= h.limit {
		return 0, errCut
	}
	return len(b), nil
}

var errCut = errors.New("faultproxy: answer cut")

// discard is a ResponseWriter that keeps nothing.
type discard struct{ header http.Header }

func (d *discard) Header() http.Header         { return d.header }
func (d *discard) Write(b []byte) (int, error) { return len(b), nil }
func (d *discard) WriteHeader(int)             {}

// Matchers for Fault.Match.

// Writes matches requests that change the store: PUT, POST, DELETE.
func Writes(r *http.Request) bool {
	return r.Method == http.MethodPut || r.Method == http.MethodPost || r.Method == http.MethodDelete
}

// Reads matches GET requests of objects (not listings).
func Reads(r *http.Request) bool {
	return r.Method == http.MethodGet && !r.URL.Query().Has("versions") && !r.URL.Query().Has("uploadId")
}

// ObjectWrites matches PutObject and UploadPart: writes with a body.
func ObjectWrites(r *http.Request) bool { return r.Method == http.MethodPut && r.ContentLength > 0 }

// Completes matches CompleteMultipartUpload.
func Completes(r *http.Request) bool {
	return r.Method == http.MethodPost && r.URL.Query().Has("uploadId")
}

// Any combines matchers: a request matches when one of them does.
func Any(ms ...func(*http.Request) bool) func(*http.Request) bool {
	return func(r *http.Request) bool {
		for _, m := range ms {
			if m(r) {
				return true
			}
		}
		return false
	}
}

// SQSAction matches SQS JSON-protocol calls by their target, e.g.
// "ReceiveMessage" or "DeleteMessageBatch".
func SQSAction(action string) func(*http.Request) bool {
	return func(r *http.Request) bool {
		return strings.HasSuffix(r.Header.Get("X-Amz-Target"), "."+action)
	}
}
