package dynamostate_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/s3replicad/s3replicad/dynamostate"
	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/internal/testenv"
)

func rawClient() *dynamodb.Client {
	return dynamodb.New(dynamodb.Options{Region: testenv.Region, BaseEndpoint: aws.String(dynamo.Endpoint),
		Credentials: credentials.NewStaticCredentialsProvider(testenv.AccessKey, testenv.SecretKey, "")})
}

func TestCreateTableAndCheck(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cfg := testConfig(t, 16)
	if err := dynamostate.Check(ctx, cfg); err == nil || !strings.Contains(err.Error(), cfg.Table) ||
		!strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("check of a missing table: %v", err)
	}
	_, err := dynamostate.Open(ctx, cfg)
	if c, _ := engine.Classify(err); err == nil || c != engine.Permanent || !strings.Contains(err.Error(), cfg.Table) {
		t.Fatalf("open of a missing table: %v (class %v), want a permanent error naming it", err, c)
	}
	what, err := dynamostate.CreateTable(ctx, cfg)
	if err != nil || !strings.Contains(what, "created table") || !strings.Contains(what, "16 shards") {
		t.Fatalf("create: %q, %v", what, err)
	}
	if err := dynamostate.Check(ctx, cfg); err != nil {
		t.Fatalf("check after create: %v", err)
	}
	again := cfg
	again.Shards = 4
	what, err = dynamostate.CreateTable(ctx, again)
	if err != nil || !strings.Contains(what, "exists") || !strings.Contains(what, "already initialised with 16 shards") {
		t.Fatalf("create again: %q, %v", what, err)
	}
	st, err := dynamostate.Open(ctx, again)
	if err != nil || st.Shards() != 16 {
		t.Fatalf("open: %v; shards %d, want the table's 16", err, st.Shards())
	}

	// A table of something else.
	other := testConfig(t, 4)
	_, err = rawClient().CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName: aws.String(other.Table), BillingMode: types.BillingModePayPerRequest,
		AttributeDefinitions: []types.AttributeDefinition{{AttributeName: aws.String("id"), AttributeType: types.ScalarAttributeTypeS}},
		KeySchema:            []types.KeySchemaElement{{AttributeName: aws.String("id"), KeyType: types.KeyTypeHash}},
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if err := dynamostate.Check(ctx, other); err == nil || !strings.Contains(err.Error(), other.Table) || !strings.Contains(err.Error(), "key schema") {
		t.Fatalf("check of another table: %v", err)
	}
	if _, err := dynamostate.CreateTable(ctx, other); err == nil {
		t.Fatal("cluster init took over another table")
	}

	// Initialised by hand but without its meta item.
	if _, err := rawClient().DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: aws.String(cfg.Table),
		Key: map[string]types.AttributeValue{"pk": &types.AttributeValueMemberS{Value: "meta"}, "sk": &types.AttributeValueMemberS{Value: "meta"}}}); err != nil {
		t.Fatal(err)
	}
	if err := dynamostate.Check(ctx, cfg); err == nil || !strings.Contains(err.Error(), "meta item") {
		t.Fatalf("check without meta item: %v", err)
	}
	if len(dynamostate.Actions()) == 0 || slices.Contains(dynamostate.Actions(), "dynamodb:CreateTable") {
		t.Fatalf("actions %v", dynamostate.Actions())
	}
}

