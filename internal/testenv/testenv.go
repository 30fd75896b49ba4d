// Package testenv starts the real local servers that integration tests, the
// demo and the benchmark run against: two versitygw S3 gateways (source and
// destination) and a local-aws-sqs server, all on loopback ports, and, on
// demand, a MinIO server. The servers are installed by scripts/testenv.sh.
package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// Credentials of the local servers.
const (
	AccessKey = "testaccesskey"
	SecretKey = "testsecretkey0123456789"
	Region    = "us-east-1"
)

// Env is a running set of servers.
type Env struct {
	Source      string // S3 endpoint URL
	Destination string // S3 endpoint URL
	Unversioned string // S3 endpoint without versioning support
	SQS         string // SQS endpoint URL
	// TLS is set when the S3 servers speak HTTPS (StartTLS).
	TLS *TLS

	dir   string
	procs []*exec.Cmd
	names []string // of procs: src, dst, plain, sqs, minio
	mu    sync.Mutex

	// The MinIO server, started by the first call of MinIO.
	minioMu  sync.Mutex
	minioURL string
	minioErr error
}

// Kind is an S3 server implementation the tests run against.
type Kind string

const (
	VersityGW Kind = "versitygw"
	MinIO     Kind = "minio"
)

// Kinds lists the S3 servers the tests run against.
var Kinds = []Kind{VersityGW, MinIO}

// ErrNotInstalled means scripts/testenv.sh has not been run.
var ErrNotInstalled = errors.New("local test servers are not installed: run scripts/testenv.sh (make test does)")

// Root finds the repository root (the directory holding go.mod).
func Root() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Start launches the servers with their data under dir (which must exist).
func Start(dir string) (*Env, error) { return start(dir, false) }

// StartTLS is Start with the S3 servers on HTTPS, their certificate signed
// by a CA made now (Env.TLS); the SQS server stays on plain HTTP.
func StartTLS(dir string) (*Env, error) { return start(dir, true) }

