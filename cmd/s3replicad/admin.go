package main

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
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/s3replicad/s3replicad/config"
	"github.com/s3replicad/s3replicad/checkpoint"
	"github.com/s3replicad/s3replicad/dynamostate"
	"github.com/s3replicad/s3replicad/engine"
)

// The state file has one writer. While `run` holds it, status, retry and
// backfill reach the daemon over a unix socket in state_dir (admin.sock,
// mode 0600 in a 0700 directory): only the daemon's own user and root can
// use them. Without a daemon they open the state file themselves.

// AdminSocketName is the admin socket's name inside state_dir.
const AdminSocketName = "admin.sock"

func adminSocket(cfg *config.Config) string { return filepath.Join(cfg.StateDir, AdminSocketName) }

func adminHandler(r *replicator, bf *backfills) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, req *http.Request) {
		st, err := r.state.report(req.Context(), time.Now())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if st.Nodes == nil {
			// One node: the ops its workers have count as in flight. A
			// cluster's nodes report theirs in the node list.
			st.WithRunning(r.engine.Running())
		}
		st.DaemonRunning, st.IntakePaused = true, r.engine.Paused()
		writeJSON(w, st)
	})
	mux.HandleFunc("POST /retry", func(w http.ResponseWriter, req *http.Request) {
		var body retryRequest
		if err := json.NewDecoder(io.LimitReader(req.Body, 16<<20)).Decode(&body); err != nil {
			http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		n, err := r.engine.Retry(req.Context(), body.Keys)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, retryResponse{Retried: n})
	})
	mux.HandleFunc("POST /backfill", func(w http.ResponseWriter, req *http.Request) {
		p, err := bf.start(req.URL.Query().Get("rule"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, p)
	})
	mux.HandleFunc("GET /backfill", func(w http.ResponseWriter, req *http.Request) {
		p, ok := bf.progress(req.URL.Query().Get("id"))
		if !ok {
			http.Error(w, "no such backfill", http.StatusNotFound)
			return
		}
		writeJSON(w, p)
	})
	return mux
}

type retryRequest struct {
	Keys []string `json:"keys"`
}

type retryResponse struct {
	Retried int `json:"retried"`
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// daemon is a running daemon, reached through its admin socket.
type daemon struct {
	socket string
	hc     *http.Client
}

// findDaemon returns the running daemon, nil when none runs (no socket,
// or one left by a daemon that died), or an error when the socket exists
// but cannot be used: a permission problem is never taken for "no daemon".
func findDaemon(cfg *config.Config) (*daemon, error) {
	path := adminSocket(cfg)
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
	return &daemon{socket: path, hc: &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}, nil
}

func (d *daemon) call(ctx context.Context, method, path string, in, out any) error {
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
	resp, err := d.hc.Do(req)
	if err != nil {
		return fmt.Errorf("the daemon on %s does not answer: %w", d.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("daemon answered %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

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
	printStatus(stdout, st)
	return nil
}

// status asks the running daemon first, then reads the state file (or,
// for a cluster, its table).
func status(ctx context.Context, cfg *config.Config) (*statusReport, error) {
	d, err := findDaemon(cfg)
	if err != nil {
		return nil, err
	}
	if d != nil {
		st := new(statusReport)
		return st, d.call(ctx, http.MethodGet, "/status", nil, st)
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
		return &statusReport{Status: *checkpoint.EmptyStatus(time.Now())}, nil
	}
	s, err := openLocal(cfg, true)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return localState{s}.report(ctx, time.Now())
}

func printStatus(w io.Writer, st *statusReport) {
	running := "not running (read from the state file)"
	if st.DaemonRunning {
		running = "running"
	}
	if st.Nodes != nil {
		live := 0
		for _, n := range st.Nodes {
			if n.Live {
				live++
			}
		}
		running = fmt.Sprintf("cluster of %d nodes, %d live, %d shards", len(st.Nodes), live, st.Shards)
	}
	fmt.Fprintf(w, "daemon:          %s\n", running)
	for _, s := range engine.States {
		fmt.Fprintf(w, "%-16s %d\n", string(s)+":", st.Counts[s])
	}
	fmt.Fprintf(w, "late versions:   %d (written after a newer one, the newest copied back on top)\n", st.LateVersions)
	fmt.Fprintf(w, "bytes pending:   %d (%s)\n", st.BytesPending, config.HumanBytes(st.BytesPending))
	if st.OldestPending != nil {
		fmt.Fprintf(w, "oldest pending:  %s (%s ago)\n", st.OldestPending.Format(time.RFC3339), time.Duration(st.OldestPendingAge*float64(time.Second)).Round(time.Second))
	} else {
		fmt.Fprintf(w, "oldest pending:  none\n")
	}
	if st.Uploads > 0 {
		fmt.Fprintf(w, "multipart copies in progress: %d\n", st.Uploads)
	}
	if len(st.Rules) > 1 {
		fmt.Fprintln(w, "\nby rule:")
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  RULE\tPENDING\tIN_FLIGHT\tCOMPLETED\tFAILED\tSKIPPED\tSUPERSEDED\tLATE\tBYTES_PENDING")
		ids := make([]string, 0, len(st.Rules))
		for id := range st.Rules {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			c := st.Rules[id].Counts
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", id, c[engine.Pending], c[engine.InFlight], c[engine.Completed],
				c[engine.Failed], c[engine.Skipped], c[engine.Superseded], st.Rules[id].LateVersions, st.Rules[id].BytesPending)
		}
		tw.Flush()
	}
	backfills := make([]string, 0, len(st.Backfill))
	for rule := range st.Backfill {
		backfills = append(backfills, rule)
	}
	sort.Strings(backfills)
	for _, rule := range backfills {
		c := st.Backfill[rule]
		state := "in progress"
		if c.Done {
			state = "done"
		}
		fmt.Fprintf(w, "backfill %s:  %s, %d versions listed, %d submitted\n", rule, state, c.Listed, c.Submitted)
	}
	if len(st.Nodes) > 0 {
		fmt.Fprintln(w, "\nnodes:")
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  NODE\tHOST\tSTATE\tLAST RENEWAL\tLEASES\tOPS HELD\tIN FLIGHT")
		for _, n := range st.Nodes {
			state := "live"
			switch {
			case n.Stopped:
				state = "stopped"
			case !n.Live:
				state = "SILENT"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s (%s ago)\t%d\t%d\t%d\n", n.ID, n.Host, state, n.LastRenewal.Format(time.RFC3339),
				time.Since(n.LastRenewal).Round(time.Second), n.Leases, n.Held, n.InFlight)
		}
		tw.Flush()
	}
	if len(st.Failed) > 0 {
		fmt.Fprintln(w, "\nfailed (fix the cause, then `s3replicad retry -all` or `s3replicad retry KEY...`):")
		for _, f := range st.Failed {
			v := f.VersionID
			if v == "" {
				v = "null"
			}
			fmt.Fprintf(w, "  %s  %s@%s  [%s] %s\n", f.Rule, f.Key, v, f.Reason, f.Error)
		}
	}
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
		var resp retryResponse
		err := d.call(ctx, http.MethodPost, "/retry", retryRequest{Keys: keys}, &resp)
		return resp.Retried, err
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