// A completion cut short between its two writes (key state, then op) is
// finished by Current, with the replica the key state recorded.
func TestCurrentFinishesAHalfCompletion(t *testing.T) {
	t.Parallel()
	cfg := newTable(t, 4)
	n := startNode(t, cfg, "a")
	waitFor(t, 5*time.Second, "every shard held", func() bool { return len(n.Held()) == 4 })
	ctx := context.Background()
	op := opFor("half", "")
	op.Sequencer = "" // unsequenced: only the key state's record tells
	other := opFor("half", "v2")
	if _, err := n.Record(ctx, []*engine.Op{op, other}); err != nil {
		t.Fatal(err)
	}
	handed, _, err := n.Pending(ctx, engine.OriginEvent, 0, 10)
	if err != nil || len(handed) != 2 {
		t.Fatal(handed, err)
	}
	h := handed[0]
	h.WriteStarted = time.Now()
	done := *h
	done.State, done.Replica, done.Finished = engine.Completed, "rep-half", time.Now()
	if err := n.AdvanceKeyOnly(ctx, &done); err != nil {
		t.Fatal(err)
	}
	cur, err := n.Current(ctx, h)
	if err != nil || cur.State != engine.Completed || cur.Replica != "rep-half" {
		t.Fatalf("current %+v, %v: want completed with the key state's replica", cur, err)
	}
	// It stays so, and is counted.
	if again, _ := n.Current(ctx, h); again.State != engine.Completed {
		t.Fatalf("stored state %s", again.State)
	}
	if c, _, _ := n.Counts(ctx); c["r"] != 1 {
		t.Fatalf("unfinished %v, want 1", c)
	}
	// An op that the key state does not name is left as it is.
	o := handed[1]
	o.WriteStarted = time.Now()
	if cur, err := n.Current(ctx, o); err != nil || cur.State != engine.Pending || cur.WriteStarted.IsZero() {
		t.Fatalf("current of an untouched op %+v, %v", cur, err)
	}
	// A late op whose late version is written (saved in flight) moves the
	// key's last replica but is not complete: the copy on top is to come.
	o.OnTop, o.State, o.Replica = "dest-current", engine.InFlight, "rep-late"
	if err := n.Save(ctx, o); err != nil {
		t.Fatal(err)
	}
	if cur, err := n.Current(ctx, o); err != nil || cur.State != engine.InFlight || cur.Replica != "rep-late" {
		t.Fatalf("current of a late op half way %+v, %v", cur, err)
	}
	o.State, o.OnTopReplica, o.Finished = engine.Completed, "rep-top", time.Now()
	if err := n.AdvanceKeyOnly(ctx, o); err != nil {
		t.Fatal(err)
	}
	o.State, o.OnTopReplica, o.Finished = engine.InFlight, "", time.Time{}
	if cur, err := n.Current(ctx, o); err != nil || cur.State != engine.Completed || cur.Replica != "rep-late" || cur.OnTopReplica != "rep-top" {
		t.Fatalf("current of a late op whose completion was cut short %+v, %v", cur, err)
	}
	if cur, err := n.Current(ctx, opFor("never", "v")); err != nil || cur != nil {
		t.Fatalf("current of an op never recorded: %+v, %v", cur, err)
	}
}

