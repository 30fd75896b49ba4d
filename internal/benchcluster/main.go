// Command benchcluster measures how the cluster mode scales (`make
// bench-cluster`): with the destination behind a proxy that adds latency
// to every request, and few workers per node, each node is bound by
// latency rather than by these machines' two cores, so more nodes should
// copy proportionally more objects per second. It drains the same backlog
// of small objects with one node and with three (a fresh table, queue and
// buckets each time) and prints the objects per second of each, their
// ratio, and the DynamoDB requests per replicated version, counted by a
// proxy in front of the table and split by operation.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/s3replicad/s3replicad/internal/faultproxy"
	"github.com/s3replicad/s3replicad/internal/testenv"
)

type options struct {
	objects int
	size    int
	latency time.Duration
	workers int
	nodes   int
}

func main() {
	var o options
	flag.IntVar(&o.objects, "objects", 1200, "small objects in the backlog")
	flag.IntVar(&o.size, "size", 4096, "bytes per object")
	flag.DurationVar(&o.latency, "latency", 100*time.Millisecond, "latency added to every destination request")
	flag.IntVar(&o.workers, "workers", 2, "transfer.workers of each node")
	flag.IntVar(&o.nodes, "nodes", 3, "nodes of the larger cluster")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench-cluster:", err)
		os.Exit(1)
	}
}

// counter is a reverse proxy in front of DynamoDB that counts requests by
// operation (the X-Amz-Target header: DynamoDB_20120810.PutItem).
type counter struct {
	mu     sync.Mutex
	counts map[string]int
	proxy  *httputil.ReverseProxy
}

func (c *counter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	op := r.Header.Get("X-Amz-Target")
	if i := strings.IndexByte(op, '.'); i >= 0 {
		op = op[i+1:]
	}
	c.mu.Lock()
	c.counts[op]++
	c.mu.Unlock()
	c.proxy.ServeHTTP(w, r)
}

func (c *counter) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.counts
	c.counts = map[string]int{}
	return out
}

type bench struct {
	o      options
	dir    string
	bin    string
	env    *testenv.Env
	dyn    *testenv.Dynamo
	slow   *faultproxy.Proxy
	count  *counter
	dynURL string
}

func run(ctx context.Context, o options) error {
	root, err := testenv.Root()
	if err != nil {
		return err
	}
	b := &bench{o: o, bin: filepath.Join(root, "bin", "s3replicad")}
	if _, err := os.Stat(b.bin); err != nil {
		return fmt.Errorf("%s missing: run `make build` (make bench-cluster does)", b.bin)
	}
	if b.dir, err = os.MkdirTemp("", "s3replicad-benchcluster-"); err != nil {
		return err
	}
	defer os.RemoveAll(b.dir)
	if b.env, err = testenv.Start(filepath.Join(b.dir, "servers")); err != nil {
		return err
	}
	defer b.env.Close()
	if b.dyn, err = testenv.StartDynamo(b.dir); err != nil {
		return err
	}
	defer b.dyn.Close()
	target, _ := url.Parse(b.dyn.Endpoint)
	b.count = &counter{counts: map[string]int{}, proxy: httputil.NewSingleHostReverseProxy(target)}
	// Requests cut short when a node stops are expected: not worth a line.
	b.count.proxy.ErrorLog = log.New(io.Discard, "", 0)
	addr, err := testenv.FreeAddr()
	if err != nil {
		return err
	}
	srv := &http.Server{Addr: addr, Handler: b.count, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.ListenAndServe() }()
	defer srv.Close()
	b.dynURL = "http://" + addr
	if b.slow, err = faultproxy.Start(b.env.Destination); err != nil {
		return err
	}
	defer b.slow.Close()
	b.slow.Set(faultproxy.Fault{Kind: faultproxy.Latency, Delay: o.latency})

	fmt.Printf("bench-cluster: %d objects of %d bytes, %v added to every destination request, %d workers per node\n",
		o.objects, o.size, o.latency, o.workers)
	one, err := b.round(ctx, "one", 1)
	if err != nil {
		return err
	}
	many, err := b.round(ctx, "many", o.nodes)
	if err != nil {
		return err
	}
	fmt.Printf("\n%d nodes replicate %.2fx the objects per second of one node\n", o.nodes, many/one)
	return nil
}

