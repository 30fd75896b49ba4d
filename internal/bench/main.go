// Command bench measures s3replicad against rclone between the same two
// local S3 servers, in alternating rounds, and prints per workload the
// wall time, objects/s, MB/s, CPU seconds and peak RSS of each tool and
// the ratios of their medians. It then compares s3replicad's peak RSS
// while copying a large object with that for a 128 MiB one.
//
// Run it with `make bench`; it needs the servers of scripts/testenv.sh,
// rclone on PATH and bin/s3replicad.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"golang.org/x/sync/errgroup"

	"github.com/s3replicad/s3replicad/internal/testenv"
)

const (
	kib = 1 << 10
	mib = 1 << 20
)

type options struct {
	rounds    int
	w1Count   int
	w1Size    int64
	w2Count   int
	w2Size    int64
	bigSize   int64
	transfer  string
	workDir   string
	keep      bool
	skipRC    bool
	workloads string
	profile   string
	destKeys  string
	queueKeys string
	plain     bool
	bin       string
	// profileSecs is how long each CPU profile runs.
	profileSecs int
}

func main() {
	var o options
	var w1Size, w2Size, bigSize string
	flag.IntVar(&o.rounds, "rounds", 3, "alternating rounds per workload (the median is reported)")
	flag.IntVar(&o.w1Count, "w1-count", 2000, "objects in W1 (many small objects)")
	flag.StringVar(&w1Size, "w1-size", "64KiB", "size of each W1 object")
	flag.IntVar(&o.w2Count, "w2-count", 8, "objects in W2 (few large objects)")
	flag.StringVar(&w2Size, "w2-size", "128MiB", "size of each W2 object")
	flag.StringVar(&bigSize, "memcheck-size", "2GiB", "object size of the memory check (0 skips it)")
	flag.StringVar(&o.destKeys, "destination", "", "extra keys of s3replicad's destination, e.g. 'integrity: md5'")
	flag.StringVar(&o.queueKeys, "queue", "", "extra keys of s3replicad's queue, e.g. 'pollers: 4'")
	flag.StringVar(&o.transfer, "transfer", "", "extra YAML under transfer: for s3replicad, e.g. '{workers: 32}'")
	flag.StringVar(&o.workDir, "dir", "", "where the servers keep their data (default: a temporary directory)")
	flag.BoolVar(&o.keep, "keep", false, "keep the data directory afterwards")
	flag.BoolVar(&o.skipRC, "no-rclone", false, "measure s3replicad alone")
	flag.StringVar(&o.workloads, "workloads", "w1,w2", "workloads to run")
	flag.StringVar(&o.profile, "cpuprofile", "", "save a CPU profile of each s3replicad run under this prefix")
	flag.IntVar(&o.profileSecs, "cpuprofile-seconds", 4, "length of each CPU profile (-cpuprofile); make it cover the run")
	flag.BoolVar(&o.plain, "plain", false, "serve S3 over plain HTTP instead of HTTPS with a private CA")
	flag.StringVar(&o.bin, "bin", "", "the s3replicad binary to measure (default: bin/s3replicad of this checkout), e.g. an older build to compare with")
	flag.Parse()
	var err error
	for _, p := range []struct {
		s string
		v *int64
	}{{w1Size, &o.w1Size}, {w2Size, &o.w2Size}, {bigSize, &o.bigSize}} {
		if *p.v, err = parseSize(p.s); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(2)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseSize(s string) (int64, error) {
	var n int64
	var unit string
	if _, err := fmt.Sscanf(s, "%d%s", &n, &unit); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return 0, fmt.Errorf("bad size %q", s)
	}
	switch strings.ToLower(unit) {
	case "", "b":
		return n, nil
	case "kib", "k":
		return n * kib, nil
	case "mib", "m":
		return n * mib, nil
	case "gib", "g":
		return n << 30, nil
	}
	return 0, fmt.Errorf("bad size unit in %q (use KiB, MiB or GiB)", s)
}

// workload is a set of source object versions and their events.
type workload struct {
	name   string
	prefix string
	events []testenv.Event
	bytes  int64
}

// measurement is one tool's run over one workload.
type measurement struct {
	wall      time.Duration
	cpu       time.Duration
	sys       time.Duration // of cpu, the kernel's on the tool's behalf
	maxRSS    int64         // bytes
	serverCPU time.Duration
	sqsCPU    time.Duration
	startup   time.Duration // s3replicad: until it serves /metrics
	intake    time.Duration // s3replicad: until every event was received
	// mallocs and allocBytes are s3replicad's heap allocations (count and
	// bytes) from its first answer on /metrics to the end of the copy:
	// unlike CPU time, they do not depend on what else the machine runs.
	mallocs, allocBytes float64
	// reads and writes are s3replicad's read and write system calls
	// (all of them: sockets, the state file, logs), counted by the kernel.
	reads, writes float64
	// commits and pages are the state file's commits and the pages they
	// wrote (0 from a build without those series).
	commits, pages float64
}

// serverUse is the servers' CPU since before: both S3 servers and, apart,
// the SQS server.
func (b *bench) serverUse(before map[string]time.Duration) (s3, sqs time.Duration) {
	for name, d := range b.env.CPU() {
		if name == "sqs" {
			sqs += d - before[name]
		} else {
			s3 += d - before[name]
		}
	}
	return s3, sqs
}

type bench struct {
	o       options
	root    string
	dir     string
	env     *testenv.Env
	src     *s3.Client
	dst     *s3.Client
	srcBkt  string
	seq     int
	binPath string
}

func run(ctx context.Context, o options) error {
	root, err := testenv.Root()
	if err != nil {
		return err
	}
	b := &bench{o: o, root: root, srcBkt: "bench-src", binPath: filepath.Join(root, "bin", "s3replicad")}
	if o.bin != "" {
		b.binPath = o.bin
	}
	if _, err := os.Stat(b.binPath); err != nil {
		return fmt.Errorf("%s missing: run `make build` (make bench does)", b.binPath)
	}
	if !o.skipRC {
		if _, err := exec.LookPath("rclone"); err != nil {
			return errors.New("rclone not on PATH (Debian: apt-get install rclone), or pass -no-rclone")
		}
	}
	b.dir = o.workDir
	if b.dir == "" {
		if b.dir, err = os.MkdirTemp("", "s3replicad-bench-"); err != nil {
			return err
		}
	}
	if !o.keep {
		defer os.RemoveAll(b.dir)
	}
	start := testenv.StartTLS
	if o.plain {
		start = testenv.Start
	}
	if b.env, err = start(filepath.Join(b.dir, "servers")); err != nil {
		return err
	}
	defer b.env.Close()
	b.src, b.dst = b.env.S3(b.env.Source), b.env.S3(b.env.Destination)
	if err := testenv.CreateBucket(ctx, b.src, b.srcBkt, true); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.dir, "rclone.conf"), nil, 0o600); err != nil {
		return err
	}
	fmt.Printf("s3replicad %s vs %s\nsource %s, destination %s, queue %s; %d alternating rounds\n\n",
		version(b.binPath), rcloneVersion(o.skipRC), b.env.Source, b.env.Destination, b.env.SQS, o.rounds)

	var loads []*workload
	for _, name := range strings.Split(o.workloads, ",") {
		switch strings.TrimSpace(name) {
		case "w1":
			loads = append(loads, &workload{name: fmt.Sprintf("W1 %d x %s", o.w1Count, human(o.w1Size)), prefix: "w1/"})
			if err := b.fill(ctx, loads[len(loads)-1], o.w1Count, o.w1Size, 32); err != nil {
				return err
			}
		case "w2":
			loads = append(loads, &workload{name: fmt.Sprintf("W2 %d x %s", o.w2Count, human(o.w2Size)), prefix: "w2/"})
			if err := b.fill(ctx, loads[len(loads)-1], o.w2Count, o.w2Size, 4); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unknown workload %q (w1, w2)", name)
		}
	}

	// Neither tool should pay for the fill: flush its writes to disk and read
	// every object once, so that each round starts from the same warm cache.
	if err := b.warm(ctx, loads); err != nil {
		return err
	}
	for _, w := range loads {
		var sr, rc []measurement
		// Round 0 is a warm-up of both tools, not counted: the first copy
		// into a server meets colder caches, whichever tool makes it.
		for r := 0; r <= o.rounds; r++ {
			// Alternate which tool goes first, so that neither always
			// meets a warmer page cache.
			order := []string{"s3replicad", "rclone"}
			if r%2 == 0 {
				order = []string{"rclone", "s3replicad"}
			}
			for _, tool := range order {
				if tool == "rclone" && o.skipRC {
					continue
				}
				var m measurement
				var err error
				if tool == "s3replicad" {
					m, err = b.runDaemon(ctx, w)
				} else {
					m, err = b.runRclone(ctx, w)
				}
				if err != nil {
					return fmt.Errorf("%s round %d, %s: %w", w.name, r, tool, err)
				}
				label := fmt.Sprintf("round %d", r)
				switch {
				case r == 0:
					label = "warm-up"
				case tool == "s3replicad":
					sr = append(sr, m)
				default:
					rc = append(rc, m)
				}
				fmt.Printf("  %s %-8s %-10s %s\n", w.name, label, tool, m.line(w))
			}
		}
		report(w, sr, rc)
	}

	if o.bigSize > 0 {
		if err := b.memCheck(ctx); err != nil {
			return err
		}
	}
	return nil
}

