// Command benchscale measures s3replicad at scale (`make bench-scale`).
//
// Drain: it writes N small objects to the local source server and queues
// their events, then lets the daemon drain them, printing objects/s and the
// daemon's CPU per object for each tenth of the backlog, its peak RSS, the
// state file's bytes per operation, how long `status -json` takes at 25,
// 50 and 75% and how long a restart takes to be ready; then `rclone copy`
// of the same objects for comparison.
//
// State: it records M operations (default 1,000,000) in a state file with
// the daemon's own code, as the daemon would have after copying them, and
// measures the file's bytes per operation, `status -json` against a daemon
// running on it, and the daemon's restart to ready.
package main

import (
	"bytes"
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
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sync/errgroup"

	"github.com/s3replicad/s3replicad/checkpoint"
	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/internal/testenv"
)

type options struct {
	objects   int
	size      int
	stateOps  int
	tls       bool
	skipRC    bool
	skipDrain bool
	dir       string
	profile   string
	bin       string
}

func main() {
	var o options
	flag.IntVar(&o.objects, "objects", 100000, "small objects to queue and drain (0 skips the drain)")
	flag.IntVar(&o.size, "size", 1024, "bytes per object")
	flag.IntVar(&o.stateOps, "state-ops", 1000000, "operations in the state file of the state measurement (0 skips it)")
	flag.BoolVar(&o.tls, "tls", false, "serve S3 over HTTPS with a private CA")
	flag.BoolVar(&o.skipRC, "no-rclone", false, "measure s3replicad alone")
	flag.StringVar(&o.dir, "dir", "", "work directory (default: a temporary one, removed)")
	flag.StringVar(&o.bin, "bin", "", "the s3replicad binary to measure (default: bin/s3replicad of this checkout)")
	flag.StringVar(&o.profile, "cpuprofile", "", "save a 10-second CPU profile of the daemon from 20% of the drain to this file")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench-scale:", err)
		os.Exit(1)
	}
}

type scale struct {
	o      options
	dir    string
	bin    string
	env    *testenv.Env
	src    *s3.Client
	dst    *s3.Client
	bucket string
}

func run(ctx context.Context, o options) error {
	root, err := testenv.Root()
	if err != nil {
		return err
	}
	b := &scale{o: o, bin: filepath.Join(root, "bin", "s3replicad"), bucket: "scale-src"}
	if o.bin != "" {
		b.bin = o.bin
	}
	if _, err := os.Stat(b.bin); err != nil {
		return fmt.Errorf("%s missing: run `make build` (make bench-scale does)", b.bin)
	}
	b.dir = o.dir
	if b.dir == "" {
		if b.dir, err = os.MkdirTemp("", "s3replicad-scale-"); err != nil {
			return err
		}
		defer os.RemoveAll(b.dir)
	}
	start := testenv.Start
	if o.tls {
		start = testenv.StartTLS
	}
	if b.env, err = start(filepath.Join(b.dir, "servers")); err != nil {
		return err
	}
	defer b.env.Close()
	b.src, b.dst = b.env.S3(b.env.Source), b.env.S3(b.env.Destination)
	if o.objects > 0 {
		if err := b.drain(ctx); err != nil {
			return err
		}
	}
	if o.stateOps > 0 {
		if err := b.stateScale(ctx); err != nil {
			return err
		}
	}
	return nil
}

// daemon is a running s3replicad.
type daemon struct {
	cmd    *exec.Cmd
	listen string
	cfg    string
	log    *os.File
}