// Pruning deletes finished ops older than the retention, and the key
// state they were the last write of; a version whose op was pruned is
// recorded anew; failed and recent ops stay.
func TestPrune(t *testing.T) {
	t.Parallel()
	cfg := newTable(t, 4)
	n := startNode(t, cfg, "a")
	waitFor(t, 5*time.Second, "every shard held", func() bool { return len(n.Held()) == 4 })
	ctx := context.Background()
	old1, old2, failed, fresh, open := opFor("k1", "v1"), opFor("k2", "v1"), opFor("k3", "v1"), opFor("k4", "v1"), opFor("k5", "v1")
	if _, err := n.Record(ctx, []*engine.Op{old1, old2, failed, fresh, open}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := n.Pending(ctx, engine.OriginEvent, 0, 10); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-2 * time.Hour)
	old1.State, old1.Replica, old1.Finished = engine.Completed, "r1", past
	old2.State, old2.Reason, old2.Finished = engine.Superseded, "newer", past
	failed.State, failed.Reason, failed.Finished = engine.Failed, "access_denied", past
	fresh.State, fresh.Replica, fresh.Finished = engine.Completed, "r4", time.Now()
	if err := n.SaveAll(ctx, []*engine.Op{old1, old2, failed, fresh}); err != nil {
		t.Fatal(err)
	}
	pruned, err := n.Prune(ctx, time.Now().Add(-time.Hour))
	if err != nil || pruned != 2 {
		t.Fatalf("pruned %d, %v; want 2", pruned, err)
	}
	if _, ok, _ := n.LastWritten(ctx, old1.DestKeyID()); ok {
		t.Fatal("the key state of a pruned last write is still there")
	}
	if _, ok, _ := n.LastWritten(ctx, fresh.DestKeyID()); !ok {
		t.Fatal("a recent key state was pruned")
	}
	st, err := n.Status(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	want := map[engine.State]int64{engine.Completed: 1, engine.Superseded: 0, engine.Failed: 1, engine.Pending: 1}
	for s, c := range want {
		if st.Counts[s] != c {
			t.Fatalf("counts after prune %v, want %v", st.Counts, want)
		}
	}
	if added, err := n.Record(ctx, []*engine.Op{opFor("k1", "v1"), opFor("k4", "v1")}); err != nil || len(added) != 1 || added[0].Key != "k1" {
		t.Fatalf("record after prune: %v, %v; want k1 anew (pruned) and k4 a duplicate", added, err)
	}
}

// Ops that arrive behind the point a shard's queue was read to (here: a
// failed op retried from another node keeps its old arrival number) are
// found when the queue is read from its start again.
func TestPendingFindsOpsBehindItsCursor(t *testing.T) {
	t.Parallel()
	cfg := newTable(t, 2)
	a := startNode(t, cfg, "a")
	waitFor(t, 5*time.Second, "every shard held", func() bool { return len(a.Held()) == 2 })
	a.SetRescanEvery(500 * time.Millisecond)
	cli := openStore(t, cfg, "cli") // `s3replicad retry` on another machine
	ctx := context.Background()
	first, second := opFor("k1", "v1"), opFor("k2", "v1")
	if _, err := a.Record(ctx, []*engine.Op{first}); err != nil {
		t.Fatal(err)
	}
	got, _, err := a.Pending(ctx, engine.OriginEvent, 0, 10)
	if err != nil || len(got) != 1 {
		t.Fatal(got, err)
	}
	got[0].State, got[0].Finished, got[0].Reason = engine.Failed, time.Now(), "access_denied"
	if err := a.Save(ctx, got[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Record(ctx, []*engine.Op{second}); err != nil {
		t.Fatal(err)
	}
	if got, _, err := a.Pending(ctx, engine.OriginEvent, 0, 10); err != nil || len(got) != 1 || got[0].Key != "k2" {
		t.Fatalf("pending %v, %v", got, err)
	}
	retried, err := cli.Retry(ctx, nil)
	if err != nil || len(retried) != 1 {
		t.Fatalf("retry: %v, %v", retried, err)
	}
	var found []*engine.Op
	waitFor(t, 3*time.Second, "the retried op is handed out", func() bool {
		ops, _, err := a.Pending(ctx, engine.OriginEvent, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		found = append(found, ops...)
		return len(found) > 0
	})
	if len(found) != 1 || found[0].Key != "k1" || found[0].State != engine.Pending {
		t.Fatalf("handed out %v", found)
	}
}

// Claim hands the ops a node just recorded to its engine at once when
// their shard is its own, and never twice.
func TestClaim(t *testing.T) {
	t.Parallel()
	cfg := newTable(t, 4)
	a := startNode(t, cfg, "a")
	waitFor(t, 5*time.Second, "every shard held", func() bool { return len(a.Held()) == 4 })
	b := startNode(t, cfg, "b")
	b.SetHandoff(cleanHandoff)
	a.SetHandoff(cleanHandoff)
	waitFor(t, 10*time.Second, "2 shards each", func() bool { return slices.Equal(heldCounts(a, b), []int{2, 2}) })
	ctx := context.Background()
	added, err := a.Record(ctx, opsPerShard(a.Store, 1, "v1"))
	if err != nil {
		t.Fatal(err)
	}
	claimed := a.Claim(added)
	if len(claimed) != 2 {
		t.Fatalf("claimed %d of 4, want the 2 of a's shards", len(claimed))
	}
	if again := a.Claim(added); len(again) != 0 {
		t.Fatalf("claimed twice: %v", again)
	}
	if rest, _, err := a.Pending(ctx, engine.OriginEvent, 0, 10); err != nil || len(rest) != 0 {
		t.Fatalf("pending after claim: %v, %v", rest, err)
	}
	if theirs, _, err := b.Pending(ctx, engine.OriginEvent, 0, 10); err != nil || len(theirs) != 2 {
		t.Fatalf("b's pending: %v, %v", theirs, err)
	}
}

// Status lists every node with its leases and the work its engine
// reports, and sums the finished counts of all nodes.
func TestStatusAcrossNodes(t *testing.T) {
	t.Parallel()
	cfg := newTable(t, 4)
	a := startNode(t, cfg, "a")
	waitFor(t, 5*time.Second, "every shard held", func() bool { return len(a.Held()) == 4 })
	b := startNode(t, cfg, "b")
	a.SetHandoff(cleanHandoff)
	b.SetHandoff(cleanHandoff)
	a.SetActivity(func() (int, int) { return 7, 3 })
	waitFor(t, 10*time.Second, "2 shards each", func() bool { return slices.Equal(heldCounts(a, b), []int{2, 2}) })
	ctx := context.Background()
	if _, err := a.Record(ctx, opsPerShard(a.Store, 2, "v1")); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*node{a, b} {
		ops, _, err := n.Pending(ctx, engine.OriginEvent, 0, 10)
		if err != nil || len(ops) != 4 {
			t.Fatal(ops, err)
		}
		ops[0].State, ops[0].Replica, ops[0].Finished = engine.Completed, "r", time.Now()
		ops[1].State, ops[1].Reason, ops[1].LastError, ops[1].Finished = engine.Failed, "access_denied", "403 Forbidden", time.Now()
		if err := n.SaveAll(ctx, ops[:2]); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(); err != nil { // flushes b's counters
		t.Fatal(err)
	}
	time.Sleep(cfg.Lease / 2) // a heartbeat with the activity
	st, err := a.Status(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if st.Counts[engine.Completed] != 2 || st.Counts[engine.Failed] != 2 || st.Counts[engine.Pending] != 4 || st.BytesPending != 40 {
		t.Fatalf("counts %v, bytes %d", st.Counts, st.BytesPending)
	}
	if len(st.Failed) != 2 || st.Failed[0].Error != "403 Forbidden" || st.Failed[0].Reason != "access_denied" {
		t.Fatalf("failed items %+v", st.Failed)
	}
	if st.OldestPending == nil || !st.DaemonRunning || st.Shards != 4 {
		t.Fatalf("status %+v", st)
	}
	if len(st.Nodes) != 2 {
		t.Fatalf("nodes %+v", st.Nodes)
	}
	na, nb := st.Nodes[0], st.Nodes[1]
	if na.ID != "a" || na.Host != "host-a" || na.Leases != 2 || na.Held != 7 || na.InFlight != 3 || !na.Live ||
		time.Since(na.LastRenewal) > cfg.Lease || na.Started.IsZero() {
		t.Fatalf("node a %+v", na)
	}
	if nb.ID != "b" || nb.Leases != 2 || !nb.Live {
		t.Fatalf("node b %+v", nb)
	}
}

// A table that cannot be reached gives transient errors (the caller
// retries); a write for a shard this node does not hold is refused.
func TestErrorsAtTheBoundary(t *testing.T) {
	t.Parallel()
	cfg := newTable(t, 4)
	proxy := newFaultProxy(t, dynamo.Endpoint)
	pcfg := cfg
	pcfg.Endpoint = proxy.URL()
	pcfg.RequestTimeout = 500 * time.Millisecond
	n := startNode(t, pcfg, "a")
	waitFor(t, 5*time.Second, "every shard held", func() bool { return len(n.Held()) == 4 })
	ctx := context.Background()
	for _, mode := range []string{"refuse", "stall"} {
		proxy.set(mode)
		_, err := n.Record(ctx, []*engine.Op{opFor("k", mode)})
		if err == nil || !dynamostate.IsTransient(err) {
			t.Fatalf("record while the table is cut off (%s): %v, want a transient error", mode, err)
		}
		if _, _, err := n.LastWritten(ctx, "x"); !dynamostate.IsTransient(err) {
			t.Fatalf("read while the table is cut off (%s): %v", mode, err)
		}
	}
	proxy.set("pass")
	other := openStore(t, cfg, "cli") // holds nothing: a has every shard
	if err := other.Save(ctx, opFor("k", "v")); !errors.Is(err, dynamostate.ErrLeaseLost) {
		t.Fatalf("save by a node without the shard: %v", err)
	}
	if err := other.SaveUpload(ctx, opFor("k", "v").ID(), &engine.Upload{UploadID: "u"}); !errors.Is(err, dynamostate.ErrLeaseLost) {
		t.Fatalf("upload by a node without the op: %v", err)
	}
	// A node without shards records for everyone.
	if added, err := other.Record(ctx, []*engine.Op{opFor("k", "v")}); err != nil || len(added) != 1 {
		t.Fatalf("record by a node without shards: %v, %v", added, err)
	}
}

// countingTransport counts the DynamoDB requests of the data path (lease,
// node and counter items left out), by operation.
type countingTransport struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	op := strings.TrimPrefix(r.Header.Get("X-Amz-Target"), "DynamoDB_20120810.")
	background := bytes.Contains(body, []byte(`{"S":"lease"}`)) || bytes.Contains(body, []byte(`{"S":"node"}`)) ||
		bytes.Contains(body, []byte(`{"S":"count"}`))
	if !background {
		c.mu.Lock()
		c.n[op]++
		c.mu.Unlock()
	}
	return http.DefaultTransport.RoundTrip(r)
}

func (c *countingTransport) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.n
	c.n = map[string]int{}
	return out
}

// The requests one replicated version costs on the normal path: record
// (1 write), hand out (a share of a query), check it is current (1
// read), last written (1 read), completion (key state and op: 2 writes).
func TestRequestsPerVersion(t *testing.T) {
	t.Parallel()
	cfg := newTable(t, 4)
	counter := &countingTransport{n: map[string]int{}}
	cfg.HTTPClient = &http.Client{Transport: counter}
	n := startNode(t, cfg, "a")
	waitFor(t, 5*time.Second, "every shard held", func() bool { return len(n.Held()) == 4 })
	ctx := context.Background()
	const versions = 40
	var ops []*engine.Op
	for i := 0; i < versions; i++ {
		op := opFor("hot", "v"+string(rune('A'+i%26))+string(rune('a'+i/26)))
		op.Sequencer = "0" + string(rune('A'+i/16)) + string(rune('A'+i%16))
		ops = append(ops, op)
	}
	counter.take()
	if _, err := n.Record(ctx, ops); err != nil {
		t.Fatal(err)
	}
	handed, _, err := n.Pending(ctx, engine.OriginEvent, 0, 100)
	if err != nil || len(handed) != versions {
		t.Fatalf("handed %d, %v", len(handed), err)
	}
	for _, op := range handed {
		if _, err := n.Current(ctx, op); err != nil {
			t.Fatal(err)
		}
		if _, _, err := n.LastWritten(ctx, op.DestKeyID()); err != nil {
			t.Fatal(err)
		}
		op.State, op.Replica, op.Finished = engine.Completed, "rep-"+op.VersionID, time.Now()
		if err := n.Save(ctx, op); err != nil {
			t.Fatal(err)
		}
	}
	got := counter.take()
	writes := got["PutItem"] + got["UpdateItem"] + got["DeleteItem"]
	reads := got["GetItem"] + got["Query"]
	t.Logf("per version: %.2f writes, %.2f reads (%v for %d versions)", float64(writes)/versions, float64(reads)/versions, got, versions)
	if writes != 3*versions {
		t.Errorf("%d write requests for %d versions, want 3 each", writes, versions)
	}
	if got["GetItem"] != 2*versions {
		t.Errorf("%d item reads for %d versions, want 2 each (current, last written)", got["GetItem"], versions)
	}
}

// The items of nodes gone for long are deleted (every restart is a new
// node id); live ones stay.
func TestGoneNodesAreForgotten(t *testing.T) {
	t.Parallel()
	cfg := newTable(t, 2)
	a := startNode(t, cfg, "a")
	b := startNode(t, cfg, "b")
	a.SetHandoff(cleanHandoff)
	b.SetHandoff(cleanHandoff)
	b.SetForgetAfter(1500 * time.Millisecond)
	waitFor(t, 10*time.Second, "1 shard each", func() bool { return slices.Equal(heldCounts(a, b), []int{1, 1}) })
	ctx := context.Background()
	a.crash()
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	nodes := func() []string {
		st, err := b.Status(ctx, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, n := range st.Nodes {
			ids = append(ids, n.ID)
		}
		return ids
	}
	if got := nodes(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("nodes right after a stopped: %v", got)
	}
	waitFor(t, 10*time.Second, "a forgotten", func() bool { return slices.Equal(nodes(), []string{"b"}) })
}
