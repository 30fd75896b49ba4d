package e2e

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
)

// smallDisk mounts a tmpfs of size bytes: a disk that fills. It needs root,
// which the test machines give; without it the test fails in CI and is
// skipped elsewhere.
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("mounting a small disk needs root")
		}
		t.Skip("mounting a small disk needs root")
	}
	dir := filepath.Join(t.TempDir(), "state")
	must(t, os.MkdirAll(dir, 0o700))
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

// fillDisk writes a file until the disk is full.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	must(t, err)
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			t.Fatal(err)
		}
	}
	for _, n := range []int{4096, 512, 1} {
		for {
			if _, err := f.Write(chunk[:n]); err != nil {
				break
			}
		}
	}
	return path
}

func (w *world) queueDepth() int {
	w.t.Helper()
	out, err := env.SQSClient().GetQueueAttributes(w.ctx, &sqs.GetQueueAttributesInput{QueueUrl: &w.queueURL,
		AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameApproximateNumberOfMessages, sqstypes.QueueAttributeNameApproximateNumberOfMessagesNotVisible}})
	must(w.t, err)
	a, _ := strconv.Atoi(out.Attributes["ApproximateNumberOfMessages"])
	b, _ := strconv.Atoi(out.Attributes["ApproximateNumberOfMessagesNotVisible"])
	return a + b
}

// Guarantee 11: when the state file's disk fills, intake pauses with a log
// line, a metric and a failing /readyz; nothing is deleted from the queue
// that is not recorded; once space returns, everything resumes by itself
// and every version is replicated exactly once.
func TestStateDiskFull(t *testing.T) {
	t.Parallel()
	dir := smallDisk(t, "4m")
	w := newWorld(t, worldOpts{stateDir: dir, rules: markerRules})
	d := w.start()
	filler := fillDisk(t, dir)

	var keys []string
	for i := 0; i < 40; i++ {
		k := fmt.Sprintf("k%02d", i)
		keys = append(keys, k)
		must(t, w.pub.SendEvents(w.ctx, w.put(k, []byte(strings.Repeat("x", 100+i)))))
	}
	waitFor(t, 30*time.Second, "intake to pause", func() bool { return d.metric("s3replicad_intake_paused") == 1 })
	resp, err := http.Get("http://" + d.listen + "/readyz")
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/readyz answers %d while the state disk is full", resp.StatusCode)
	}
	if !strings.Contains(d.logs.String(), "disk is full") {
		t.Fatal("no log line says the disk is full")
	}
	time.Sleep(2 * time.Second) // let intake be paused for a while
	if n := w.queueDepth(); n == 0 {
		t.Fatal("the queue was emptied although the state file could not record the messages")
	}
	counts, _ := w.statusCounts()
	t.Logf("paused with %d messages in the queue and %v in the state file", w.queueDepth(), counts)
	select {
	case <-d.done:
		t.Fatalf("the daemon exited on a full disk: %v", d.err)
	default:
	}

	must(t, os.Remove(filler))
	freed := time.Now()
	waitFor(t, 20*time.Second, "intake to resume", func() bool { return d.metric("s3replicad_intake_paused") == 0 })
	took := w.waitExact(keys, 60*time.Second)
	t.Logf("exact replica %v after space returned (%v after the disk was freed)", took.Round(10*time.Millisecond), time.Since(freed).Round(10*time.Millisecond))
	if n := w.queueDepth(); n != 0 {
		t.Fatalf("%d messages left in the queue", n)
	}
	d.stop()
	// The state file came through the failed writes whole: read offline.
	counts, err = w.statusCounts()
	must(t, err)
	if counts["completed"] != int64(len(keys)) {
		t.Fatalf("state file after the stop: %v, want %d completed", counts, len(keys))
	}
}
