package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/s3replicad/s3replicad/internal/testenv"
)

func sha256Of(t *testing.T, r io.Reader) string {
	h := sha256.New()
	_, err := io.Copy(h, r)
	must(t, err)
	return hex.EncodeToString(h.Sum(nil))
}

// destSHA256 hashes the current destination version of key as it streams.
func (w *world) destSHA256(key string) string {
	out, err := w.dst.GetObject(w.ctx, &s3.GetObjectInput{Bucket: &w.dstBucket, Key: &key})
	must(w.t, err)
	defer out.Body.Close()
	return sha256Of(w.t, out.Body)
}

// kill -9 half way through a 1 GiB multipart copy while small copies are
// in flight, then restart: everything arrives exactly once with identical
// bytes, and the copy resumes from its recorded parts: the source bytes
// read again are at most the unfinished remainder plus one part per slot.
func TestKill9MidCopyAndRestart(t *testing.T) {
	t.Parallel()
	const (
		size      = 1 << 30
		partSize  = 16 << 20
		slots     = 4
		smallOnes = 40
	)
	w := newWorld(t, worldOpts{transfer: fmt.Sprintf("  workers: 4\n  part_size: 16MiB\n  multipart_threshold: 32MiB\n  part_concurrency: %d\n", slots)})
	out, err := w.src.PutObject(w.ctx, &s3.PutObjectInput{Bucket: &w.srcBucket, Key: aws.String("big.bin"),
		Body: testenv.NewSynthetic(size, 7), ContentLength: aws.Int64(size)})
	must(t, err)
	bigEv := testenv.Event{Name: "ObjectCreated:Put", Bucket: w.srcBucket, Key: "big.bin", VersionID: aws.ToString(out.VersionId),
		ETag: strings.Trim(aws.ToString(out.ETag), `"`), Size: size, Sequencer: w.pub.Sequencer()}
	evs := []testenv.Event{bigEv}
	for i := 0; i < smallOnes; i++ {
		evs = append(evs, w.put(fmt.Sprintf("small/%03d", i), []byte(fmt.Sprintf("small object %d", i))))
	}
	must(t, w.pub.SendEvents(w.ctx, evs...))
	d := w.start()
	var before float64
	waitFor(t, 120*time.Second, "the big copy to be half way", func() bool {
		before = d.metric("s3replicad_source_bytes_read_total")
		return before >= size/2
	})
	d.kill()
	if before >= size {
		t.Fatalf("the copy finished before the kill (%v bytes read)", before)
	}

	d2 := w.start()
	for _, ev := range evs {
		w.waitReplicated(ev.Key, ev.VersionID, 180*time.Second)
	}
	if got, want := w.destSHA256("big.bin"), sha256Of(t, testenv.NewSynthetic(size, 7)); got != want {
		t.Fatalf("big.bin differs after the restart")
	}
	for _, ev := range evs {
		if vs, _ := w.destVersions(ev.Key); len(vs) != 1 {
			t.Errorf("%s has %d destination versions after kill -9, want exactly 1", ev.Key, len(vs))
		}
	}
	// Small objects may be read again whole; they are tiny.
	bound := size - before + slots*partSize + smallOnes*64
	if again := d2.metric("s3replicad_source_bytes_read_total"); again > bound {
		t.Errorf("after restart the daemon read %.0f source bytes again; at most %.0f (remainder %.0f + %d parts of %d) allowed",
			again, bound, size-before, slots, partSize)
	} else {
		t.Logf("read %.0f bytes before the kill, %.0f after (bound %.0f)", before, again, bound)
	}
	st := w.status()
	if st.Counts["completed"] != len(evs) || st.Counts["pending"]+st.Counts["in_flight"] != 0 {
		t.Fatalf("status after drain: %v", st.Counts)
	}
	d2.stop()
}

