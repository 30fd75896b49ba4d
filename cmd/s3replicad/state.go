package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/s3replicad/s3replicad/admin"
	"github.com/s3replicad/s3replicad/checkpoint"
	"github.com/s3replicad/s3replicad/config"
	"github.com/s3replicad/s3replicad/dynamostate"
	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/reconcile"
)

// stateStore is what the commands use of the state: the bbolt file of one
// node, or the DynamoDB table of a cluster.
type stateStore interface {
	engine.StateStore
	reconcile.State
	report(ctx context.Context, now time.Time) (*admin.Report, error)
	prune(ctx context.Context, before time.Time) (int, error)
	where() string
	Close() error
}

// localState is the bbolt state file.
type localState struct{ *checkpoint.Store }

func (l localState) report(_ context.Context, now time.Time) (*admin.Report, error) {
	st, err := l.Status(now)
	if err != nil {
		return nil, err
	}
	return &admin.Report{Status: *st}, nil
}

func (l localState) prune(_ context.Context, before time.Time) (int, error) { return l.Prune(before) }
func (l localState) where() string                                          { return l.Path() }

// clusterState is the cluster's table.
type clusterState struct{ *dynamostate.Store }

func (c clusterState) report(ctx context.Context, now time.Time) (*admin.Report, error) {
	st, err := c.Status(ctx, now)
	if err != nil {
		return nil, err
	}
	return &admin.Report{Status: st.Status, Shards: st.Shards, Nodes: st.Nodes}, nil
}

func (c clusterState) prune(ctx context.Context, before time.Time) (int, error) {
	return c.Prune(ctx, before)
}

func (c clusterState) where() string { return "dynamodb table " + c.Table() }

// openState opens the state for writing: the state file (explaining a
// held lock), or the cluster's table.
func openState(ctx context.Context, cfg *config.Config, log *slog.Logger) (stateStore, error) {
	if cfg.Cluster != nil {
		// state_dir still holds the admin socket and restores' state.
		if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
			return nil, fmt.Errorf("create state_dir %s: %w", cfg.StateDir, err)
		}
		st, err := dynamostate.Open(ctx, cfg.DynamoConfig(log.With("component", "cluster")))
		if err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		return clusterState{st}, nil
	}
	st, err := checkpoint.Open(cfg.StateDir, checkpoint.Options{Timeout: 3 * time.Second,
		Progress: func(format string, args ...any) { log.Info(fmt.Sprintf(format, args...), "component", "state") }})
	if errors.Is(err, checkpoint.ErrLocked) {
		return nil, fmt.Errorf("%w: is `s3replicad run` already running with state_dir %s?", err, cfg.StateDir)
	}
	if err != nil {
		return nil, err
	}
	return localState{st}, nil
}
