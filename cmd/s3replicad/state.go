package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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
	report(ctx context.Context, now time.Time) (*statusReport, error)
	prune(ctx context.Context, before time.Time) (int, error)
	where() string
	Close() error
}

// statusReport is what `status` shows; `status -json` prints it as is.
// A cluster adds its shards and nodes.
type statusReport struct {
	checkpoint.Status
	Shards int                      `json:"shards,omitempty"`
	Nodes  []dynamostate.NodeStatus `json:"nodes,omitempty"`
}

// localState is the bbolt state file.
type localState struct{ *checkpoint.Store }

func (l localState) report(_ context.Context, now time.Time) (*statusReport, error) {
	st, err := l.Status(now)
	if err != nil {
		return nil, err
	}
	return &statusReport{Status: *st}, nil
}

func (l localState) prune(_ context.Context, before time.Time) (int, error) { return l.Prune(before) }
func (l localState) where() string                                          { return l.Path() }

// clusterState is the cluster's table.
type clusterState struct{ *dynamostate.Store }

func (c clusterState) report(ctx context.Context, now time.Time) (*statusReport, error) {
	st, err := c.Status(ctx, now)
	if err != nil {
		return nil, err
	}
	return &statusReport{Status: st.Status, Shards: st.Shards, Nodes: st.Nodes}, nil
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

// registerClusterMetrics exports what this node sees of its leases and of
// the other nodes: a node that stops renewing shows as silent on the
// others, which is what the alert S3ReplicadClusterNodeSilent watches.
func registerClusterMetrics(reg prometheus.Registerer, st *dynamostate.Store) {
	stat := func(f func(dynamostate.LeaseStats) int64) func() float64 {
		return func() float64 { return float64(f(st.LeaseStats())) }
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "s3replicad_cluster_leases_held",
			Help: "Lease shards this node holds now."}, stat(func(s dynamostate.LeaseStats) int64 { return int64(s.Held) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "s3replicad_cluster_leases_taken_over_total",
			Help: "Leases this node took over from a node that stopped renewing."}, stat(func(s dynamostate.LeaseStats) int64 { return s.TakenOver })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "s3replicad_cluster_leases_lost_total",
			Help: "Leases another node took from this one."}, stat(func(s dynamostate.LeaseStats) int64 { return s.Lost })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "s3replicad_cluster_leases_expired_total",
			Help: "Leases this node gave up because it could not renew them in time (cut off from the table)."}, stat(func(s dynamostate.LeaseStats) int64 { return s.Expired })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "s3replicad_cluster_lease_renew_failures_total",
			Help: "Failed lease renewals."}, stat(func(s dynamostate.LeaseStats) int64 { return s.RenewFailures })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "s3replicad_cluster_nodes_live",
			Help: "Nodes this node sees renewing their heartbeat, itself included."}, func() float64 { return float64(st.Peers().Live) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "s3replicad_cluster_nodes_silent",
			Help: "Nodes that have not renewed their heartbeat for a lease without stopping cleanly (dead or cut off)."}, func() float64 { return float64(st.Peers().Silent) }),
	)
}
