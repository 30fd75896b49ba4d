// Command demo shows s3replicad end to end on local servers: it starts a
// source and a destination S3 server and an SQS server, writes objects and
// the events S3 would send, runs the daemon, and prints what arrived.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/s3replicad/s3replicad/internal/testenv"
)

func main() {
	if err := run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	root, err := testenv.Root()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "s3replicad-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	step("starting local S3 (source, destination) and SQS servers")
	env, err := testenv.Start(filepath.Join(dir, "servers"))
	if err != nil {
		return err
	}
	defer env.Close()
	src, dst := testenv.S3(env.Source), testenv.S3(env.Destination)
	if err := testenv.CreateBucket(ctx, src, "photos", true); err != nil {
		return err
	}
	if err := testenv.CreateBucket(ctx, dst, "photos-dr", true); err != nil {
		return err
	}
	queueURL, err := env.CreateQueue(ctx, "s3-events", 5)
	if err != nil {
		return err
	}
	fmt.Printf("   source %s  destination %s  queue %s\n", env.Source, env.Destination, queueURL)

	listen, err := testenv.FreeAddr()
	if err != nil {
		return err
	}
	cfgPath := filepath.Join(dir, "config.yaml")
	cfg := fmt.Sprintf(`state_dir: %s
listen: %s
queue: {url: %s, endpoint: %s, access_key_id: %s, secret_access_key: %s, wait_time: 1s}
source: {endpoint: %s, path_style: true, access_key_id: %s, secret_access_key: %s}
destinations:
  - {name: dr, endpoint: %s, path_style: true, access_key_id: %s, secret_access_key: %s}
rules:
  - {id: photos, priority: 1, source_bucket: photos, destination: dr, destination_bucket: photos-dr, replicate_delete_markers: true}
transfer: {part_size: 5MiB, multipart_threshold: 8MiB}
`, filepath.Join(dir, "state"), listen, queueURL, env.SQS, testenv.AccessKey, testenv.SecretKey,
		env.Source, testenv.AccessKey, testenv.SecretKey, env.Destination, testenv.AccessKey, testenv.SecretKey)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}

	step("writing objects to the source and publishing the events S3 would send")
	pub := env.Publisher(queueURL)
	var evs []testenv.Event
	put := func(key, body string, opts ...func(*s3.PutObjectInput)) error {
		ev, err := pub.Put(ctx, src, "photos", key, []byte(body), opts...)
		evs = append(evs, ev)
		fmt.Printf("   put %-28q version %s\n", key, ev.VersionID)
		return err
	}
	for _, p := range []struct{ k, b string }{
		{"2026/beach.jpg", "jpeg bytes"}, {"2026/red flower+1.jpg", "petals"}, {"notes/readme.txt", "version 1"},
	} {
		if err := put(p.k, p.b, func(in *s3.PutObjectInput) { in.ContentType = aws.String("image/jpeg") }); err != nil {
			return err
		}
	}
	if err := put("notes/readme.txt", "version 2", func(in *s3.PutObjectInput) {
		in.Metadata = map[string]string{"author": "demo"}
		in.Tagging = aws.String("team=ops")
	}); err != nil {
		return err
	}
	if err := put("video/big.bin", strings.Repeat("v", 20<<20)); err != nil {
		return err
	}
	dm, err := pub.DeleteMarker(ctx, src, "photos", "2026/beach.jpg")
	if err != nil {
		return err
	}
	evs = append(evs, dm)
	fmt.Printf("   delete %q (a delete marker)\n", "2026/beach.jpg")
	if err := pub.Send(ctx, testenv.TestEventBody("photos"), testenv.S3Body(evs...)); err != nil {
		return err
	}

	step("running: s3replicad run -config " + cfgPath)
	daemon := exec.Command(filepath.Join(root, "bin", "s3replicad"), "run", "-config", cfgPath)
	logf, err := os.Create(filepath.Join(dir, "daemon.log"))
	if err != nil {
		return err
	}
	daemon.Stdout, daemon.Stderr = logf, logf
	if err := daemon.Start(); err != nil {
		return fmt.Errorf("start daemon (run `make build` first): %w", err)
	}
	defer func() { _ = daemon.Process.Kill() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if m := testenv.Scrape(listen); strings.Contains(m, `s3replicad_replicated_objects_total{rule="photos"} 6`) {
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			return fmt.Errorf("replication did not finish in 60s; daemon log:\n%s", log)
		}
		time.Sleep(200 * time.Millisecond)
	}

	step("destination bucket photos-dr (all versions)")
	out, err := dst.ListObjectVersions(ctx, &s3.ListObjectVersionsInput{Bucket: aws.String("photos-dr")})
	if err != nil {
		return err
	}
	for _, v := range out.Versions {
		fmt.Printf("   %-24s %9d bytes  latest=%-5v etag=%s\n", aws.ToString(v.Key), aws.ToInt64(v.Size), aws.ToBool(v.IsLatest), aws.ToString(v.ETag))
	}
	for _, m := range out.DeleteMarkers {
		fmt.Printf("   %-24s delete marker  latest=%v\n", aws.ToString(m.Key), aws.ToBool(m.IsLatest))
	}

	step("status")
	st := exec.Command(filepath.Join(root, "bin", "s3replicad"), "status", "-config", cfgPath)
	st.Stdout, st.Stderr = os.Stdout, os.Stderr
	_ = st.Run()

	step("metrics (http://" + listen + "/metrics, excerpt)")
	for _, line := range strings.Split(testenv.Scrape(listen), "\n") {
		if strings.HasPrefix(line, "s3replicad_") && !strings.Contains(line, "_bucket{") && !strings.HasSuffix(line, " 0") {
			fmt.Println("   " + line)
		}
	}
	step("stopping the daemon with SIGTERM")
	_ = daemon.Process.Signal(syscall.SIGTERM)
	if err := daemon.Wait(); err != nil {
		return fmt.Errorf("daemon exit: %w", err)
	}
	fmt.Println("   stopped cleanly. Next: `make test`, then README.md for the real-world setup.")
	return nil
}

func step(s string) { fmt.Printf("\n==> %s\n", s) }