// fill writes count objects of size under w.prefix and keeps their events.
func (b *bench) fill(ctx context.Context, w *workload, count int, size int64, parallel int) error {
	start := time.Now()
	pub := b.env.Publisher("")
	w.events = make([]testenv.Event, count)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel)
	for i := range count {
		g.Go(func() error {
			key := fmt.Sprintf("%sobj-%05d", w.prefix, i)
			ev, err := b.putSynthetic(gctx, pub, key, size, uint64(i)+uint64(size))
			w.events[i] = ev
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	w.bytes = int64(count) * size
	fmt.Printf("filled %s (%s) in %.1fs\n", w.name, human(w.bytes), time.Since(start).Seconds())
	return nil
}

func (b *bench) putSynthetic(ctx context.Context, pub *testenv.Publisher, key string, size int64, seed uint64) (testenv.Event, error) {
	body := testenv.NewSynthetic(size, seed)
	if size <= 256*mib {
		out, err := b.src.PutObject(ctx, &s3.PutObjectInput{Bucket: &b.srcBkt, Key: &key, Body: body, ContentLength: aws.Int64(size),
			ContentType: aws.String("application/octet-stream")})
		if err != nil {
			return testenv.Event{}, fmt.Errorf("put %s: %w", key, err)
		}
		return testenv.Event{Name: "ObjectCreated:Put", Bucket: b.srcBkt, Key: key, VersionID: aws.ToString(out.VersionId),
			ETag: strings.Trim(aws.ToString(out.ETag), `"`), Size: size, Sequencer: pub.Sequencer()}, nil
	}
	// Large: a multipart upload of 64 MiB parts read from the generator.
	up, err := b.src.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &b.srcBkt, Key: &key})
	if err != nil {
		return testenv.Event{}, err
	}
	const ps = 64 * mib
	var parts []s3types.CompletedPart
	for n, off := int32(1), int64(0); off < size; n, off = n+1, off+ps {
		l := min(ps, size-off)
		out, err := b.src.UploadPart(ctx, &s3.UploadPartInput{Bucket: &b.srcBkt, Key: &key, UploadId: up.UploadId, PartNumber: aws.Int32(n),
			Body: io.NewSectionReader(body, off, l), ContentLength: aws.Int64(l)})
		if err != nil {
			return testenv.Event{}, err
		}
		parts = append(parts, s3types.CompletedPart{PartNumber: aws.Int32(n), ETag: out.ETag})
	}
	out, err := b.src.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &b.srcBkt, Key: &key, UploadId: up.UploadId,
		MultipartUpload: &s3types.CompletedMultipartUpload{Parts: parts}})
	if err != nil {
		return testenv.Event{}, err
	}
	return testenv.Event{Name: "ObjectCreated:CompleteMultipartUpload", Bucket: b.srcBkt, Key: key, VersionID: aws.ToString(out.VersionId),
		ETag: strings.Trim(aws.ToString(out.ETag), `"`), Size: size, Sequencer: pub.Sequencer()}, nil
}

