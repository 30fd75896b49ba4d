// Package e2e drives the real s3replicad binary against real local S3
// (versitygw, and MinIO where a test asks for it) and SQS (local-aws-sqs)
// servers.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/s3replicad/s3replicad/internal/testenv"
)

var (
	env    *testenv.Env
	binary string
)

func TestMain(m *testing.M) {
	os.Exit(mainWithEnv(m))
}

func mainWithEnv(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "s3replicad-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	binary = filepath.Join(tmp, "s3replicad")
	root, _ := testenv.Root()
	build := exec.Command("go", "build", "-o", binary, "./cmd/s3replicad")
	build.Dir = root
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build s3replicad:", err)
		return 1
	}
	env, err = testenv.Start(filepath.Join(tmp, "servers"))
	if err != nil {
		if errors.Is(err, testenv.ErrNotInstalled) && os.Getenv("CI") != "true" {
			fmt.Fprintln(os.Stderr, "SKIP e2e:", err)
			return 0
		}
		fmt.Fprintln(os.Stderr, "e2e: cannot start the local servers:", err)
		return 1
	}
	defer env.Close()
	defer func() {
		for _, f := range stopAtExit {
			f()
		}
	}()
	return m.Run()
}

// stopAtExit are the servers a test started for the whole run.
var stopAtExit []func()

var nameSeq atomic.Int64

// uniqueName returns a bucket-safe name unique within the run.
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, time.Now().UnixNano()%1e9, nameSeq.Add(1))
}

// world is one test's buckets, queue, config and state.
type world struct {
	t          *testing.T
	ctx        context.Context
	src, dst   *s3.Client
	srcBucket  string
	dstBucket  string
	queueURL   string
	pub        *testenv.Publisher
	dir        string
	configPath string
	listen     string
}

type worldOpts struct {
	rules       string // YAML list items under rules:, %[1]s = source bucket, %[2]s = destination bucket
	transfer    string // YAML under transfer:
	maxReceives int
	extra       string // extra top-level YAML
	// sameEndpoint puts the destination bucket on the source's server, so
	// that copies can be made inside the store.
	sameEndpoint bool
	destExtra    string // extra YAML keys of the destination, indented by 4
	// moreDests are further items of the destinations list, indented by 2.
	moreDests string
	// Endpoints the daemon is given instead of the servers' own (fault
	// proxies); the test's own clients still talk to the servers.
	srcEndpoint, dstEndpoint, sqsEndpoint string
	visibility                            string // queue.visibility_timeout (default 20s)
	// unversionedSource puts the source bucket on the server without
	// versioning support.
	unversionedSource bool
	// The S3 servers behind the source and the destination: versitygw
	// when empty, or testenv.MinIO.
	srcStore, dstStore testenv.Kind
	stateDir           string // default: a temporary directory
	waitTime           string // queue.wait_time (default 1s)
}

const defaultRules = `
  - id: all
    priority: 1
    source_bucket: %[1]s
    destination: dr
    destination_bucket: %[2]s
`

func newWorld(t *testing.T, o worldOpts) *world {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	srcURL, dstURL := storeURL(t, o.srcStore, "source"), storeURL(t, o.dstStore, "destination")
	w := &world{t: t, ctx: ctx, src: testenv.S3(srcURL), dst: testenv.S3(dstURL), dir: t.TempDir()}
	// Registered first, so run last, after the daemons stopped: with
	// S3REPLICAD_E2E_LOGS=DIR a failed test's state file is kept too.
	t.Cleanup(func() {
		if dir := os.Getenv("S3REPLICAD_E2E_LOGS"); dir != "" && t.Failed() {
			name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
			if data, err := os.ReadFile(filepath.Join(w.dir, "state", "state.db")); err == nil {
				_ = os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-%d.db", name, time.Now().UnixNano())), data, 0o600)
			}
		}
	})
	destEndpoint := dstURL
	if o.sameEndpoint {
		w.dst, destEndpoint = w.src, srcURL
	}
	w.srcBucket, w.dstBucket = uniqueName("src"), uniqueName("dst")
	if o.unversionedSource {
		w.src = testenv.S3(env.Unversioned)
		if o.srcEndpoint == "" {
			o.srcEndpoint = env.Unversioned
		}
	}
	must(t, testenv.CreateBucket(ctx, w.src, w.srcBucket, !o.unversionedSource))
	must(t, testenv.CreateBucket(ctx, w.dst, w.dstBucket, true))
	if o.maxReceives == 0 {
		o.maxReceives = 50
	}
	var err error
	w.queueURL, err = env.CreateQueue(ctx, uniqueName("q"), o.maxReceives)
	must(t, err)
	w.pub = env.Publisher(w.queueURL)
	w.listen = freeAddr(t)
	if o.rules == "" {
		o.rules = defaultRules
	}
	if o.transfer == "" {
		o.transfer = "  workers: 8\n"
	}
	srcEndpoint, sqsEndpoint := srcURL, env.SQS
	if o.srcEndpoint != "" {
		srcEndpoint = o.srcEndpoint
	}
	if o.dstEndpoint != "" {
		destEndpoint = o.dstEndpoint
	}
	if o.sqsEndpoint != "" {
		sqsEndpoint = o.sqsEndpoint
	}
	if o.visibility == "" {
		o.visibility = "20s"
	}
	if o.waitTime == "" {
		o.waitTime = "1s"
	}
	if o.stateDir == "" {
		o.stateDir = filepath.Join(w.dir, "state")
	}
	cfg := fmt.Sprintf(`state_dir: %s
listen: %s
shutdown_timeout: 10s
log: {level: debug, format: text}
queue:
  url: %s
  endpoint: %s
  region: us-east-1
  access_key_id: ${TEST_AK}
  secret_access_key: ${TEST_SK}
  wait_time: %s
  visibility_timeout: %s
source:
  endpoint: %s
  path_style: true
  access_key_id: ${TEST_AK}
  secret_access_key: ${TEST_SK}
destinations:
  - name: dr
    endpoint: %s
    path_style: true
    access_key_id: ${TEST_AK}
    secret_access_key: ${TEST_SK}
%s
%s
rules:
%s
transfer:
%s
%s`, o.stateDir, w.listen, w.queueURL, sqsEndpoint, o.waitTime, o.visibility, srcEndpoint, destEndpoint, o.destExtra, o.moreDests,
		strings.TrimPrefix(fmt.Sprintf(o.rules, w.srcBucket, w.dstBucket), "\n"), o.transfer, o.extra)
	w.configPath = filepath.Join(w.dir, "config.yaml")
	must(t, os.WriteFile(w.configPath, []byte(cfg), 0o600))
	return w
}

