// Command benchrestore measures `s3replicad restore` side by side with the
// two things it should be at least as fast as (`make bench` runs it after
// the replication benchmark): `s3replicad backfill` of the same objects
// from the source to the replica, and rclone copying the replica bucket's
// current objects into another bucket. All three move the same bytes
// between the same two local S3 servers (over TLS by default, as in
// production), in alternating order over several rounds; it prints the
// median seconds of each and the ratios.
package main

import (
	"context"
	"flag"
	"fmt"
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

	"github.com/s3replicad/s3replicad/internal/testenv"
)

type options struct {
	objects int
	size    int
	rounds  int
	plain   bool
	rclone  bool
}

func main() {
	var o options
	flag.IntVar(&o.objects, "objects", 1000, "objects to copy")
	flag.IntVar(&o.size, "size", 64<<10, "bytes per object")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds (median reported)")
	flag.BoolVar(&o.plain, "plain", false, "plain HTTP instead of TLS")
	flag.BoolVar(&o.rclone, "rclone", true, "measure rclone too")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench-restore:", err)
		os.Exit(1)
	}
}

type bench struct {
	o   options
	dir string
	bin string
	env *testenv.Env
	src *s3.Client
	dst *s3.Client
}

func run(ctx context.Context, o options) error {
	root, err := testenv.Root()
	if err != nil {
		return err
	}
	b := &bench{o: o, bin: filepath.Join(root, "bin", "s3replicad")}
	if _, err := os.Stat(b.bin); err != nil {
		return fmt.Errorf("%s missing: run `make build`", b.bin)
	}
	if o.rclone {
		if _, err := exec.LookPath("rclone"); err != nil {
			return fmt.Errorf("rclone not on PATH (Debian: apt-get install rclone), or pass -rclone=false")
		}
	}
	if b.dir, err = os.MkdirTemp("", "s3replicad-benchrestore-"); err != nil {
		return err
	}
	defer os.RemoveAll(b.dir)
	start := testenv.StartTLS
	if o.plain {
		start = testenv.Start
	}
	if b.env, err = start(filepath.Join(b.dir, "servers")); err != nil {
		return err
	}
	defer b.env.Close()
	b.src, b.dst = b.env.S3(b.env.Source), b.env.S3(b.env.Destination)
	if err := os.WriteFile(filepath.Join(b.dir, "rclone.conf"), nil, 0o600); err != nil {
		return err
	}
	scheme := "TLS"
	if o.plain {
		scheme = "plain HTTP"
	}
	fmt.Printf("bench-restore: %d objects of %d KiB, %s, %d rounds (medians), alternating order\n", o.objects, o.size>>10, scheme, o.rounds)

	// The source bucket, written once.
	if err := testenv.CreateBucket(ctx, b.src, "br-src", true); err != nil {
		return err
	}
	body := make([]byte, o.size)
	for i := 0; i < o.objects; i++ {
		body[0], body[1] = byte(i), byte(i>>8)
		key := fmt.Sprintf("obj/%05d", i)
		if _, err := b.src.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("br-src"), Key: &key,
			Body: strings.NewReader(string(body)), ContentType: aws.String("application/octet-stream")}); err != nil {
			return err
		}
	}
	times := map[string][]time.Duration{}
	for r := 0; r < o.rounds; r++ {
		// backfill fills this round's replica bucket; restore and rclone
		// read it.
		replica, err := b.backfill(ctx, r, times)
		if err != nil {
			return err
		}
		tools := []string{"restore", "rclone"}
		if r%2 == 1 {
			slices.Reverse(tools)
		}
		for _, tool := range tools {
			if tool == "rclone" && !o.rclone {
				continue
			}
			_ = exec.Command("sync").Run()
			var d time.Duration
			if tool == "restore" {
				d, err = b.restore(ctx, r, replica)
			} else {
				d, err = b.rclone(ctx, r, replica)
			}
			if err != nil {
				return err
			}
			times[tool] = append(times[tool], d)
		}
	}
	med := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2]
	}
	mb := float64(o.objects*o.size) / (1 << 20)
	for _, tool := range []string{"backfill", "restore", "rclone"} {
		if len(times[tool]) == 0 {
			continue
		}
		m := med(times[tool])
		fmt.Printf("  %-9s %6.2f s  %7.1f objects/s  %6.1f MiB/s\n", tool, m.Seconds(), float64(o.objects)/m.Seconds(), mb/m.Seconds())
	}
	fmt.Printf("  restore speed: %.2fx backfill", med(times["backfill"]).Seconds()/med(times["restore"]).Seconds())
	if len(times["rclone"]) > 0 {
		fmt.Printf(", %.2fx rclone copying the replica's current objects", med(times["rclone"]).Seconds()/med(times["restore"]).Seconds())
	}
	fmt.Println()
	return nil
}

