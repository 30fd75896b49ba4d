package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/s3replicad/s3replicad/checkpoint"
	"github.com/s3replicad/s3replicad/engine"
)

// The state file has one writer. While `run` holds it, status, retry and
// backfill go through these loopback-only endpoints on `listen`.

func adminHandler(r *replicator, bf *backfills) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/status", func(w http.ResponseWriter, _ *http.Request) {
		st, err := r.state.Status(time.Now())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		st.WithRunning(r.engine.Running())
		st.DaemonRunning, st.IntakePaused = true, r.engine.Paused()
		writeJSON(w, st)
	})
	mux.HandleFunc("POST /admin/retry", func(w http.ResponseWriter, req *http.Request) {
		var body retryRequest
		if err := json.NewDecoder(io.LimitReader(req.Body, 16<<20)).Decode(&body); err != nil {
			http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		n, err := r.engine.Retry(body.Keys)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, retryResponse{Retried: n})
	})
	mux.HandleFunc("POST /admin/backfill", func(w http.ResponseWriter, req *http.Request) {
		p, err := bf.start(req.URL.Query().Get("rule"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, p)
	})
	mux.HandleFunc("GET /admin/backfill", func(w http.ResponseWriter, req *http.Request) {
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

// adminURL is where a running daemon answers, from the config's listen.
func adminURL(cfg *Config, path string) string {
	host, port, _ := net.SplitHostPort(cfg.Listen)
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + path
}

var adminClient = &http.Client{Timeout: 30 * time.Second}

func adminCall(ctx context.Context, cfg *Config, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, adminURL(cfg, path), body)
	if err != nil {
		return err
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return fmt.Errorf("the state file is locked by a running daemon, but its admin endpoint on %s does not answer: %w", cfg.Listen, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("daemon answered %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// withState runs fn on the state file when no daemon holds it; it reports
// false when the daemon does, so the caller goes through the admin endpoint.
func withState(cfg *Config, readOnly bool, fn func(*checkpoint.Store) error) (bool, error) {
	st, err := checkpoint.Open(cfg.StateDir, checkpoint.Options{ReadOnly: readOnly, Timeout: 300 * time.Millisecond})
	if errors.Is(err, checkpoint.ErrLocked) {
		return false, nil
	}
	if err != nil {
		return true, err
	}
	defer st.Close()
	return true, fn(st)
}

func stateExists(cfg *Config) bool {
	_, err := os.Stat(cfg.StateDir + "/" + checkpoint.FileName)
	return err == nil
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cfgFlag := flags("status", stderr)
	asJSON := fs.Bool("json", false, "print JSON (stable fields, see README)")
	cfg, _, err := loadFor(fs, cfgFlag, args, stderr)
	if err != nil {
		return err
	}
	var st *checkpoint.Status
	if !stateExists(cfg) {
		st, err = emptyStatus()
	} else {
		var local bool
		local, err = withState(cfg, true, func(s *checkpoint.Store) error {
			var e error
			st, e = s.Status(time.Now())
			return e
		})
		if err == nil && !local {
			st = new(checkpoint.Status)
			err = adminCall(ctx, cfg, http.MethodGet, "/admin/status", nil, st)
		}
	}
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

func emptyStatus() (*checkpoint.Status, error) {
	dir, err := os.MkdirTemp("", "s3replicad-status-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	s, err := checkpoint.Open(dir, checkpoint.Options{})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return s.Status(time.Now())
}

func printStatus(w io.Writer, st *checkpoint.Status) {
	running := "not running (read from the state file)"
	if st.DaemonRunning {
		running = "running"
	}
	fmt.Fprintf(w, "daemon:          %s\n", running)
	for _, s := range engine.States {
		fmt.Fprintf(w, "%-16s %d\n", string(s)+":", st.Counts[s])
	}
	fmt.Fprintf(w, "bytes pending:   %d (%s)\n", st.BytesPending, humanBytes(st.BytesPending))
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
		fmt.Fprintln(tw, "  RULE\tPENDING\tIN_FLIGHT\tCOMPLETED\tFAILED\tSKIPPED\tSUPERSEDED\tBYTES_PENDING")
		ids := make([]string, 0, len(st.Rules))
		for id := range st.Rules {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			c := st.Rules[id].Counts
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", id, c[engine.Pending], c[engine.InFlight], c[engine.Completed],
				c[engine.Failed], c[engine.Skipped], c[engine.Superseded], st.Rules[id].BytesPending)
		}
		tw.Flush()
	}
	for rule, c := range st.Backfill {
		state := "in progress"
		if c.Done {
			state = "done"
		}
		fmt.Fprintf(w, "backfill %s:  %s, %d versions listed, %d submitted\n", rule, state, c.Listed, c.Submitted)
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

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func cmdRetry(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cfgFlag := flags("retry", stderr)
	all := fs.Bool("all", false, "retry every failed operation")
	cfg, _, err := loadFor(fs, cfgFlag, args, stderr)
	if err != nil {
		return err
	}
	keys := fs.Args()
	if *all == (len(keys) > 0) {
		return &usageError{"retry: give either -all or one or more KEYs"}
	}
	if !stateExists(cfg) {
		fmt.Fprintln(stdout, "retried 0 failed operations (no state file yet)")
		return nil
	}
	var n int
	local, err := withState(cfg, false, func(s *checkpoint.Store) error {
		ops, err := s.Retry(keys)
		n = len(ops)
		return err
	})
	if err == nil && !local {
		var resp retryResponse
		err = adminCall(ctx, cfg, http.MethodPost, "/admin/retry", retryRequest{Keys: keys}, &resp)
		n = resp.Retried
	}
	if err != nil {
		return fmt.Errorf("retry: %w", err)
	}
	fmt.Fprintf(stdout, "retried %d failed operations\n", n)
	if n == 0 && len(keys) > 0 {
		return fmt.Errorf("retry: no failed operation for %s", strings.Join(keys, ", "))
	}
	return nil
}