// warm flushes dirty pages and reads the workloads' objects once.
func (b *bench) warm(ctx context.Context, loads []*workload) error {
	syscall.Sync()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, w := range loads {
		for _, ev := range w.events {
			g.Go(func() error {
				out, err := b.src.GetObject(gctx, &s3.GetObjectInput{Bucket: &b.srcBkt, Key: &ev.Key, VersionId: &ev.VersionID})
				if err != nil {
					return fmt.Errorf("warm %s: %w", ev.Key, err)
				}
				defer out.Body.Close()
				_, err = io.Copy(io.Discard, out.Body)
				return err
			})
		}
	}
	return g.Wait()
}

// newBucket makes a fresh, empty, versioned destination bucket.
func (b *bench) newBucket(ctx context.Context, tool string) (string, error) {
	b.seq++
	name := fmt.Sprintf("bench-%s-%d", tool, b.seq)
	return name, testenv.CreateBucket(ctx, b.dst, name, true)
}

// runDaemon publishes w's events as a backlog, starts s3replicad and
// measures until every object is replicated.
func (b *bench) runDaemon(ctx context.Context, w *workload) (measurement, error) {
	bucket, err := b.newBucket(ctx, "sr")
	if err != nil {
		return measurement{}, err
	}
	defer b.dropBucket(ctx, bucket)
	return b.daemonCopy(ctx, w, bucket)
}

