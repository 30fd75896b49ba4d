package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/internal/faultproxy"
	"github.com/s3replicad/s3replicad/internal/testenv"
)

var (
	dynamoOnce sync.Once
	dynamo     *testenv.Dynamo
	dynamoErr  error
)

// dynamoServer starts dynalite once for the run (stopped with the other
// servers).
func dynamoServer(t *testing.T) *testenv.Dynamo {
	t.Helper()
	dynamoOnce.Do(func() {
		dir, err := os.MkdirTemp("", "s3replicad-dynalite-")
		if err != nil {
			dynamoErr = err
			return
		}
		dynamo, dynamoErr = testenv.StartDynamo(dir)
		if dynamoErr == nil {
			stopAtExit = append(stopAtExit, func() { dynamo.Close(); os.RemoveAll(dir) })
		}
	})
	if dynamoErr != nil {
		t.Fatalf("dynalite: %v", dynamoErr)
	}
	return dynamo
}

// clusterYAML is a cluster section on the test's own table.
func clusterYAML(endpoint, table, lease string) string {
	return fmt.Sprintf(`cluster:
  dynamodb:
    table: %s
    region: us-east-1
    endpoint: %s
    access_key_id: ${TEST_AK}
    secret_access_key: ${TEST_SK}
  lease: %s
  shards: 16
`, table, endpoint, lease)
}

// node is one daemon of a cluster world: its own state_dir, port and
// configuration file (the same configuration otherwise).
type node struct {
	i          int
	configPath string
	listen     string
	d          *daemon
}

// clusterWorld is a world whose daemons share a DynamoDB table.
type clusterWorld struct {
	*world
	nodes []*node
	table string
	runs  []*daemon // every daemon started, for their logs
}

func newClusterWorld(t *testing.T, n int, o worldOpts, lease string, dynamoEndpoint func(i int) string) *clusterWorld {
	t.Helper()
	d := dynamoServer(t)
	table := uniqueName("s3replicad-state")
	o.extra += clusterYAML(d.Endpoint, table, lease)
	w := newWorld(t, o)
	cw := &clusterWorld{world: w, table: table}
	base, err := os.ReadFile(w.configPath)
	must(t, err)
	if out, errOut, code := w.cli("cluster", "init"); code != 0 || !strings.Contains(out, table) {
		t.Fatalf("cluster init: exit %d: %s %s", code, out, errOut)
	}
	for i := 0; i < n; i++ {
		nd := &node{i: i, listen: freeAddr(t)}
		cfg := strings.Replace(string(base), "listen: "+w.listen, "listen: "+nd.listen, 1)
		cfg = strings.Replace(cfg, "state_dir: "+filepath.Join(w.dir, "state"), "state_dir: "+filepath.Join(w.dir, fmt.Sprintf("state-%d", i)), 1)
		if dynamoEndpoint != nil {
			cfg = strings.Replace(cfg, "endpoint: "+d.Endpoint, "endpoint: "+dynamoEndpoint(i), 1)
		}
		cfg += fmt.Sprintf("  node_id: node-%d\n", i) // the cluster section is the file's last

		nd.configPath = filepath.Join(w.dir, fmt.Sprintf("config-%d.yaml", i))
		must(t, os.WriteFile(nd.configPath, []byte(cfg), 0o600))
		cw.nodes = append(cw.nodes, nd)
	}
	return cw
}

// start starts node i's daemon.
func (cw *clusterWorld) start(i int) *daemon {
	nd := cw.nodes[i]
	saved, savedListen := cw.configPath, cw.listen
	cw.configPath, cw.listen = nd.configPath, nd.listen
	defer func() { cw.configPath, cw.listen = saved, savedListen }()
	nd.d = cw.world.start()
	cw.runs = append(cw.runs, nd.d)
	return nd.d
}

// lateLogged counts the late versions the daemons' logs name, each once:
// a node logs one after its copy on top is written, and a node that
// resumes another's looks for that copy and logs it again. (The table's
// count of them can miss one whose node died, or whose answer was lost,
// at the moment it was recorded.)
func (cw *clusterWorld) lateLogged() int {
	n := 0
	for _, k := range loggedPerKey(logsOf(cw.runs), "late version written") {
		n += k
	}
	return n
}