func (b *scale) config(name, queueURL string) (string, string, error) {
	dir := filepath.Join(b.dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	listen, err := testenv.FreeAddr()
	if err != nil {
		return "", "", err
	}
	ca := ""
	if b.env.TLS != nil {
		ca = ", ca_file: " + b.env.TLS.CAFile
	}
	cfg := fmt.Sprintf(`state_dir: %s
listen: %s
log: {level: warn}
queue: {url: %s, endpoint: %s, access_key_id: %s, secret_access_key: %s, wait_time: 0s}
source: {endpoint: %s, path_style: true, access_key_id: %s, secret_access_key: %s%s}
destinations:
  - {name: d, endpoint: %s, path_style: true, access_key_id: %s, secret_access_key: %s%s}
rules:
  - {id: scale, source_bucket: %s, destination: d, destination_bucket: %s}
`, filepath.Join(dir, "state"), listen, queueURL, b.env.SQS, testenv.AccessKey, testenv.SecretKey,
		b.env.Source, testenv.AccessKey, testenv.SecretKey, ca, b.env.Destination, testenv.AccessKey, testenv.SecretKey, ca, b.bucket, name)
	path := filepath.Join(dir, "config.yaml")
	return path, listen, os.WriteFile(path, []byte(cfg), 0o600)
}

func (b *scale) startDaemon(cfg, listen string) (*daemon, time.Duration, error) {
	logf, err := os.OpenFile(filepath.Join(filepath.Dir(cfg), "daemon.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, 0, err
	}
	d := &daemon{cmd: exec.Command(b.bin, "run", "-config", cfg), listen: listen, cfg: cfg, log: logf}
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := d.cmd.Start(); err != nil {
		return nil, 0, err
	}
	for time.Since(start) < 2*time.Minute {
		resp, err := http.Get("http://" + listen + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return d, time.Since(start), nil
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	d.stop()
	return nil, 0, fmt.Errorf("daemon not ready (see %s)", logf.Name())
}

func (d *daemon) stop() error {
	defer d.log.Close()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	return d.cmd.Wait()
}

// proc reads a process's CPU time and peak RSS from /proc.
func proc(pid int) (time.Duration, int64) {
	var cpu time.Duration
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 12 {
			u, _ := strconv.ParseInt(f[11], 10, 64)
			s, _ := strconv.ParseInt(f[12], 10, 64)
			cpu = time.Duration(u+s) * 10 * time.Millisecond
		}
	}
	var hwm int64
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &hwm)
				hwm *= 1024
			}
		}
	}
	return cpu, hwm
}

// fetchFromListen saves a profile that an older build serves on listen.
func fetchFromListen(listen, name, path string) {
	resp, err := http.Get("http://" + listen + "/debug/pprof/" + name)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	if f, err := os.Create(path); err == nil {
		_, _ = io.Copy(f, resp.Body)
		f.Close()
	}
}

func metric(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, _ := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v
		}
	}
	return 0
}

// statusTime runs `status -json` against the running daemon and returns
// how long it took.
func (b *scale) statusTime(cfg string) (time.Duration, error) {
	start := time.Now()
	out, err := exec.Command(b.bin, "status", "-json", "-config", cfg).Output()
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("status: %w", err)
	}
	if !bytes.Contains(out, []byte(`"daemon_running": true`)) {
		return 0, errors.New("status did not reach the daemon")
	}
	return d, nil
}