func (b *bench) daemonCopy(ctx context.Context, w *workload, bucket string) (measurement, error) {
	queueURL, err := b.env.CreateQueue(ctx, bucket, 5)
	if err != nil {
		return measurement{}, err
	}
	pub := b.env.Publisher(queueURL)
	if err := pub.SendEvents(ctx, w.events...); err != nil {
		return measurement{}, err
	}
	dir := filepath.Join(b.dir, bucket)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return measurement{}, err
	}
	listen, err := testenv.FreeAddr()
	if err != nil {
		return measurement{}, err
	}
	destKeys, queueKeys, srcKeys := "", "", ""
	if b.env.TLS != nil {
		ca := ", ca_file: " + b.env.TLS.CAFile
		srcKeys, destKeys = ca, ca
	}
	if b.o.destKeys != "" {
		destKeys += ", " + b.o.destKeys
	}
	if b.o.queueKeys != "" {
		queueKeys = ", " + b.o.queueKeys
	}
	transfer := ""
	if b.o.transfer != "" {
		transfer = "transfer: " + b.o.transfer + "\n"
	}
	// wait_time 0s: local-aws-sqs, unlike SQS, holds a long poll open until
	// it has 10 messages or the wait is over, so a backlog of 8 would wait
	// out the whole poll; a short poll answers within 40 ms here, as a long
	// poll does on SQS when messages are waiting.
	cfg := fmt.Sprintf(`state_dir: %s
listen: %s
log: {level: warn}
queue: {url: %s, endpoint: %s, access_key_id: %s, secret_access_key: %s, wait_time: 0s%s}
source: {endpoint: %s, path_style: true, access_key_id: %s, secret_access_key: %s%s}
destinations:
  - {name: bench, endpoint: %s, path_style: true, access_key_id: %s, secret_access_key: %s%s}
rules:
  - {id: bench, source_bucket: %s, destination: bench, destination_bucket: %s}
%s`, filepath.Join(dir, "state"), listen, queueURL, b.env.SQS, testenv.AccessKey, testenv.SecretKey, queueKeys,
		b.env.Source, testenv.AccessKey, testenv.SecretKey, srcKeys, b.env.Destination, testenv.AccessKey, testenv.SecretKey, destKeys,
		b.srcBkt, bucket, transfer)
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return measurement{}, err
	}
	logf, err := os.Create(filepath.Join(dir, "daemon.log"))
	if err != nil {
		return measurement{}, err
	}
	defer logf.Close()
	cmd := exec.Command(b.binPath, "run", "-config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start, cpu0 := time.Now(), b.env.CPU()
	if err := cmd.Start(); err != nil {
		return measurement{}, err
	}
	profiled := make(chan struct{})
	if b.o.profile != "" {
		go func() {
			defer close(profiled)
			saveProfile(filepath.Join(dir, "state", "admin.sock"), listen, b.o.profileSecs, fmt.Sprintf("%s-%s.pprof", b.o.profile, bucket))
		}()
	} else {
		close(profiled)
	}
	want := float64(len(w.events))
	var wall, serverCPU, sqsCPU, startup, intake time.Duration
	var mallocs0, bytes0, mallocs, allocBytes, reads, writes, commits, pages float64
	for {
		text := testenv.Scrape(listen)
		if startup == 0 && text != "" {
			startup = time.Since(start)
			mallocs0, bytes0 = metric(text, "go_memstats_mallocs_total"), metric(text, "go_memstats_alloc_bytes_total")
		}
		if intake == 0 && sumMetric(text, "s3replicad_events_received_total{") >= want {
			intake = time.Since(start)
		}
		if metric(text, `s3replicad_replicated_objects_total{rule="bench"}`) >= want {
			wall = time.Since(start)
			serverCPU, sqsCPU = b.serverUse(cpu0)
			mallocs = metric(text, "go_memstats_mallocs_total") - mallocs0
			reads, writes = syscalls(cmd.Process.Pid)
			allocBytes = metric(text, "go_memstats_alloc_bytes_total") - bytes0
			commits, pages = metric(text, "s3replicad_state_commits_total"), metric(text, "s3replicad_state_pages_written_total")
			break
		}
		if f := sumMetric(text, "s3replicad_operations_failed_total{"); f > 0 {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return measurement{}, fmt.Errorf("%v operations failed (see %s)", f, logf.Name())
		}
		if ctx.Err() != nil || time.Since(start) > 30*time.Minute {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return measurement{}, fmt.Errorf("not drained (see %s)", logf.Name())
		}
		time.Sleep(pollEvery(text, metric(text, `s3replicad_replicated_objects_total{rule="bench"}`), want, time.Since(start)))
	}
	<-profiled
	if b.o.profile != "" {
		_ = fetchProfile(filepath.Join(dir, "state", "admin.sock"), listen, "allocs", fmt.Sprintf("%s-%s.allocs", b.o.profile, bucket))
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		return measurement{}, fmt.Errorf("daemon exit: %w (see %s)", err, logf.Name())
	}
	m := usage(cmd.ProcessState)
	m.wall, m.serverCPU, m.sqsCPU, m.startup, m.intake = wall, serverCPU, sqsCPU, startup, intake
	m.mallocs, m.allocBytes = mallocs, allocBytes
	m.reads, m.writes = reads, writes
	m.commits, m.pages = commits, pages
	return m, b.check(ctx, bucket, w)
}