// clusterStatus is `status -json` of a cluster.
type clusterStatus struct {
	Counts map[string]int64 `json:"counts"`
	Late   int64            `json:"late_versions"`
	Nodes  []struct {
		ID       string `json:"id"`
		Live     bool   `json:"live"`
		Stopped  bool   `json:"stopped"`
		Leases   int    `json:"leases"`
		Held     int64  `json:"ops_held"`
		InFlight int64  `json:"in_flight"`
	} `json:"nodes"`
}

func (cw *clusterWorld) status(i int) clusterStatus {
	cw.t.Helper()
	out, errOut, code := cw.cliWith(cw.nodes[i].configPath, "status", "-json")
	if code != 0 {
		cw.t.Fatalf("status on node %d: exit %d: %s", i, code, errOut)
	}
	var st clusterStatus
	must(cw.t, json.Unmarshal([]byte(out), &st))
	return st
}

// TestCluster runs three daemons on one queue and one DynamoDB table while
// a mixed workload is written (small objects, several versions of hot
// keys with crossed events, duplicates, multipart objects, delete
// markers), and meanwhile kills nodes with kill -9 at random moments
// (seeded: S3REPLICAD_CLUSTER_SEED replays a run), cuts one off from the
// table through a fault proxy while it copies, and stops one with SIGTERM
// (a clean handover). It ends with the strict check of the fault tests:
// every source version replicated once (the newest copied on top of a late
// one allowed), each key's current version the source's, nothing failed,
// the queue empty.
func TestCluster(t *testing.T) {
	t.Parallel()
	seed := uint64(envInt(t, "S3REPLICAD_CLUSTER_SEED", int(time.Now().UnixNano()%1e9)))
	t.Logf("cluster: seed %d (S3REPLICAD_CLUSTER_SEED=%d replays it)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0xc1))

	latency, err := faultproxy.Start(env.Destination)
	must(t, err)
	t.Cleanup(latency.Close)
	latency.Set(faultproxy.Fault{Kind: faultproxy.Latency, Delay: 10 * time.Millisecond})
	cut, err := faultproxy.Start(dynamoServer(t).Endpoint)
	must(t, err)
	t.Cleanup(cut.Close)
	cw := newClusterWorld(t, 3, worldOpts{rules: markerRules, transfer: faultTransfer, visibility: "8s", waitTime: "0s",
		dstEndpoint: latency.URL()}, "4s", func(i int) string {
		if i == 2 {
			return cut.URL() // node 2 reaches the table through a proxy that can cut it off
		}
		return dynamoServer(t).Endpoint
	})
	for i := range cw.nodes {
		cw.start(i)
	}

	work := newChurn(20)
	work.markerPct, work.largePct, work.crossPct, work.dupPct, work.maxSmall, work.maxGap = 8, 3, 12, 10, 100<<10, 50
	work.start(cw.world, rand.New(rand.NewPCG(rng.Uint64(), 2)))
	keys := work.keys
	start := time.Now()
	var chaos []string
	// Kill -9 nodes 0 and 1 in turn at random moments, restarting each
	// after a pause; once, cut node 2 off from the table mid-copy; once,
	// stop a node with SIGTERM (its keys handed over at once).
	for round := 0; round < 6; round++ {
		time.Sleep(time.Duration(500+rng.IntN(2000)) * time.Millisecond)
		switch round {
		case 2:
			cut.Set(faultproxy.Fault{Kind: faultproxy.Stall})
			chaos = append(chaos, "node 2 cut off from the table")
			time.Sleep(7 * time.Second) // beyond its lease: it must stop writing and give its keys up
			must(t, cut.Clear())
		case 4:
			i := rng.IntN(2)
			cw.nodes[i].d.stop()
			chaos = append(chaos, fmt.Sprintf("node %d stopped (SIGTERM)", i))
			time.Sleep(time.Second)
			cw.start(i)
		default:
			i := rng.IntN(2)
			cw.nodes[i].d.kill()
			chaos = append(chaos, fmt.Sprintf("node %d killed", i))
			time.Sleep(time.Duration(rng.IntN(3000)) * time.Millisecond)
			cw.start(i)
		}
	}
	work.finish(cw.world)
	t.Logf("cluster: %v while %s: %s", time.Since(start).Round(time.Second), work, strings.Join(chaos, ", "))
	took, missing, tally := cw.waitReplicaLate(keys, 120*time.Second, cw.lateLogged)
	missing = versionsMissing(missing)
	if len(missing) > 0 {
		for _, m := range missing {
			t.Log(cw.describeKey(m.key))
		}
		t.Fatalf("%d source versions have no replica, e.g. %s@%s", len(missing), missing[0].key, missing[0].version)
	}
	if bad := ledger(tally, keys, logsOf(cw.runs)); len(bad) > 0 {
		for _, b := range bad {
			t.Log(cw.describeKey(strings.SplitN(b, ":", 2)[0]))
		}
		t.Fatalf("the destination holds what late versions and the store's own ways do not account for:\n  %s", strings.Join(bad, "\n  "))
	}
	st := cw.status(0)
	live := 0
	for _, n := range st.Nodes {
		if n.Live {
			live++
		}
	}
	if live != 3 {
		t.Fatalf("status lists %d live nodes, want 3: %+v", live, st.Nodes)
	}
	t.Logf("cluster: exact replica with complete history %v after the chaos ended; %d late versions; %d nodes listed", took.Round(10*time.Millisecond), st.Late, len(st.Nodes))
	for i := range cw.nodes {
		cw.nodes[i].d.stop()
	}
}

// A node killed while it holds work: the others finish that work within
// the lease plus a few seconds, and the killed node's messages that were
// recorded are not needed again (they were deleted from the queue).
func TestClusterTakeover(t *testing.T) {
	t.Parallel()
	slow, err := faultproxy.Start(env.Destination)
	must(t, err)
	t.Cleanup(slow.Close)
	// A batch the killed node had received but not yet recorded comes back
	// only when its visibility runs out (a clean-clone run waited out the
	// default 20 s): at 6 s, just above the lease (which must be shorter),
	// it is within the bound below.
	cw := newClusterWorld(t, 2, worldOpts{transfer: "  workers: 2\n", dstEndpoint: slow.URL(), visibility: "6s"}, "5s", nil)
	cw.start(0)
	cw.start(1)
	// Let the two nodes split the shards.
	waitFor(t, 30*time.Second, "both nodes to hold leases", func() bool {
		st := cw.status(0)
		n := 0
		for _, nd := range st.Nodes {
			if nd.Leases > 0 {
				n++
			}
		}
		return n == 2
	})
	slow.Set(faultproxy.Fault{Kind: faultproxy.Latency, Delay: 400 * time.Millisecond})
	var evs []testenv.Event
	var keys []string
	for i := 0; i < 40; i++ {
		k := fmt.Sprintf("t/%02d", i)
		keys = append(keys, k)
		evs = append(evs, cw.put(k, randBytes(cw.world, 2000)))
	}
	must(t, cw.pub.SendEvents(cw.ctx, evs...))
	waitFor(t, 30*time.Second, "node 1 to hold work", func() bool {
		for _, nd := range cw.status(0).Nodes {
			if strings.HasPrefix(nd.ID, "node-1-") && nd.Held > 0 {
				return true
			}
		}
		return false
	})
	cw.nodes[1].d.kill()
	killed := time.Now()
	slow.Set(faultproxy.Fault{Kind: faultproxy.Latency, Delay: 20 * time.Millisecond})
	took := cw.waitExact(keys, 60*time.Second)
	if limit := 5*time.Second + 10*time.Second; took > limit {
		t.Fatalf("the work of the killed node was finished %v after the kill, more than the lease plus 10s", took)
	}
	t.Logf("takeover: every version replicated %v after a node holding work was killed (lease 5s)", time.Since(killed).Round(10*time.Millisecond))
	cw.nodes[0].d.stop()
}
