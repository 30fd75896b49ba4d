package e2e

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/checkpoint"
	"github.com/s3replicad/s3replicad/internal/faultproxy"
	"github.com/s3replicad/s3replicad/internal/testenv"
)

// envInt reads a positive integer from the environment.
func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q is not a number", name, v)
	}
	return n
}

// TestKillLoop kills the daemon with kill -9 at random moments (seeded:
// S3REPLICAD_KILL_SEED replays a run; the seed is printed) while a mixed
// workload is written and published: small objects, objects copied in
// parts, new versions of the same keys and delete markers, some events
// published after the next event of their key (crossed), with the
// destination behind a proxy that adds latency. After S3REPLICAD_KILLS
// kills (10 by default; `make soak` runs 50) and restarts, the destination
// must be an exact replica of the source with its complete history (every
// source version replicated, the extra copies only of the newest on top of
// a late one), with nothing failed. It runs on versitygw, and with MinIO
// as both source and destination.
func TestKillLoop(t *testing.T) {
	t.Parallel()
	t.Run("versitygw", func(t *testing.T) {
		t.Parallel()
		killLoop(t, "")
	})
	t.Run("minio", func(t *testing.T) {
		t.Parallel()
		killLoop(t, testenv.MinIO)
	})
}

func killLoop(t *testing.T, store testenv.Kind) {
	kills := envInt(t, "S3REPLICAD_KILLS", 10)
	seed := uint64(envInt(t, "S3REPLICAD_KILL_SEED", int(time.Now().UnixNano()%1e9)))
	t.Logf("kill loop: %d kills, seed %d (S3REPLICAD_KILL_SEED=%d replays it)", kills, seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))

	proxy, err := faultproxy.Start(storeURL(t, store, "destination"))
	must(t, err)
	t.Cleanup(proxy.Close)
	proxy.Set(faultproxy.Fault{Kind: faultproxy.Latency, Delay: 15 * time.Millisecond})
	// Short polls: local-aws-sqs holds a long poll until it has ten
	// messages, so a kill would leave many more messages in flight than
	// SQS, which answers as soon as it has any.
	w := newWorld(t, worldOpts{rules: markerRules, transfer: faultTransfer, visibility: "5s", waitTime: "0s", dstEndpoint: proxy.URL(),
		srcStore: store, dstStore: store})

	work := newChurn(24)
	work.start(w, rand.New(rand.NewPCG(rng.Uint64(), 1)))
	keys := work.keys
	start := time.Now()
	var runs []*daemon
	for i := 0; i < kills; i++ {
		d := w.start()
		runs = append(runs, d)
		// Anywhere from at once to a few seconds in: at start-up, while
		// loading, recording, copying parts or completing.
		time.Sleep(time.Duration(rng.IntN(2500)) * time.Millisecond)
		d.kill()
	}
	work.finish(w)
	killed := time.Since(start)
	d := w.start()
	runs = append(runs, d)
	took, missing, tally := w.waitReplica(keys, 120*time.Second)
	missing = versionsMissing(missing)
	bad := ledger(tally, keys, logsOf(runs))
	if took > 30*time.Second || len(missing) > 0 || len(bad) > 0 {
		t.Logf("slow drain, missing versions or extra copies; the last daemon's warnings:\n%s", warnings(d.logs.String()))
	}
	if len(missing) > 0 || len(bad) > 0 {
		show := map[string]bool{}
		for _, m := range missing {
			show[m.key] = true
		}
		for _, b := range bad {
			show[strings.SplitN(b, ":", 2)[0]] = true
		}
		for key := range show {
			t.Log(w.describeKey(key))
		}
		// What the state file says of those keys' versions.
		d.stop()
		if st, err := checkpoint.Open(filepath.Join(w.dir, "state"), checkpoint.Options{ReadOnly: true}); err == nil {
			for key := range show {
				w.dumpKey(st, key)
			}
			st.Close()
		}
		if len(missing) > 0 {
			t.Fatalf("%d source versions have no replica (the history has holes), e.g. %s@%s", len(missing), missing[0].key, missing[0].version)
		}
		t.Fatalf("the destination holds what late versions and the store's own ways do not account for:\n  %s", strings.Join(bad, "\n  "))
	}
	late := w.lateVersions()
	logged := 0
	for _, n := range loggedPerKey(logsOf(runs), "late version written") {
		logged += n
	}
	if late != int64(logged) {
		t.Fatalf("status counts %d late versions, the logs name %d", late, logged)
	}
	d.stop()
	// Events that were in flight at a kill come back after the visibility
	// timeout, often after a newer version of their key was written, and
	// crossed events arrive after the newer one: those versions are
	// written late, each followed by a copy of the newest on top.
	t.Logf("kill loop: %d kills in %v while %s; seed %d; exact replica with complete history %v after the last restart; %d versions written late, each with one extra copy on top",
		kills, killed.Round(time.Second), work, seed, took.Round(10*time.Millisecond), late)
}

// lateVersions is the late_versions count of `status -json`.
func (w *world) lateVersions() int64 {
	w.t.Helper()
	out, errOut, code := w.cli("status", "-json")
	if code != 0 {
		w.t.Fatalf("status exit %d: %s", code, errOut)
	}
	var st struct {
		Late int64 `json:"late_versions"`
	}
	must(w.t, json.Unmarshal([]byte(out), &st))
	return st.Late
}

// warnings keeps a log's WARN and ERROR lines.
func warnings(log string) string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