func (b *scale) drain(ctx context.Context) error {
	n := b.o.objects
	if err := testenv.CreateBucket(ctx, b.src, b.bucket, true); err != nil {
		return err
	}
	queueURL, err := b.env.CreateQueue(ctx, "scale", 5)
	if err != nil {
		return err
	}
	pub := b.env.Publisher(queueURL)
	fmt.Printf("filling %d objects of %d bytes and queueing their events...\n", n, b.o.size)
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(64)
	var done atomic.Int64
	body := bytes.Repeat([]byte("s"), b.o.size)
	for lo := 0; lo < n; lo += 10 {
		g.Go(func() error {
			var evs []testenv.Event
			for i := lo; i < min(lo+10, n); i++ {
				ev, err := pub.Put(gctx, b.src, b.bucket, fmt.Sprintf("obj/%07d", i), body)
				if err != nil {
					return err
				}
				evs = append(evs, ev)
			}
			done.Add(int64(len(evs)))
			return pub.Send(gctx, bodies(evs)...)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	fmt.Printf("filled in %.0fs\n\n", time.Since(start).Seconds())

	if err := testenv.CreateBucket(ctx, b.dst, "scale-sr", true); err != nil {
		return err
	}
	cfg, listen, err := b.config("scale-sr", queueURL)
	if err != nil {
		return err
	}
	d, _, err := b.startDaemon(cfg, listen)
	if err != nil {
		return err
	}
	pid := d.cmd.Process.Pid
	t0 := time.Now()
	cpu0, _ := proc(pid)
	type tenth struct {
		at  time.Duration
		cpu time.Duration
	}
	var tenths []tenth
	status := map[int]time.Duration{}
	var peak int64
	profiling := false
	for {
		text := testenv.Scrape(listen)
		got := int(metric(text, `s3replicad_replicated_objects_total{rule="scale"}`))
		cpu, hwm := proc(pid)
		peak = max(peak, hwm)
		for len(tenths) < 10 && got >= (len(tenths)+1)*n/10 {
			tenths = append(tenths, tenth{time.Since(t0), cpu - cpu0})
		}
		if b.o.profile != "" && !profiling && got >= n/5 {
			profiling = true
			go func() {
				socket := filepath.Join(filepath.Dir(cfg), "state", "admin.sock")
				if _, err := os.Stat(socket); err != nil {
					// A build older than the admin socket (-bin) served
					// profiles on listen.
					fetchFromListen(listen, "profile?seconds=10", b.o.profile)
					return
				}
				_ = testenv.FetchProfile(socket, "profile?seconds=10", b.o.profile)
			}()
		}
		for _, pct := range []int{25, 50, 75} {
			if _, ok := status[pct]; !ok && got >= pct*n/100 {
				if status[pct], err = b.statusTime(cfg); err != nil {
					return err
				}
			}
		}
		if len(tenths) == 10 {
			break
		}
		if time.Since(t0) > 2*time.Hour || ctx.Err() != nil {
			return errors.New("not drained")
		}
		time.Sleep(50 * time.Millisecond)
	}
	wall := time.Since(t0)
	cpuTotal := tenths[9].cpu
	if err := d.stop(); err != nil {
		return fmt.Errorf("daemon exit: %w", err)
	}
	statePath := filepath.Join(filepath.Dir(cfg), "state", checkpoint.FileName)
	fi, err := os.Stat(statePath)
	if err != nil {
		return err
	}
	d, restart, err := b.startDaemon(cfg, listen)
	if err != nil {
		return err
	}
	restartStatus, err := b.statusTime(cfg)
	if err != nil {
		return err
	}
	_ = d.stop()

	fmt.Printf("s3replicad drained %d objects in %.1fs: %.0f objects/s, %.2f ms CPU per object, peak RSS %.1f MiB\n",
		n, wall.Seconds(), float64(n)/wall.Seconds(), cpuTotal.Seconds()*1000/float64(n), float64(peak)/(1<<20))
	fmt.Printf("  %-6s %12s %16s\n", "tenth", "objects/s", "CPU ms/object")
	var cheapest, dearest float64
	prev := tenth{}
	for i, t := range tenths {
		objs := float64(n / 10)
		rate := objs / (t.at - prev.at).Seconds()
		per := (t.cpu - prev.cpu).Seconds() * 1000 / objs
		if i == 0 || per < cheapest {
			cheapest = per
		}
		dearest = max(dearest, per)
		fmt.Printf("  %-6d %12.0f %16.3f\n", i+1, rate, per)
		prev = t
	}
	fmt.Printf("  CPU per object, dearest tenth / cheapest: %.2fx\n", dearest/cheapest)
	fmt.Printf("  status -json while draining: %v at 25%%, %v at 50%%, %v at 75%%\n",
		status[25].Round(time.Millisecond), status[50].Round(time.Millisecond), status[75].Round(time.Millisecond))
	fmt.Printf("  state file: %.1f MiB, %.0f bytes per operation\n", float64(fi.Size())/(1<<20), float64(fi.Size())/float64(n))
	fmt.Printf("  restart to ready with %d finished operations: %v; status then %v\n\n", n, restart.Round(time.Millisecond), restartStatus.Round(time.Millisecond))

	if !b.o.skipRC {
		rc, err := b.rclone(ctx)
		if err != nil {
			return err
		}
		fmt.Printf("rclone copied %d objects in %.1fs: %.0f objects/s\n", n, rc.Seconds(), float64(n)/rc.Seconds())
		fmt.Printf("  s3replicad / rclone objects/s: %.2fx\n\n", rc.Seconds()/wall.Seconds())
	}
	return nil
}

func bodies(evs []testenv.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = testenv.S3Body(ev)
	}
	return out
}

func (b *scale) rclone(ctx context.Context) (time.Duration, error) {
	if err := testenv.CreateBucket(ctx, b.dst, "scale-rc", true); err != nil {
		return 0, err
	}
	conf := filepath.Join(b.dir, "rclone.conf")
	if err := os.WriteFile(conf, nil, 0o600); err != nil {
		return 0, err
	}
	cmd := b.env.Rclone(ctx, conf, "copy", "src:"+b.bucket, "dst:scale-rc", "--transfers", "32", "--checkers", "32")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("rclone: %w\n%s", err, out.String())
	}
	return time.Since(start), nil
}

// stateScale records stateOps finished operations with the daemon's own
// state code, then runs a daemon on the file.
func (b *scale) stateScale(ctx context.Context) error {
	m := b.o.stateOps
	queueURL, err := b.env.CreateQueue(ctx, "state-scale", 5)
	if err != nil {
		return err
	}
	if err := testenv.CreateBucket(ctx, b.dst, "state-scale", true); err != nil {
		return err
	}
	cfg, listen, err := b.config("state-scale", queueURL)
	if err != nil {
		return err
	}
	stateDir := filepath.Join(filepath.Dir(cfg), "state")
	fmt.Printf("recording %d operations in a state file...\n", m)
	start := time.Now()
	st, err := checkpoint.Open(stateDir, checkpoint.Options{})
	if err != nil {
		return err
	}
	now := time.Now()
	const batch = 10000
	for lo := 0; lo < m; lo += batch {
		ops := make([]*engine.Op, 0, batch)
		for i := lo; i < min(lo+batch, m); i++ {
			key := fmt.Sprintf("obj/%07d", i)
			ops = append(ops, &engine.Op{Rule: "scale", Bucket: b.bucket, Key: key, VersionID: fmt.Sprintf("01J%023d", i),
				Sequencer: fmt.Sprintf("0065%014X", i), ETag: "5d41402abc4b2a76b9719d911017c592", Size: 1024,
				Action: engine.ActionCopy, Origin: engine.OriginEvent, Dest: "d", DestBucket: "state-scale", DestKey: key,
				EventTime: now, Recorded: now, State: engine.Pending})
		}
		if _, err := st.Record(ctx, ops); err != nil {
			return err
		}
		for _, op := range ops {
			op.State, op.Finished, op.Replica = engine.Completed, time.Now(), fmt.Sprintf("01K%023d", op.Seq)
		}
		if err := st.SaveAll(ctx, ops); err != nil {
			return err
		}
	}
	size, err := st.Size()
	if err != nil {
		return err
	}
	st.Close()
	fmt.Printf("recorded in %.0fs\n", time.Since(start).Seconds())

	var restarts, statuses []time.Duration
	for range 3 {
		d, ready, err := b.startDaemon(cfg, listen)
		if err != nil {
			return err
		}
		restarts = append(restarts, ready)
		for range 3 {
			t, err := b.statusTime(cfg)
			if err != nil {
				_ = d.stop()
				return err
			}
			statuses = append(statuses, t)
		}
		if err := d.stop(); err != nil {
			return fmt.Errorf("daemon exit: %w", err)
		}
	}
	fmt.Printf("state file with %d operations: %.1f MiB, %.0f bytes per operation\n", m, float64(size)/(1<<20), float64(size)/float64(m))
	fmt.Printf("  restart to ready: median %v of %d\n", median(restarts).Round(time.Millisecond), len(restarts))
	fmt.Printf("  status -json while the daemon runs: median %v of %d (the command's whole run: process start, config, socket)\n",
		median(statuses).Round(time.Millisecond), len(statuses))
	return nil
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