func start(dir string, withTLS bool) (*Env, error) {
	root, err := Root()
	if err != nil {
		return nil, err
	}
	vgw := filepath.Join(root, ".testenv", "bin", "versitygw")
	sqsScript := filepath.Join(root, ".testenv", "sqs", "sqs-server.mjs")
	for _, p := range []string{vgw, sqsScript} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("%w (%s missing)", ErrNotInstalled, filepath.Base(p))
		}
	}
	if _, err := exec.LookPath("node"); err != nil {
		return nil, fmt.Errorf("%w (node not on PATH)", ErrNotInstalled)
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	e := &Env{dir: dir}
	if withTLS {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		if e.TLS, err = NewTLS(dir); err != nil {
			return nil, err
		}
	}
	ok := false
	defer func() {
		if !ok {
			e.Close()
		}
	}()
	if e.Source, err = e.startS3(vgw, "src", true); err != nil {
		return nil, err
	}
	if e.Destination, err = e.startS3(vgw, "dst", true); err != nil {
		return nil, err
	}
	if e.Unversioned, err = e.startS3(vgw, "plain", false); err != nil {
		return nil, err
	}
	if e.SQS, err = e.startSQS(sqsScript); err != nil {
		return nil, err
	}
	ok = true
	return e, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (e *Env) startS3(bin, name string, versioning bool) (string, error) {
	port, err := freePort()
	if err != nil {
		return "", err
	}
	root := filepath.Join(e.dir, name, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	// Keep-alive as every production S3 endpoint has it: without it each
	// request pays a new TCP connection on both sides.
	args := []string{"--port", addr, "--health", "/health", "--quiet", "--keep-alive"}
	if e.TLS != nil {
		args = append(args, "--cert", e.TLS.CertFile, "--key", e.TLS.KeyFile)
	}
	args = append(args, "posix")
	if versioning {
		vdir := filepath.Join(e.dir, name, "versions")
		if err := os.MkdirAll(vdir, 0o755); err != nil {
			return "", err
		}
		args = append(args, "--versioning-dir", vdir)
	}
	args = append(args, root)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+AccessKey, "ROOT_SECRET_KEY="+SecretKey)
	return e.launch(cmd, name, addr, "/health")
}

// startMinIO starts a single-drive MinIO server: versioning works on one
// drive, which is how most users run it for a replica.
func (e *Env) startMinIO(bin, name string) (string, error) {
	port, err := freePort()
	if err != nil {
		return "", err
	}
	data := filepath.Join(e.dir, name, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	args := []string{"server", "--address", addr, "--quiet"}
	if e.TLS != nil {
		// MinIO takes its certificate from a directory, under fixed names.
		certs := filepath.Join(e.dir, name, "certs")
		if err := os.MkdirAll(certs, 0o700); err != nil {
			return "", err
		}
		for src, dst := range map[string]string{e.TLS.CertFile: "public.crt", e.TLS.KeyFile: "private.key"} {
			b, err := os.ReadFile(src)
			if err != nil {
				return "", err
			}
			if err := os.WriteFile(filepath.Join(certs, dst), b, 0o600); err != nil {
				return "", err
			}
		}
		args = append(args, "--certs-dir", certs)
	}
	args = append(args, data)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+AccessKey, "MINIO_ROOT_PASSWORD="+SecretKey,
		// No web console, no update check, and the background scanner at
		// its slowest: the tests share two cores with everything else.
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_SCANNER_SPEED=slowest")
	url, err := e.launch(cmd, name, addr, "/minio/health/ready")
	if err != nil {
		return "", err
	}
	// Ready can come before the object layer is: the first bucket calls
	// then answer 503 XMinioServerNotInitialized. Wait for a real one.
	client := e.S3(url)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := client.ListBuckets(ctx, &s3.ListBucketsInput{})
		cancel()
		if err == nil {
			return url, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s answers health but not S3 calls: %w (see %s.log in %s)", name, err, name, e.dir)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// launch starts an S3 server's process, logging to name.log, and waits
// until GET health answers 200.
func (e *Env) launch(cmd *exec.Cmd, name, addr, health string) (string, error) {
	scheme, hc := "http", &http.Client{Timeout: 2 * time.Second}
	if e.TLS != nil {
		scheme, hc = "https", e.TLS.Client()
		hc.Timeout = 2 * time.Second
	}
	logf, err := os.Create(filepath.Join(e.dir, name+".log"))
	if err != nil {
		return "", err
	}
	defer logf.Close() // the child keeps its own descriptor
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start %s: %w", filepath.Base(cmd.Path), err)
	}
	e.track(name, cmd)
	url := scheme + "://" + addr
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := hc.Get(url + health)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return url, nil
			}
		}
		if zombie(cmd.Process.Pid) {
			return "", fmt.Errorf("%s (%s) exited at start (see %s.log in %s)", name, filepath.Base(cmd.Path), name, e.dir)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "", fmt.Errorf("%s (%s) did not become healthy on %s (see %s.log in %s)", name, filepath.Base(cmd.Path), addr, name, e.dir)
}

// zombie reports whether a child process has exited and awaits its Wait
// (Linux; elsewhere it never tells, and the health deadline decides).
func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] == "Z"
}

// MinIO returns the URL of the environment's MinIO server, starting it on
// the first call (about half a second): tests that use it share it, each
// with its own buckets.
func (e *Env) MinIO() (string, error) {
	e.minioMu.Lock()
	defer e.minioMu.Unlock()
	if e.minioURL == "" && e.minioErr == nil {
		e.minioURL, e.minioErr = e.startMinIOInstalled()
	}
	return e.minioURL, e.minioErr
}

func (e *Env) startMinIOInstalled() (string, error) {
	root, err := Root()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(root, ".testenv", "bin", "minio")
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("%w (minio missing)", ErrNotInstalled)
	}
	return e.startMinIO(bin, "minio")
}

