package awsclient

import (
	"bytes"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// tlsServer starts an HTTPS test server and returns a client for it that
// trusts its certificate through ca_file, as a private CA is configured.
func tlsServer(t *testing.T, stall time.Duration, h http.HandlerFunc) (*httptest.Server, *http.Client) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	// A small receive buffer, so that what the server has not read yet is
	// mostly still on the client's side, where progress can be seen.
	srv.Listener = smallBuffers{srv.Listener}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := NewHTTPClient(TransportConfig{CAFile: ca, StallTimeout: stall})
	if err != nil {
		t.Fatal(err)
	}
	return srv, c
}

// A server that takes the request and never answers is abandoned after the
// stall timeout, over TLS as over plain TCP.
func TestStalledRequestIsAbandoned(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	srv, c := tlsServer(t, 300*time.Millisecond, func(w http.ResponseWriter, r *http.Request) {
		<-release
	})
	start := time.Now()
	_, err := c.Get(srv.URL)
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("err = %v, want a stall", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 3*time.Second {
		t.Fatalf("abandoned after %v, want about the stall timeout", d)
	}

	// A TCP listener that accepts and never reads or writes.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
		}
	}()
	plain, _ := NewHTTPClient(TransportConfig{StallTimeout: 300 * time.Millisecond})
	// A body larger than the socket buffers: the write itself stalls (or
	// the read waiting for the answer sees the silence first and closes the
	// connection under it).
	start = time.Now()
	_, err = plain.Post("http://"+ln.Addr().String(), "application/octet-stream", bytes.NewReader(make([]byte, 64<<20)))
	var ne net.Error
	if !errors.As(err, &ne) {
		t.Fatalf("upload to a server that never reads: err = %v, want a network error", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("upload to a server that never reads abandoned after %v", d)
	}
	// And a TLS handshake that never comes.
	_, err = c.Get("https://" + ln.Addr().String())
	if err == nil {
		t.Fatal("a handshake that never came succeeded")
	}
}

// Slow transfers that keep moving are not cut off, however long they take:
// the deadline bounds silence, not duration.
func TestSlowButMovingTransfersFinish(t *testing.T) {
	const stall = 250 * time.Millisecond
	srv, c := tlsServer(t, stall, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			// Read the body a little at a time, for longer than the stall
			// timeout in all.
			buf := make([]byte, 64<<10)
			n := 0
			for {
				m, err := r.Body.Read(buf)
				n += m
				if err != nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			w.Header().Set("X-Got", string(rune('0'+n%10)))
			return
		}
		// Trickle the answer, one byte every 100 ms.
		w.WriteHeader(200)
		for i := 0; i < 12; i++ {
			w.Write([]byte{'x'})
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	})
	start := time.Now()
	resp, err := c.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || len(body) != 12 {
		t.Fatalf("trickled answer: %d bytes, %v", len(body), err)
	}
	if time.Since(start) < 4*stall {
		t.Fatalf("the answer took %v: the test proves nothing", time.Since(start))
	}
	req, _ := http.NewRequest(http.MethodPut, srv.URL, bytes.NewReader(make([]byte, 2<<20)))
	start = time.Now()
	resp, err = c.Do(req)
	if err != nil {
		t.Fatalf("slowly read upload failed after %v: %v", time.Since(start), err)
	}
	resp.Body.Close()
	if time.Since(start) < 2*stall {
		t.Fatalf("the upload took %v: the test proves nothing", time.Since(start))
	}
}

// An answer that stops half way fails the read of its body.
func TestAnswerThatStopsMidBodyFails(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	srv, c := tlsServer(t, 300*time.Millisecond, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(200)
		w.Write(make([]byte, 500))
		w.(http.Flusher).Flush()
		<-release
	})
	resp, err := c.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, err = io.ReadAll(resp.Body)
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("err = %v, want a stall", err)
	}
}

type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(32 << 10)
	}
	return c, err
}

// countingConn counts the writes that reach it and keeps their bytes.
type countingConn struct {
	net.Conn
	mu     sync.Mutex
	writes int
	data   bytes.Buffer
}

func (c *countingConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
	return c.data.Write(b)
}

// While gathering, records leave in as few writes as the buffer allows, in
// order; outside, each write goes as it is; writes from another goroutine
// (TLS's reader answering a key update) are safe meanwhile.
func TestRecordsGathered(t *testing.T) {
	under := &countingConn{}
	rc := newRecordConn(under)
	record := func(b byte) []byte { return bytes.Repeat([]byte{b}, maxRecord+29) }
	var want bytes.Buffer
	rc.gather()
	for i := range 6 {
		r := record(byte('a' + i))
		want.Write(r)
		if n, err := rc.Write(r); err != nil || n != len(r) {
			t.Fatalf("write %d: %d, %v", i, n, err)
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = rc.Write(nil) })
	wg.Wait()
	if err := rc.release(); err != nil {
		t.Fatal(err)
	}
	if under.writes != 2 || !bytes.Equal(under.data.Bytes(), want.Bytes()) {
		t.Fatalf("6 records in %d writes (want 2), bytes equal: %v", under.writes, bytes.Equal(under.data.Bytes(), want.Bytes()))
	}
	if _, err := rc.Write([]byte("after")); err != nil || under.writes != 3 {
		t.Fatalf("a write outside a gather: %v, %d writes", err, under.writes)
	}
}

// A request body sent over TLS with its records gathered arrives whole.
func TestGatheredBodyArrives(t *testing.T) {
	body := make([]byte, 1<<20+12345)
	for i := range body {
		body[i] = byte(i * 31)
	}
	srv, c := tlsServer(t, 5*time.Second, func(w http.ResponseWriter, r *http.Request) {
		got, err := io.ReadAll(r.Body)
		if err != nil || !bytes.Equal(got, body) {
			http.Error(w, "body differs", http.StatusBadRequest)
		}
	})
	for range 3 {
		// An in-memory body as the SDK hands it over: without WriterTo.
		req, _ := http.NewRequest(http.MethodPut, srv.URL, io.NopCloser(struct{ io.Reader }{bytes.NewReader(body)}))
		req.ContentLength = int64(len(body))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
}

// An upload whose records are being gathered still notices a server that
// stops reading, and is abandoned after the stall timeout; a slow reader
// is not mistaken for one.
func TestGatheredUploadStallsAndTrickles(t *testing.T) {
	const stall = 300 * time.Millisecond
	release := make(chan struct{})
	defer close(release)
	srv, c := tlsServer(t, stall, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stall" {
			<-release // reads nothing
			return
		}
		buf := make([]byte, 32<<10)
		for {
			if _, err := r.Body.Read(buf); err != nil {
				return
			}
			time.Sleep(15 * time.Millisecond)
		}
	})
	wrapped := func(n int) io.Reader { return struct{ io.Reader }{bytes.NewReader(make([]byte, n))} }
	req, _ := http.NewRequest(http.MethodPut, srv.URL+"/stall", wrapped(16<<20))
	req.ContentLength = 16 << 20
	start := time.Now()
	_, err := c.Do(req)
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("err = %v, want a stall", err)
	}
	if d := time.Since(start); d > 10*stall {
		t.Fatalf("abandoned after %v", d)
	}
	req, _ = http.NewRequest(http.MethodPut, srv.URL+"/slow", wrapped(2<<20))
	req.ContentLength = 2 << 20
	start = time.Now()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("slowly read upload failed after %v: %v", time.Since(start), err)
	}
	resp.Body.Close()
	if time.Since(start) < 2*stall {
		t.Fatalf("the upload took %v: the test proves nothing", time.Since(start))
	}
}
