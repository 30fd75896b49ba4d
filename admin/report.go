package admin

import (
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/s3replicad/s3replicad/checkpoint"
	"github.com/s3replicad/s3replicad/dynamostate"
	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/internal/units"
)

// Report is what `status` shows (`status -json` prints it as is): the
// state's summary, and for a cluster its shards and nodes.
type Report struct {
	checkpoint.Status
	Shards int                      `json:"shards,omitempty"`
	Nodes  []dynamostate.NodeStatus `json:"nodes,omitempty"`
}

// Print renders the report for a terminal.
func (st *Report) Print(w io.Writer) {
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
	fmt.Fprintf(w, "bytes pending:   %d (%s)\n", st.BytesPending, units.Bytes(st.BytesPending))
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