// storeURL is the URL of the server of kind k that plays role ("source"
// or "destination"); MinIO is started on first use. Under CI a MinIO that
// is not installed fails the test.
func storeURL(t *testing.T, k testenv.Kind, role string) string {
	t.Helper()
	u, err := env.Endpoint(k, role)
	if err != nil {
		if errors.Is(err, testenv.ErrNotInstalled) && os.Getenv("CI") != "true" {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	return u
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer l.Close()
	return l.Addr().String()
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// daemon is a running `s3replicad run`.
type daemon struct {
	t      *testing.T
	cmd    *exec.Cmd
	listen string
	logs   *syncBuffer
	done   chan struct{}
	err    error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func cliEnv() []string {
	return append(os.Environ(), "TEST_AK="+testenv.AccessKey, "TEST_SK="+testenv.SecretKey)
}

func (w *world) start() *daemon {
	w.t.Helper()
	d := w.launch()
	waitFor(w.t, 20*time.Second, "daemon ready", func() bool {
		select {
		case <-d.done:
			w.t.Fatalf("daemon exited at start: %v\n%s", d.err, d.logs.String())
		default:
		}
		resp, err := http.Get("http://" + d.listen + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return d
}

// launch starts the daemon without waiting for it to be ready.
func (w *world) launch() *daemon {
	w.t.Helper()
	d := &daemon{t: w.t, listen: w.listen, logs: &syncBuffer{}, done: make(chan struct{})}
	d.cmd = exec.Command(binary, "run", "-config", w.configPath)
	d.cmd.Env = cliEnv()
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	must(w.t, d.cmd.Start())
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	w.t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			_ = d.cmd.Process.Kill()
			<-d.done
		}
		if w.t.Failed() {
			// Debug lines would crowd out the rest: S3REPLICAD_E2E_LOGS keeps them.
			w.t.Logf("daemon log (without debug lines):\n%s", tail(withoutDebug(d.logs.String()), 6000))
			// S3REPLICAD_E2E_LOGS=DIR keeps every failed test's daemon logs whole.
			if dir := os.Getenv("S3REPLICAD_E2E_LOGS"); dir != "" {
				name := strings.NewReplacer("/", "_", " ", "_").Replace(w.t.Name())
				f, err := os.CreateTemp(dir, name+"-*.log")
				if err == nil {
					_, _ = f.WriteString(d.logs.String())
					f.Close()
				}
			}
		}
	})
	return d
}

func withoutDebug(log string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(log, "\n") {
		if !strings.Contains(line, "level=DEBUG") {
			b.WriteString(line)
		}
	}
	return b.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// stop sends SIGTERM and requires exit 0.
func (d *daemon) stop() {
	d.t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		if d.err != nil {
			d.t.Fatalf("daemon exited with %v after SIGTERM", d.err)
		}
	case <-time.After(20 * time.Second):
		d.t.Fatal("daemon did not stop within 20s of SIGTERM")
	}
}

// logged reports whether a line of the daemon's log has every one of
// parts, waiting a moment for it: the log is read from the daemon's stderr
// as it comes, so a line may trail what a metric already shows.
func (d *daemon) logged(parts ...string) bool {
	has := func(line string) bool {
		for _, p := range parts {
			if !strings.Contains(line, p) {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(5 * time.Second)
	for !slices.ContainsFunc(strings.Split(d.logs.String(), "\n"), has) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

func (d *daemon) kill() {
	_ = d.cmd.Process.Kill()
	<-d.done
}

// metric returns the sum of a metric family's samples whose labels contain
// all of the given label pairs.
func (d *daemon) metric(name string, labels ...string) float64 {
	d.t.Helper()
	resp, err := http.Get("http://" + d.listen + "/metrics")
	must(d.t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return parseMetric(string(body), name, labels...)
}

func parseMetric(text, name string, labels ...string) float64 {
	total := 0.0
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for i := 0; i+1 < len(labels); i += 2 {
			if !strings.Contains(line, fmt.Sprintf(`%s="%s"`, labels[i], labels[i+1])) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			total += v
		}
	}
	return total
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", timeout, what)
}

// cli runs a subcommand and returns stdout, stderr and the exit code.
func (w *world) cli(args ...string) (string, string, int) {
	w.t.Helper()
	return w.cliEnv(w.configPath, cliEnv(), args...)
}

// destVersions lists the destination's versions of key (newest first).
func (w *world) destVersions(key string) (vs []types.ObjectVersion, markers []types.DeleteMarkerEntry) {
	w.t.Helper()
	p := s3.NewListObjectVersionsPaginator(w.dst, &s3.ListObjectVersionsInput{Bucket: &w.dstBucket, Prefix: &key})
	for p.HasMorePages() {
		out, err := p.NextPage(w.ctx)
		must(w.t, err)
		for _, v := range out.Versions {
			if aws.ToString(v.Key) == key {
				vs = append(vs, v)
			}
		}
		for _, m := range out.DeleteMarkers {
			if aws.ToString(m.Key) == key {
				markers = append(markers, m)
			}
		}
	}
	return vs, markers
}

// waitReplicated waits until the destination's current version of key
// carries the given source version.
func (w *world) waitReplicated(key, sourceVersion string, timeout time.Duration) *s3.HeadObjectOutput {
	w.t.Helper()
	var head *s3.HeadObjectOutput
	waitFor(w.t, timeout, "replica of "+key, func() bool {
		out, err := w.dst.HeadObject(w.ctx, &s3.HeadObjectInput{Bucket: &w.dstBucket, Key: &key})
		if err != nil {
			return false
		}
		head = out
		return out.Metadata["s3replicad-source-version-id"] == sourceVersion
	})
	return head
}

func (w *world) getDest(key, version string) ([]byte, *s3.GetObjectOutput) {
	w.t.Helper()
	in := &s3.GetObjectInput{Bucket: &w.dstBucket, Key: &key}
	if version != "" {
		in.VersionId = &version
	}
	out, err := w.dst.GetObject(w.ctx, in)
	must(w.t, err)
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	must(w.t, err)
	return b, out
}

func (w *world) destTags(key string) map[string]string {
	w.t.Helper()
	out, err := w.dst.GetObjectTagging(w.ctx, &s3.GetObjectTaggingInput{Bucket: &w.dstBucket, Key: &key})
	must(w.t, err)
	m := map[string]string{}
	for _, t := range out.TagSet {
		m[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	return m
}

func (w *world) put(key string, body []byte, opts ...func(*s3.PutObjectInput)) testenv.Event {
	w.t.Helper()
	ev, err := w.pub.Put(w.ctx, w.src, w.srcBucket, key, body, opts...)
	must(w.t, err)
	return ev
}

func (w *world) send(bodies ...string) {
	w.t.Helper()
	must(w.t, w.pub.Send(w.ctx, bodies...))
}

type sqsAttrsInput = sqs.GetQueueAttributesInput

var allAttrs = []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameAll}

// cliWith runs a subcommand against another config file.
func (w *world) cliWith(configPath string, args ...string) (string, string, int) {
	return w.cliEnv(configPath, cliEnv(), args...)
}

// cliEnv runs a subcommand with a given environment.
func (w *world) cliEnv(configPath string, environ []string, args ...string) (string, string, int) {
	w.t.Helper()
	cmd := exec.Command(binary, append(args[:1:1], append([]string{"-config", configPath}, args[1:]...)...)...)
	cmd.Env = environ
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), errb.String(), ee.ExitCode()
	} else if err != nil {
		w.t.Fatal(err)
	}
	return out.String(), errb.String(), 0
}

// hasSeries reports whether /metrics has a sample of name (with the label
// pair, when given).
func (d *daemon) hasSeries(name, label, value string) bool {
	d.t.Helper()
	resp, err := http.Get("http://" + d.listen + "/metrics")
	must(d.t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if (strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ")) &&
			(label == "" || strings.Contains(line, fmt.Sprintf(`%s="%s"`, label, value))) {
			return true
		}
	}
	return false
}