// round drains a fresh backlog with n nodes and returns objects/s.
func (b *bench) round(ctx context.Context, name string, n int) (float64, error) {
	srcBucket, dstBucket, table := "bc-src-"+name, "bc-dst-"+name, "bc-"+name
	src, dst := testenv.S3(b.env.Source), testenv.S3(b.env.Destination)
	if err := testenv.CreateBucket(ctx, src, srcBucket, true); err != nil {
		return 0, err
	}
	if err := testenv.CreateBucket(ctx, dst, dstBucket, true); err != nil {
		return 0, err
	}
	queue, err := b.env.CreateQueue(ctx, "bc-"+name, 100)
	if err != nil {
		return 0, err
	}
	var cfgs []string
	for i := 0; i < n; i++ {
		path, err := b.config(name, i, queue, srcBucket, dstBucket, table)
		if err != nil {
			return 0, err
		}
		cfgs = append(cfgs, path)
	}
	if out, err := exec.CommandContext(ctx, b.bin, "cluster", "init", "-config", cfgs[0]).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("cluster init: %v: %s", err, out)
	}
	// The backlog, written and queued before any node runs.
	pub := b.env.Publisher(queue)
	body := make([]byte, b.o.size)
	var evs []testenv.Event
	for i := 0; i < b.o.objects; i++ {
		ev, err := pub.Put(ctx, src, srcBucket, fmt.Sprintf("obj/%05d", i), body)
		if err != nil {
			return 0, err
		}
		evs = append(evs, ev)
	}
	if err := pub.SendEvents(ctx, evs...); err != nil {
		return 0, err
	}
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			_ = p.Process.Signal(syscall.SIGTERM)
			_ = p.Wait()
		}
	}()
	b.count.take()
	start := time.Now()
	for i, cfg := range cfgs {
		logf, err := os.Create(filepath.Join(b.dir, fmt.Sprintf("%s-%d.log", name, i)))
		if err != nil {
			return 0, err
		}
		defer logf.Close()
		cmd := exec.Command(b.bin, "run", "-config", cfg)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.Env = os.Environ()
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		procs = append(procs, cmd)
	}
	// Done when every object has a replica and the queue is empty. The
	// rate is taken between 10% and 90% of the objects: the steady state,
	// without the nodes' start and the sharing out of their leases.
	var t10, t90 time.Time
	for {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		n, err := countObjects(ctx, dst, dstBucket)
		if err != nil {
			return 0, err
		}
		if t10.IsZero() && n >= b.o.objects/10 {
			t10 = time.Now()
		}
		if t90.IsZero() && n >= b.o.objects*9/10 {
			t90 = time.Now()
		}
		if n >= b.o.objects && queueEmpty(ctx, b.env, queue) {
			break
		}
		if time.Since(start) > 10*time.Minute {
			return 0, fmt.Errorf("%s: %d of %d objects after 10 minutes (logs in %s)", name, n, b.o.objects, b.dir)
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(start)
	counts := b.count.take()
	rate := float64(b.o.objects*8/10) / t90.Sub(t10).Seconds()
	total, writes := 0, 0
	var ops []string
	for op, c := range counts {
		total += c
		switch op {
		case "PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem":
			writes += c
		}
		ops = append(ops, op)
	}
	sort.Strings(ops)
	fmt.Printf("%d node(s): %d objects in %v (start included), %.1f objects/s from 10%% to 90%% of them; DynamoDB requests per replicated version: %.2f, of which %.2f writes (",
		len(cfgs), b.o.objects, took.Round(10*time.Millisecond), rate, float64(total)/float64(b.o.objects), float64(writes)/float64(b.o.objects))
	for i, op := range ops {
		if i > 0 {
			fmt.Print(", ")
		}
		fmt.Printf("%s %.2f", op, float64(counts[op])/float64(b.o.objects))
	}
	fmt.Println("; lease renewals and idle polls included)")
	return rate, nil
}

func (b *bench) config(name string, i int, queue, srcBucket, dstBucket, table string) (string, error) {
	dir := filepath.Join(b.dir, fmt.Sprintf("%s-%d", name, i))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	listen, err := testenv.FreeAddr()
	if err != nil {
		return "", err
	}
	ak, sk := testenv.AccessKey, testenv.SecretKey
	cfg := fmt.Sprintf(`state_dir: %s
listen: %s
log: {level: warn}
queue: {url: %s, endpoint: %s, access_key_id: %s, secret_access_key: %s, wait_time: 1s, visibility_timeout: 60s}
source: {endpoint: %s, path_style: true, access_key_id: %s, secret_access_key: %s}
destinations:
  - {name: d, endpoint: %s, path_style: true, access_key_id: %s, secret_access_key: %s}
rules:
  - {id: all, source_bucket: %s, destination: d, destination_bucket: %s}
transfer: {workers: %d}
cluster:
  dynamodb: {table: %s, region: us-east-1, endpoint: %s, access_key_id: %s, secret_access_key: %s}
  lease: 10s
  node_id: %s-%d
`, filepath.Join(dir, "state"), listen, queue, b.env.SQS, ak, sk, b.env.Source, ak, sk, b.slow.URL(), ak, sk,
		srcBucket, dstBucket, b.o.workers, table, b.dynURL, ak, sk, name, i)
	path := filepath.Join(dir, "config.yaml")
	return path, os.WriteFile(path, []byte(cfg), 0o600)
}

func countObjects(ctx context.Context, c *s3.Client, bucket string) (int, error) {
	n := 0
	p := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: aws.String(bucket)})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return 0, err
		}
		n += len(out.Contents)
	}
	return n, nil
}

func queueEmpty(ctx context.Context, env *testenv.Env, queue string) bool {
	out, err := env.SQSClient().GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: &queue,
		AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameApproximateNumberOfMessages, sqstypes.QueueAttributeNameApproximateNumberOfMessagesNotVisible}})
	if err != nil {
		return false
	}
	return out.Attributes["ApproximateNumberOfMessages"] == "0" && out.Attributes["ApproximateNumberOfMessagesNotVisible"] == "0"
}