// config writes a configuration replicating br-src to replica.
func (b *bench) config(name, replica string) (string, error) {
	dir := filepath.Join(b.dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	listen, err := testenv.FreeAddr()
	if err != nil {
		return "", err
	}
	ca := ""
	if b.env.TLS != nil {
		ca = ", ca_file: " + b.env.TLS.CAFile
	}
	ak, sk := testenv.AccessKey, testenv.SecretKey
	cfg := fmt.Sprintf(`state_dir: %s
listen: %s
log: {level: warn}
queue: {url: http://127.0.0.1:1/000000000000/unused, endpoint: %s, access_key_id: %s, secret_access_key: %s}
source: {endpoint: %s, path_style: true, access_key_id: %s, secret_access_key: %s%s}
destinations:
  - {name: d, endpoint: %s, path_style: true, access_key_id: %s, secret_access_key: %s%s}
rules:
  - {id: all, source_bucket: br-src, destination: d, destination_bucket: %s}
`, filepath.Join(dir, "state"), listen, b.env.SQS, ak, sk, b.env.Source, ak, sk, ca, b.env.Destination, ak, sk, ca, replica)
	path := filepath.Join(dir, "config.yaml")
	return path, os.WriteFile(path, []byte(cfg), 0o600)
}

func (b *bench) backfill(ctx context.Context, r int, times map[string][]time.Duration) (string, error) {
	replica := fmt.Sprintf("br-replica-%d", r)
	if err := testenv.CreateBucket(ctx, b.dst, replica, true); err != nil {
		return "", err
	}
	cfg, err := b.config(fmt.Sprintf("round-%d", r), replica)
	if err != nil {
		return "", err
	}
	_ = exec.Command("sync").Run()
	start := time.Now()
	if out, err := exec.CommandContext(ctx, b.bin, "backfill", "-config", cfg).CombinedOutput(); err != nil {
		return "", fmt.Errorf("backfill: %v: %s", err, out)
	}
	times["backfill"] = append(times["backfill"], time.Since(start))
	return replica, b.check(ctx, b.dst, replica)
}

func (b *bench) restore(ctx context.Context, r int, replica string) (time.Duration, error) {
	cfg := filepath.Join(b.dir, fmt.Sprintf("round-%d", r), "config.yaml")
	target := fmt.Sprintf("br-restored-%d", r)
	start := time.Now()
	if out, err := exec.CommandContext(ctx, b.bin, "restore", "-config", cfg, "-rule", "all", "-to-bucket", target).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("restore: %v: %s", err, out)
	}
	d := time.Since(start)
	return d, b.check(ctx, b.src, target)
}

func (b *bench) rclone(ctx context.Context, r int, replica string) (time.Duration, error) {
	target := fmt.Sprintf("br-rclone-%d", r)
	if err := testenv.CreateBucket(ctx, b.src, target, true); err != nil {
		return 0, err
	}
	cmd := b.env.Rclone(ctx, filepath.Join(b.dir, "rclone.conf"), "copy", "dst:"+replica, "src:"+target,
		"--transfers", "32", "--checkers", "32", "--s3-upload-concurrency", "8", "--s3-chunk-size", "16M")
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("rclone: %v: %s", err, out)
	}
	d := time.Since(start)
	return d, b.check(ctx, b.src, target)
}

// check requires every object in bucket.
func (b *bench) check(ctx context.Context, c *s3.Client, bucket string) error {
	n := 0
	p := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: aws.String(bucket)})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return err
		}
		n += len(out.Contents)
	}
	if n != b.o.objects {
		return fmt.Errorf("%s holds %d objects, want %d", bucket, n, b.o.objects)
	}
	return nil
}