// A permanent failure (the destination bucket is missing) becomes failed
// with its reason, shows in status, and retry puts it back: both through a
// running daemon and on the state file directly.
func TestFailedStatusAndRetry(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{})
	// Point the rule at a bucket that does not exist yet.
	missing := uniqueName("late")
	raw, err := os.ReadFile(w.configPath)
	must(t, err)
	must(t, os.WriteFile(w.configPath, []byte(strings.Replace(string(raw), "destination_bucket: "+w.dstBucket, "destination_bucket: "+missing, 1)), 0o600))
	d := w.start()
	a := w.put("a", []byte("a"))
	b := w.put("b", []byte("b"))
	must(t, w.pub.SendEvents(w.ctx, a, b))
	waitFor(t, 30*time.Second, "two failed operations", func() bool { return w.status().Counts["failed"] == 2 })
	st := w.status()
	if !st.DaemonRunning || len(st.Failed) != 2 || st.Failed[0].Reason != "no_such_bucket" || st.Failed[0].Error == "" {
		t.Fatalf("status: %+v", st)
	}
	if d.metric("s3replicad_operations_failed_total", "reason", "no_such_bucket") != 2 {
		t.Errorf("failed_total{no_such_bucket} != 2")
	}
	human, _, _ := w.cli("status")
	if !strings.Contains(human, "failed:          2") || !strings.Contains(human, "no_such_bucket") {
		t.Errorf("status output does not show the failures:\n%s", human)
	}
	for _, forbidden := range []string{testenv.SecretKey} {
		if strings.Contains(human, forbidden) || strings.Contains(d.logs.String(), forbidden) {
			t.Fatalf("a secret leaked into status or logs")
		}
	}

	// Fix the cause, retry one key through the running daemon.
	must(t, testenv.CreateBucket(w.ctx, w.dst, missing, true))
	w.dstBucket = missing
	out, errOut, code := w.cli("retry", "a")
	if code != 0 || !strings.Contains(out, "retried 1") {
		t.Fatalf("retry a: exit %d, %s %s", code, out, errOut)
	}
	w.waitReplicated("a", a.VersionID, 30*time.Second)
	d.stop()

	// Daemon stopped: retry works on the state file; the next run copies it.
	out, errOut, code = w.cli("retry", "-all")
	if code != 0 || !strings.Contains(out, "retried 1") {
		t.Fatalf("retry -all offline: exit %d, %s %s", code, out, errOut)
	}
	if st := w.status(); st.DaemonRunning || st.Counts["pending"] != 1 {
		t.Fatalf("offline status after retry: %+v", st)
	}
	d = w.start()
	w.waitReplicated("b", b.VersionID, 30*time.Second)
	d.stop()
	if _, _, code := w.cli("retry"); code != 2 {
		t.Errorf("retry without -all or keys exited %d, want 2", code)
	}
}

func TestCheckConfig(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{})
	out, errOut, code := w.cli("check-config")
	if code != 0 {
		t.Fatalf("check-config on a good setup: exit %d\n%s\n%s", code, out, errOut)
	}

	write := func(name, content string) string {
		p := filepath.Join(w.dir, name)
		must(t, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	good, _ := os.ReadFile(w.configPath)
	run := func(cfg string) (string, int) {
		_, errOut, code := w.cliWith(cfg, "check-config")
		return errOut, code
	}

	// Unknown key: named with its line.
	bad := write("unknown.yaml", strings.Replace(string(good), "  wait_time: 1s", "  wait_time: 1s\n  wiat_time: 2s", 1))
	if msg, code := run(bad); code != 2 || !strings.Contains(msg, `unknown key "wiat_time"`) || !strings.Contains(msg, "line 12") {
		t.Errorf("unknown key: exit %d, %q", code, msg)
	}
	// Missing bucket, unversioned destination, unreachable queue.
	missing := write("missing.yaml", strings.Replace(string(good), w.srcBucket, "no-such-bucket-here", 1))
	if msg, code := run(missing); code != 2 || !strings.Contains(msg, "no-such-bucket-here: does not exist") {
		t.Errorf("missing bucket: exit %d, %q", code, msg)
	}
	plain := "plain-" + uniqueName("b")
	must(t, testenv.CreateBucket(w.ctx, testenv.S3(env.Unversioned), plain, false))
	unv := write("unversioned.yaml", strings.Replace(strings.Replace(string(good), env.Destination, env.Unversioned, 1), w.dstBucket, plain, 1))
	if msg, code := run(unv); code != 2 || !strings.Contains(msg, "versioning is not enabled") {
		t.Errorf("unversioned destination: exit %d, %q", code, msg)
	}
	noQueue := write("noqueue.yaml", strings.ReplaceAll(string(good), env.SQS, "http://127.0.0.1:1"))
	if msg, code := run(noQueue); code != 2 || !strings.Contains(msg, "queue.url") || strings.Count(strings.TrimSpace(msg), "\n") != 0 {
		t.Errorf("unreachable queue: exit %d, %q", code, msg)
	}
	// Unset variable: named. Secrets never printed.
	_, errOut, code = w.cliEnv(w.configPath, []string{"TEST_AK=" + testenv.AccessKey}, "check-config")
	if code != 2 || !strings.Contains(errOut, "TEST_SK is not set") {
		t.Errorf("unset variable: exit %d, %q", code, errOut)
	}
	if strings.Contains(out+errOut, testenv.SecretKey) {
		t.Errorf("check-config printed a secret")
	}
}

func TestGracefulShutdownFinishesInFlightCopy(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{transfer: "  workers: 2\n  part_size: 5MiB\n  multipart_threshold: 5MiB\n  part_concurrency: 1\n"})
	data := make([]byte, 30<<20)
	_, _ = rand.Read(data)
	ev := w.put("slow.bin", data)
	must(t, w.pub.SendEvents(w.ctx, ev))
	d := w.start()
	waitFor(t, 30*time.Second, "copy under way", func() bool { return d.metric("s3replicad_source_bytes_read_total") > 0 })
	start := time.Now()
	d.stop() // requires exit 0
	if time.Since(start) > 15*time.Second {
		t.Errorf("shutdown took %v", time.Since(start))
	}
	// Either it finished before exiting or it resumes; after a restart the
	// object is there exactly once.
	d = w.start()
	w.waitReplicated("slow.bin", ev.VersionID, 60*time.Second)
	if vs, _ := w.destVersions("slow.bin"); len(vs) != 1 {
		t.Fatalf("%d destination versions", len(vs))
	}
	d.stop()
}
