package dynamostate_test

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/dynamostate"
)

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("DYNAMOSTATE_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// node is one Store with its lease manager running.
type node struct {
	*dynamostate.Store
	cancel context.CancelFunc
	done   chan struct{}
}

// startNode opens a store as a new node and runs its lease manager until
// the test ends (or stop/crash).
func startNode(t testing.TB, cfg dynamostate.Config, id string) *node {
	t.Helper()
	cfg.NodeID, cfg.Host = id, "host-"+id
	st, err := dynamostate.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{Store: st, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(n.done); _ = st.Run(ctx) }()
	t.Cleanup(func() { n.crash(); _ = st.Close() })
	return n
}

// openStore opens a store that takes no part in the leases, as a
// command (status, retry) run on some machine does.
func openStore(t testing.TB, cfg dynamostate.Config, id string) *dynamostate.Store {
	t.Helper()
	cfg.NodeID, cfg.Host = id, "host-"+id
	st, err := dynamostate.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// crash stops the lease manager without releasing: as kill -9 would.
func (n *node) crash() {
	n.cancel()
	<-n.done
}

// waitFor polls cond until it holds or the time is up.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}
