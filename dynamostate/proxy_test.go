package dynamostate_test

import (
	"io"
	"net"
	"strings"
	"sync"
	"testing"
)

// faultProxy is a TCP relay in front of dynalite that can cut a node off
// from the table: refusing connections (closed as soon as accepted) or
// stalling them (accepted, never answered). Changing the mode drops the
// connections already open, so that pooled connections see it too.
type faultProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	mode   string
	conns  map[net.Conn]struct{}
}

func newFaultProxy(t testing.TB, targetURL string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{ln: ln, target: strings.TrimPrefix(targetURL, "http://"), mode: "pass", conns: map[net.Conn]struct{}{}}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.set("pass") })
	return p
}

func (p *faultProxy) URL() string { return "http://" + p.ln.Addr().String() }

func (p *faultProxy) set(mode string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = mode
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

func (p *faultProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *faultProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		mode := p.mode
		p.mu.Unlock()
		switch mode {
		case "refuse":
			c.Close()
		case "stall":
			p.track(c) // held open, never read, until the mode changes
		default:
			go p.relay(c)
		}
	}
}

func (p *faultProxy) relay(c net.Conn) {
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.track(c)
	p.track(up)
	go func() { _, _ = io.Copy(up, c); up.Close() }()
	_, _ = io.Copy(c, up)
	c.Close()
}