// pollEvery is how long to wait before scraping the daemon again. Every
// scrape costs the daemon CPU (gathering and encoding every family, the
// process collector's reads of /proc), which is not the daemon's work: at
// a fixed 25 ms it was about 2.5% of the CPU measured on W1. So the bench
// scrapes rarely while the end is far, judged from the rate so far, and
// often as it nears, to time the end as closely as before.
func pollEvery(text string, done, want float64, elapsed time.Duration) time.Duration {
	const fast, slow = 10 * time.Millisecond, 250 * time.Millisecond
	if text == "" || done <= 0 || done >= want {
		return fast // starting, or not copying yet: time the start closely
	}
	eta := time.Duration((want - done) / done * float64(elapsed))
	return min(max(eta/3, fast), slow)
}

// runRclone copies w's prefix with rclone into a fresh bucket.
func (b *bench) runRclone(ctx context.Context, w *workload) (measurement, error) {
	bucket, err := b.newBucket(ctx, "rc")
	if err != nil {
		return measurement{}, err
	}
	defer b.dropBucket(ctx, bucket)
	cmd := b.env.Rclone(ctx, filepath.Join(b.dir, "rclone.conf"), "copy", "src:"+b.srcBkt+"/"+w.prefix, "dst:"+bucket+"/"+w.prefix,
		"--transfers", "32", "--checkers", "32", "--s3-upload-concurrency", "8", "--s3-chunk-size", "16M")
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start, cpu0 := time.Now(), b.env.CPU()
	if err := cmd.Run(); err != nil {
		return measurement{}, fmt.Errorf("rclone: %w\n%s", err, out)
	}
	m := usage(cmd.ProcessState)
	m.wall = time.Since(start)
	m.serverCPU, m.sqsCPU = b.serverUse(cpu0)
	return m, b.check(ctx, bucket, w)
}

// check confirms that the destination holds every object at its size.
func (b *bench) check(ctx context.Context, bucket string, w *workload) error {
	sizes := map[string]int64{}
	p := s3.NewListObjectsV2Paginator(b.dst, &s3.ListObjectsV2Input{Bucket: &bucket})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return err
		}
		for _, o := range out.Contents {
			sizes[aws.ToString(o.Key)] = aws.ToInt64(o.Size)
		}
	}
	for _, ev := range w.events {
		if got, ok := sizes[ev.Key]; !ok || got != ev.Size {
			return fmt.Errorf("destination %s: %s has %d bytes (present %v), want %d", bucket, ev.Key, got, ok, ev.Size)
		}
	}
	return nil
}

