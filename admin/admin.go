// Package admin is the daemon's admin API, on a unix socket in state_dir
// (package serve listens there): status, retry and backfill ask a running
// daemon through it, so that only the daemon's own user and root can use
// them. It holds the API's handler and its client.
package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// SocketName is the admin socket's name inside state_dir.
const SocketName = "admin.sock"

// SocketPath is the admin socket of a state directory.
func SocketPath(stateDir string) string { return filepath.Join(stateDir, SocketName) }

// Service is what the daemon answers through the socket.
type Service interface {
	Status(ctx context.Context) (any, error)
	Retry(ctx context.Context, keys []string) (int, error)
	// StartBackfill starts a backfill of one rule ("": every rule); a
	// bad request is an error wrapping ErrBadRequest.
	StartBackfill(ctx context.Context, rule string) (any, error)
	// Backfill is a backfill's progress; false when there is none.
	Backfill(id string) (any, bool)
}

// ErrBadRequest marks a request the daemon refuses as such.
var ErrBadRequest = errors.New("bad request")

type retryRequest struct {
	Keys []string `json:"keys"`
}

type retryResponse struct {
	Retried int `json:"retried"`
}

// Handler serves s.
func Handler(s Service) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, req *http.Request) {
		st, err := s.Status(req.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, st)
	})
	mux.HandleFunc("POST /retry", func(w http.ResponseWriter, req *http.Request) {
		var body retryRequest
		if err := json.NewDecoder(io.LimitReader(req.Body, 16<<20)).Decode(&body); err != nil {
			http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		n, err := s.Retry(req.Context(), body.Keys)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, retryResponse{Retried: n})
	})
	mux.HandleFunc("POST /backfill", func(w http.ResponseWriter, req *http.Request) {
		p, err := s.StartBackfill(req.Context(), req.URL.Query().Get("rule"))
		if err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, ErrBadRequest) {
				code = http.StatusBadRequest
			}
			http.Error(w, err.Error(), code)
			return
		}
		writeJSON(w, p)
	})
	mux.HandleFunc("GET /backfill", func(w http.ResponseWriter, req *http.Request) {
		p, ok := s.Backfill(req.URL.Query().Get("id"))
		if !ok {
			http.Error(w, "no such backfill", http.StatusNotFound)
			return
		}
		writeJSON(w, p)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Client is a running daemon, reached through its admin socket.
type Client struct {
	socket string
	hc     *http.Client
}

// Find returns the daemon running with stateDir, nil when none runs (no
// socket, or one left by a daemon that died), or an error when the socket
// exists but cannot be used: a permission problem is never taken for "no
// daemon".
func Find(stateDir string) (*Client, error) {
	path := SocketPath(stateDir)
	if _, err := os.Lstat(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("admin socket %s: %w (status, retry and backfill need the daemon's user or root)", path, err)
	}
	conn, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return nil, nil // stale: the daemon that made it is gone
		}
		return nil, fmt.Errorf("admin socket %s: %w (status, retry and backfill need the daemon's user or root)", path, err)
	}
	conn.Close()
	return &Client{socket: path, hc: &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}, nil
}

// Status decodes the daemon's status into out.
func (c *Client) Status(ctx context.Context, out any) error {
	return c.call(ctx, http.MethodGet, "/status", nil, out)
}

// Retry puts failed operations back to pending (keys: all when empty).
func (c *Client) Retry(ctx context.Context, keys []string) (int, error) {
	var resp retryResponse
	err := c.call(ctx, http.MethodPost, "/retry", retryRequest{Keys: keys}, &resp)
	return resp.Retried, err
}

// StartBackfill starts a backfill inside the daemon; out gets its progress.
func (c *Client) StartBackfill(ctx context.Context, rule string, out any) error {
	path := "/backfill"
	if rule != "" {
		path += "?rule=" + url.QueryEscape(rule)
	}
	return c.call(ctx, http.MethodPost, path, nil, out)
}

// Backfill decodes a backfill's progress into out.
func (c *Client) Backfill(ctx context.Context, id string, out any) error {
	return c.call(ctx, http.MethodGet, "/backfill?id="+url.QueryEscape(id), nil, out)
}

func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://s3replicad"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("the daemon on %s does not answer: %w", c.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("daemon answered %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