// Endpoint returns the URL of a server of the given kind to use in role
// ("source" or "destination"): versitygw has one server per role, MinIO
// one for both (each test has its own buckets).
func (e *Env) Endpoint(k Kind, role string) (string, error) {
	switch {
	case k == MinIO:
		return e.MinIO()
	case k != VersityGW && k != "":
		return "", fmt.Errorf("unknown S3 server kind %q", k)
	case role == "source":
		return e.Source, nil
	case role == "destination":
		return e.Destination, nil
	}
	return "", fmt.Errorf("unknown role %q", role)
}

// Server is one S3 server started alone, for tests that need no queue.
type Server struct {
	URL  string
	Kind Kind
	env  *Env
}

// StartServer starts one S3 server of kind k (versioning supported) with
// its data under dir.
func StartServer(dir string, k Kind) (*Server, error) {
	root, err := Root()
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(root, ".testenv", "bin", string(k))
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("%w (%s missing)", ErrNotInstalled, k)
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, err
	}
	e := &Env{dir: dir}
	var url string
	switch k {
	case VersityGW:
		url, err = e.startS3(bin, string(k), true)
	case MinIO:
		url, err = e.startMinIO(bin, string(k))
	default:
		err = fmt.Errorf("unknown S3 server kind %q", k)
	}
	if err != nil {
		e.Close()
		return nil, err
	}
	return &Server{URL: url, Kind: k, env: e}, nil
}

// Close stops the server.
func (s *Server) Close() { s.env.Close() }

// StartSQS starts the local SQS server alone, with its log under dir; its
// Env has SQS, SQSClient and CreateQueue, and Close stops it.
func StartSQS(dir string) (*Env, error) {
	root, err := Root()
	if err != nil {
		return nil, err
	}
	script := filepath.Join(root, ".testenv", "sqs", "sqs-server.mjs")
	if _, err := os.Stat(script); err != nil {
		return nil, fmt.Errorf("%w (sqs-server.mjs missing)", ErrNotInstalled)
	}
	if _, err := exec.LookPath("node"); err != nil {
		return nil, fmt.Errorf("%w (node not on PATH)", ErrNotInstalled)
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, err
	}
	e := &Env{dir: dir}
	if e.SQS, err = e.startSQS(script); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// InstalledVersion is the version scripts/testenv.sh installed of a
// server, "" when it cannot tell.
func InstalledVersion(k Kind) string {
	root, err := Root()
	if err != nil {
		return ""
	}
	b, _ := os.ReadFile(filepath.Join(root, ".testenv", "bin", string(k)+".version"))
	return strings.TrimSpace(string(b))
}

func (e *Env) startSQS(script string) (string, error) {
	port, err := freePort()
	if err != nil {
		return "", err
	}
	cmd := exec.Command("node", script, fmt.Sprint(port))
	cmd.Dir = filepath.Dir(script)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	logf, err := os.Create(filepath.Join(e.dir, "sqs.log"))
	if err != nil {
		return "", err
	}
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start local SQS: %w", err)
	}
	e.track("sqs", cmd)
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) == "ready" {
				ready <- true
				_, _ = io.Copy(logf, stdout)
				return
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			return "", errors.New("local SQS exited before it was ready (see sqs.log)")
		}
	case <-time.After(30 * time.Second):
		return "", errors.New("local SQS did not start within 30s")
	}
	return fmt.Sprintf("http://127.0.0.1:%d", port), nil
}

func (e *Env) track(name string, cmd *exec.Cmd) {
	e.mu.Lock()
	e.procs = append(e.procs, cmd)
	e.names = append(e.names, name)
	e.mu.Unlock()
}

// Close stops the servers.
func (e *Env) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, p := range e.procs {
		_ = p.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range e.procs {
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = p.Process.Kill()
			<-done
		}
	}
	e.procs, e.names = nil, nil
}

// S3 returns a client for an endpoint of this environment.
func S3(endpoint string) *s3.Client { return s3Client(endpoint, nil) }