// dropBucket empties and deletes a destination bucket so that the disk
// does not fill over many rounds.
func (b *bench) dropBucket(ctx context.Context, bucket string) {
	p := s3.NewListObjectVersionsPaginator(b.dst, &s3.ListObjectVersionsInput{Bucket: &bucket})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return
		}
		var ids []s3types.ObjectIdentifier
		for _, v := range out.Versions {
			ids = append(ids, s3types.ObjectIdentifier{Key: v.Key, VersionId: v.VersionId})
		}
		for _, d := range out.DeleteMarkers {
			ids = append(ids, s3types.ObjectIdentifier{Key: d.Key, VersionId: d.VersionId})
		}
		for chunk := range slices.Chunk(ids, 1000) {
			_, _ = b.dst.DeleteObjects(ctx, &s3.DeleteObjectsInput{Bucket: &bucket, Delete: &s3types.Delete{Objects: chunk, Quiet: aws.Bool(true)}})
		}
	}
	_, _ = b.dst.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: &bucket})
}

// memCheck compares s3replicad's peak RSS copying one large object with
// that copying one 128 MiB object.
func (b *bench) memCheck(ctx context.Context) error {
	fmt.Printf("\nmemory check: s3replicad peak RSS copying one object\n")
	var rss []int64
	for i, size := range []int64{128 * mib, b.o.bigSize} {
		w := &workload{name: "memcheck " + human(size), prefix: fmt.Sprintf("mem%d/", i)}
		if err := b.fill(ctx, w, 1, size, 1); err != nil {
			return err
		}
		bucket, err := b.newBucket(ctx, "mem")
		if err != nil {
			return err
		}
		m, err := b.daemonCopy(ctx, w, bucket)
		b.dropBucket(ctx, bucket)
		if err != nil {
			return fmt.Errorf("%s: %w", w.name, err)
		}
		rss = append(rss, m.maxRSS)
		fmt.Printf("  %-9s peak RSS %6.1f MiB   %s\n", human(size), float64(m.maxRSS)/mib, m.line(w))
	}
	fmt.Printf("  ratio %s / 128 MiB: %.2f\n", human(b.o.bigSize), float64(rss[1])/float64(rss[0]))
	return nil
}

// saveProfile fetches the daemon's CPU profile for as long as a run of
// the workloads here takes.
func saveProfile(socket, listen string, seconds int, path string) {
	_ = fetchProfile(socket, listen, fmt.Sprintf("profile?seconds=%d", seconds), path)
}

// fetchProfile saves one of the daemon's profiles, from its admin socket
// or, from a build older than the socket (compared with -bin), from
// listen, whichever answers first.
func fetchProfile(socket, listen, name, path string) error {
	for range 300 {
		if _, err := os.Stat(socket); err == nil {
			return testenv.FetchProfile(socket, name, path)
		}
		if resp, err := http.Get("http://" + listen + "/debug/pprof/"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return testenv.SaveProfile(http.DefaultClient, "http://"+listen+"/debug/pprof/"+name, path)
}

// syscalls returns the read and write system calls a process has made
// so far (Linux; zero elsewhere).
func syscalls(pid int) (reads, writes float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "syscr: "); ok {
			fmt.Sscan(v, &reads)
		}
		if v, ok := strings.CutPrefix(line, "syscw: "); ok {
			fmt.Sscan(v, &writes)
		}
	}
	return reads, writes
}

func usage(ps *os.ProcessState) measurement {
	m := measurement{cpu: ps.UserTime() + ps.SystemTime(), sys: ps.SystemTime()}
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		m.maxRSS = ru.Maxrss * kib
	}
	return m
}

func (m measurement) line(w *workload) string {
	s := m.wall.Seconds()
	up := ""
	if m.startup > 0 {
		n := float64(len(w.events))
		up = fmt.Sprintf("  (start-up %.2fs, events in %.2fs; per object %.0f allocs, %.1f KiB allocated, %.1f read and %.1f write calls)",
			m.startup.Seconds(), m.intake.Seconds(), m.mallocs/n, m.allocBytes/kib/n, m.reads/n, m.writes/n)
		if m.commits > 0 {
			up = strings.TrimSuffix(up, ")") + fmt.Sprintf("; %.2f state commits and %.1f pages written per object)", m.commits/n, m.pages/n)
		}
	}
	return fmt.Sprintf("%7.2fs %8.1f obj/s %7.1f MB/s  cpu %5.2fs (%.3f ms/obj, %.0f%% system)  rss %6.1f MiB  S3 servers' cpu %5.2fs, SQS %4.2fs%s",
		s, float64(len(w.events))/s, float64(w.bytes)/1e6/s, m.cpu.Seconds(), cpuPerObject(m, w), 100*m.sys.Seconds()/max(m.cpu.Seconds(), 1e-9), float64(m.maxRSS)/mib, m.serverCPU.Seconds(), m.sqsCPU.Seconds(), up)
}

