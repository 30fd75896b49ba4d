package admin_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/admin"
	"github.com/s3replicad/s3replicad/serve"
)

type service struct{ retried []string }

func (s *service) Status(context.Context) (any, error) { return map[string]int{"pending": 3}, nil }
func (s *service) Retry(_ context.Context, keys []string) (int, error) {
	s.retried = keys
	return len(keys), nil
}
func (s *service) StartBackfill(_ context.Context, rule string) (any, error) {
	if rule == "nope" {
		return nil, errors.Join(admin.ErrBadRequest, errors.New("no rule nope"))
	}
	return map[string]string{"id": "b1"}, nil
}
func (s *service) Backfill(id string) (any, bool) {
	return map[string]string{"id": id}, id == "b1"
}

// The client finds the daemon by its state directory and reaches every call
// of the API through the socket; a socket left by a dead daemon is no
// daemon; the socket is the daemon's user's alone.
func TestClientAndHandlerOverTheSocket(t *testing.T) {
	dir := t.TempDir()
	if c, err := admin.Find(dir); c != nil || err != nil {
		t.Fatalf("Find without a daemon: %v, %v", c, err)
	}
	svc := &service{}
	srv, err := serve.Socket(admin.SocketPath(dir), admin.Handler(svc))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	fi, err := os.Stat(filepath.Join(dir, admin.SocketName))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v (%v), want 0600", fi.Mode(), err)
	}
	c, err := admin.Find(dir)
	if err != nil || c == nil {
		t.Fatalf("Find with a daemon: %v, %v", c, err)
	}
	var st map[string]int
	if err := c.Status(ctx, &st); err != nil || st["pending"] != 3 {
		t.Fatalf("Status: %v %v", st, err)
	}
	if n, err := c.Retry(ctx, []string{"a", "b"}); err != nil || n != 2 || strings.Join(svc.retried, ",") != "a,b" {
		t.Fatalf("Retry: %d %v %v", n, err, svc.retried)
	}
	var p map[string]string
	if err := c.StartBackfill(ctx, "", &p); err != nil || p["id"] != "b1" {
		t.Fatalf("StartBackfill: %v %v", p, err)
	}
	if err := c.StartBackfill(ctx, "nope", &p); err == nil || !strings.Contains(err.Error(), "400") {
		t.Fatalf("StartBackfill of a bad rule: %v, want a 400", err)
	}
	if err := c.Backfill(ctx, "b1", &p); err != nil || p["id"] != "b1" {
		t.Fatalf("Backfill: %v %v", p, err)
	}
	if err := c.Backfill(ctx, "other", &p); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("Backfill of no such job: %v, want a 404", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the server did not stop")
	}
}