// S3 returns a client for one of the environment's S3 endpoints, trusting
// its CA when it speaks HTTPS.
func (e *Env) S3(endpoint string) *s3.Client {
	if e.TLS != nil {
		return s3Client(endpoint, e.TLS.Client())
	}
	return s3Client(endpoint, nil)
}

func s3Client(endpoint string, hc *http.Client) *s3.Client {
	var client s3.HTTPClient
	if hc != nil {
		client = hc
	}
	return s3.New(s3.Options{
		HTTPClient:                 client,
		Region:                     Region,
		BaseEndpoint:               aws.String(endpoint),
		UsePathStyle:               true,
		Credentials:                credentials.NewStaticCredentialsProvider(AccessKey, SecretKey, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
}

// SQSClient returns a client for the local SQS server.
func (e *Env) SQSClient() *sqs.Client {
	return sqs.New(sqs.Options{
		Region:       Region,
		BaseEndpoint: aws.String(e.SQS),
		Credentials:  credentials.NewStaticCredentialsProvider(AccessKey, SecretKey, ""),
	})
}

// CreateBucket creates a bucket, versioned when asked.
func CreateBucket(ctx context.Context, c *s3.Client, name string, versioned bool) error {
	if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &name}); err != nil {
		return fmt.Errorf("create bucket %s: %w", name, err)
	}
	if !versioned {
		return nil
	}
	_, err := c.PutBucketVersioning(ctx, &s3.PutBucketVersioningInput{
		Bucket:                  &name,
		VersioningConfiguration: &s3types.VersioningConfiguration{Status: s3types.BucketVersioningStatusEnabled},
	})
	if err != nil {
		return fmt.Errorf("enable versioning on %s: %w", name, err)
	}
	return nil
}

// CreateQueue creates a queue with a dead-letter queue behind it and
// returns the queue's URL.
func (e *Env) CreateQueue(ctx context.Context, name string, maxReceives int) (string, error) {
	c := e.SQSClient()
	dlq, err := c.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(name + "-dlq")})
	if err != nil {
		return "", fmt.Errorf("create DLQ: %w", err)
	}
	attrs, err := c.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: dlq.QueueUrl, AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn}})
	if err != nil {
		return "", fmt.Errorf("DLQ attributes: %w", err)
	}
	redrive := fmt.Sprintf(`{"deadLetterTargetArn":%q,"maxReceiveCount":"%d"}`, attrs.Attributes["QueueArn"], maxReceives)
	q, err := c.CreateQueue(ctx, &sqs.CreateQueueInput{
		QueueName:  aws.String(name),
		Attributes: map[string]string{"RedrivePolicy": redrive, "VisibilityTimeout": "30"},
	})
	if err != nil {
		return "", fmt.Errorf("create queue: %w", err)
	}
	return aws.ToString(q.QueueUrl), nil
}

// CPU returns the CPU time each server has used so far, by name (src, dst,
// plain, sqs), so that a benchmark can tell the load a copier puts on
// them. Linux only: empty elsewhere.
func (e *Env) CPU() map[string]time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]time.Duration{}
	for i, p := range e.procs {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Process.Pid))
		if err != nil {
			continue
		}
		// After the parenthesised command, utime and stime are the 12th
		// and 13th fields, in USER_HZ (100 on Linux).
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 12 {
			var u, s int64
			fmt.Sscan(f[11], &u)
			fmt.Sscan(f[12], &s)
			out[e.names[i]] = time.Duration(u+s) * 10 * time.Millisecond
		}
	}
	return out
}

// FreeAddr returns a loopback address with a free port, for a daemon's
// listen setting.
func FreeAddr() (string, error) {
	port, err := freePort()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("127.0.0.1:%d", port), nil
}

// The scraper asks for no compression: gzipping every scrape would bill
// the daemon for its observer's polling.
var scrapeClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableCompression: true}}

// Scrape returns a daemon's /metrics text, or "" while it does not answer.
func Scrape(listen string) string {
	resp, err := scrapeClient.Get("http://" + listen + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}