// cpuPerObject is a run's CPU time (user and system) per object copied, in
// milliseconds: on a busy bucket of small objects, the daemon's CPU is what
// bounds its rate (and, on a shared machine, the stores').
func cpuPerObject(m measurement, w *workload) float64 {
	if len(w.events) == 0 {
		return 0
	}
	return m.cpu.Seconds() * 1e3 / float64(len(w.events))
}

func median(ms []measurement, f func(measurement) float64) float64 {
	if len(ms) == 0 {
		return 0
	}
	v := make([]float64, len(ms))
	for i, m := range ms {
		v[i] = f(m)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func report(w *workload, sr, rc []measurement) {
	wall := func(m measurement) float64 { return m.wall.Seconds() }
	cpu := func(m measurement) float64 { return m.cpu.Seconds() }
	rss := func(m measurement) float64 { return float64(m.maxRSS) / mib }
	fmt.Printf("\n%s, medians of %d rounds\n", w.name, len(sr))
	srvCPU := func(m measurement) float64 { return m.serverCPU.Seconds() }
	perObj := func(m measurement) float64 { return cpuPerObject(m, w) }
	fmt.Printf("  %-10s %8s %10s %9s %8s %11s %10s %17s\n", "tool", "wall s", "objects/s", "MB/s", "CPU s", "CPU ms/obj", "peak RSS", "S3 servers' CPU s")
	row := func(name string, ms []measurement) {
		s := median(ms, wall)
		fmt.Printf("  %-10s %8.2f %10.1f %9.1f %8.2f %11.3f %6.1f MiB %17.2f\n", name, s, float64(len(w.events))/s, float64(w.bytes)/1e6/s,
			median(ms, cpu), median(ms, perObj), median(ms, rss), median(ms, srvCPU))
	}
	row("s3replicad", sr)
	if n := float64(len(w.events)); n > 0 {
		fmt.Printf("  %-10s heap allocations per object: %.0f, %.1f KiB\n", "s3replicad",
			median(sr, func(m measurement) float64 { return m.mallocs / n }), median(sr, func(m measurement) float64 { return m.allocBytes / kib / n }))
	}
	if len(rc) > 0 {
		row("rclone", rc)
		fmt.Printf("  ratios: speed %.2fx rclone, CPU %.2fx rclone's (%.3f vs %.3f ms per object), peak RSS %.2fx rclone's\n",
			median(rc, wall)/median(sr, wall), median(sr, cpu)/median(rc, cpu), median(sr, perObj), median(rc, perObj), median(sr, rss)/median(rc, rss))
		// The split shows whether a gap is in the tool's own code or in the
		// system calls it makes (sockets, the state file's writes and syncs).
		user := func(m measurement) float64 { return (m.cpu - m.sys).Seconds() }
		sys := func(m measurement) float64 { return m.sys.Seconds() }
		fmt.Printf("  user CPU %.2fx rclone's, system CPU %.2fx rclone's\n\n", median(sr, user)/median(rc, user), median(sr, sys)/median(rc, sys))
	}
}

func human(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= mib && n%mib == 0:
		return fmt.Sprintf("%d MiB", n/mib)
	case n >= kib && n%kib == 0:
		return fmt.Sprintf("%d KiB", n/kib)
	}
	return fmt.Sprintf("%d B", n)
}

// metric returns the value of the series named exactly by series.
func metric(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var v float64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return 0
}

// sumMetric adds every series whose line starts with prefix.
func sumMetric(text, prefix string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, prefix) {
			var v float64
			fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
			sum += v
		}
	}
	return sum
}

func version(bin string) string {
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		return "(unknown version)"
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}

func rcloneVersion(skip bool) string {
	if skip {
		return "nothing (-no-rclone)"
	}
	out, err := exec.Command("rclone", "version").Output()
	if err != nil {
		return "rclone"
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}
