package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/s3replicad/s3replicad/admin"
	"github.com/s3replicad/s3replicad/checkpoint"
	"github.com/s3replicad/s3replicad/config"
	"github.com/s3replicad/s3replicad/dynamostate"
	"github.com/s3replicad/s3replicad/reconcile"
)

// The state file has one writer. While `run` holds it, status, retry and
// backfill reach the daemon over a unix socket in state_dir (admin.sock,
// mode 0600 in a 0700 directory): only the daemon's own user and root can
// use them. Without a daemon they open the state file themselves.

func adminSocket(cfg *config.Config) string { return admin.SocketPath(cfg.StateDir) }

// daemonService is what the daemon answers on its admin socket.
type daemonService struct {
	r    *replicator
	jobs *reconcile.Jobs
}

var _ admin.Service = daemonService{}

func (d daemonService) Status(ctx context.Context) (any, error) {
	st, err := d.r.state.report(ctx, time.Now())
	if err != nil {
		return nil, err
	}
	if st.Nodes == nil {
		// One node: the ops its workers have count as in flight. A
		// cluster's nodes report theirs in the node list.
		st.WithRunning(d.r.engine.Running())
	}
	st.DaemonRunning, st.IntakePaused = true, d.r.engine.Paused()
	return st, nil
}

func (d daemonService) Retry(ctx context.Context, keys []string) (int, error) {
	return d.r.engine.Retry(ctx, keys)
}

func (d daemonService) StartBackfill(_ context.Context, rule string) (any, error) {
	rules, err := d.r.cfg.SelectRules(rule)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", admin.ErrBadRequest, err)
	}
	p, err := d.jobs.Start(rules)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", admin.ErrBadRequest, err)
	}
	return p, nil
}

func (d daemonService) Backfill(id string) (any, bool) { return d.jobs.Progress(id) }

// findDaemon returns the running daemon's admin client (nil: none runs).
func findDaemon(cfg *config.Config) (*admin.Client, error) { return admin.Find(cfg.StateDir) }

// stateFileExists tells whether there is a state file to read; a state
// directory or file that exists but cannot be looked at is an error.
func stateFileExists(cfg *config.Config) (bool, error) {
	path := filepath.Join(cfg.StateDir, checkpoint.FileName)
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("state file %s: %w", path, err)
}

// openLocal opens the state file when no daemon runs.
func openLocal(cfg *config.Config, readOnly bool) (*checkpoint.Store, error) {
	st, err := checkpoint.Open(cfg.StateDir, checkpoint.Options{ReadOnly: readOnly, Timeout: time.Second})
	if errors.Is(err, checkpoint.ErrLocked) {
		return nil, fmt.Errorf("%w, but no daemon answers on %s: is a backfill running?", err, adminSocket(cfg))
	}
	return st, err
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cfgFlag := flags("status", stderr)
	asJSON := fs.Bool("json", false, "print JSON (stable fields, see README)")
	cfg, err := loadStateFor(fs, cfgFlag, args)
	if err != nil {
		return err
	}
	st, err := status(ctx, cfg)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	st.Print(stdout)
	return nil
}

// status asks the running daemon first, then reads the state file (or,
// for a cluster, its table).
func status(ctx context.Context, cfg *config.Config) (*admin.Report, error) {
	d, err := findDaemon(cfg)
	if err != nil {
		return nil, err
	}
	if d != nil {
		st := new(admin.Report)
		return st, d.Status(ctx, st)
	}
	if cfg.Cluster != nil {
		st, err := openClusterHere(ctx, cfg)
		if err != nil {
			return nil, err
		}
		defer st.Close()
		return st.report(ctx, time.Now())
	}
	exists, err := stateFileExists(cfg)
	if err != nil {
		return nil, err
	}
	if !exists {
		return &admin.Report{Status: *checkpoint.EmptyStatus(time.Now())}, nil
	}
	s, err := openLocal(cfg, true)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return localState{s}.report(ctx, time.Now())
}

func cmdRetry(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cfgFlag := flags("retry", stderr)
	all := fs.Bool("all", false, "retry every failed operation")
	cfg, err := loadStateFor(fs, cfgFlag, args)
	if err != nil {
		return err
	}
	keys := fs.Args()
	if *all == (len(keys) > 0) {
		return &usageError{"retry: give either -all or one or more KEYs"}
	}
	n, err := retryFailed(ctx, cfg, keys)
	if err != nil {
		return fmt.Errorf("retry: %w", err)
	}
	fmt.Fprintf(stdout, "retried %d failed operations\n", n)
	if n == 0 && len(keys) > 0 {
		return fmt.Errorf("retry: no failed operation for %s", strings.Join(keys, ", "))
	}
	return nil
}

func retryFailed(ctx context.Context, cfg *config.Config, keys []string) (int, error) {
	d, err := findDaemon(cfg)
	if err != nil {
		return 0, err
	}
	if d != nil {
		return d.Retry(ctx, keys)
	}
	if cfg.Cluster != nil {
		// The failed ops become pending in the table: their keys' owners
		// pick them up.
		st, err := openClusterHere(ctx, cfg)
		if err != nil {
			return 0, err
		}
		defer st.Close()
		ops, err := st.Retry(ctx, keys)
		return len(ops), err
	}
	exists, err := stateFileExists(cfg)
	if err != nil || !exists {
		return 0, err
	}
	s, err := openLocal(cfg, false)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	ops, err := s.Retry(ctx, keys)
	return len(ops), err
}

// openClusterHere opens the cluster's table from a command run where no
// daemon answers: it needs the cluster section's credentials, read from
// the whole configuration.
func openClusterHere(ctx context.Context, cfg *config.Config) (clusterState, error) {
	full, err := config.Load(cfg.File())
	if err != nil {
		return clusterState{}, err
	}
	st, err := dynamostate.Open(ctx, full.DynamoConfig(warnLogger(os.Stderr)))
	if err != nil {
		return clusterState{}, fmt.Errorf("cluster: %w", err)
	}
	return clusterState{st}, nil
}
