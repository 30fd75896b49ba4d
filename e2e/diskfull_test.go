package e2e

import (
	"errors"
	"fmt"
	"io"
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

	"github.com/s3replicad/s3replicad/internal/faultproxy"
	"github.com/s3replicad/s3replicad/internal/testenv"
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

// queueDepth counts the queue's messages, visible, in flight and delayed:
// local-aws-sqs holds a message just sent as delayed for a moment (longer
// on a busy machine), in neither of the other two counts.
func (w *world) queueDepth() int {
	w.t.Helper()
	out, err := env.SQSClient().GetQueueAttributes(w.ctx, &sqs.GetQueueAttributesInput{QueueUrl: &w.queueURL,
		AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameApproximateNumberOfMessages,
			sqstypes.QueueAttributeNameApproximateNumberOfMessagesNotVisible, sqstypes.QueueAttributeNameApproximateNumberOfMessagesDelayed}})
	must(w.t, err)
	n := 0
	for _, a := range []string{"ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesDelayed"} {
		v, _ := strconv.Atoi(out.Attributes[a])
		n += v
	}
	return n
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
	if !d.logged("disk is full") {
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

// dlqDepth is the number of messages the queue's redrive policy moved to
// its dead-letter queue.
func (w *world) dlqDepth() int {
	w.t.Helper()
	dlq := w.queueURL + "-dlq"
	out, err := env.SQSClient().GetQueueAttributes(w.ctx, &sqs.GetQueueAttributesInput{QueueUrl: &dlq,
		AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameApproximateNumberOfMessages, sqstypes.QueueAttributeNameApproximateNumberOfMessagesNotVisible}})
	must(w.t, err)
	a, _ := strconv.Atoi(out.Attributes["ApproximateNumberOfMessages"])
	b, _ := strconv.Atoi(out.Attributes["ApproximateNumberOfMessagesNotVisible"])
	return a + b
}

// A full state disk while a backlog waits for a destination that is down,
// with versions still being written: intake and copies stay paused for the
// whole time the disk is full (the metric, /readyz and status say so at
// every look, and the pause is announced once), the paused daemon does not
// keep receiving the same messages, and once space and the destination
// return every version is replicated and no message went to the
// dead-letter queue (redrive after 5 receives, as the README suggests).
func TestStateDiskFullSendsNothingToTheDLQ(t *testing.T) {
	t.Parallel()
	dir := smallDisk(t, "8m")
	proxy, err := faultproxy.Start(env.Destination)
	must(t, err)
	t.Cleanup(proxy.Close)
	w := newWorld(t, worldOpts{stateDir: dir, rules: markerRules, maxReceives: 5, dstEndpoint: proxy.URL()})
	proxy.Set(faultproxy.Fault{Kind: faultproxy.Refuse})
	d := w.start()

	var keys []string
	put := func(i int) {
		k := fmt.Sprintf("k%02d", i)
		keys = append(keys, k)
		must(t, w.pub.SendEvents(w.ctx, w.put(k, []byte(strings.Repeat("x", 100+i)))))
	}
	for i := range 20 {
		put(i)
	}
	waitFor(t, 30*time.Second, "the backlog to be recorded", func() bool {
		counts, err := w.statusCounts()
		return err == nil && counts["pending"]+counts["in_flight"] == 20 && w.queueDepth() == 0
	})

	filler := fillDisk(t, dir)
	for i := 20; i < 45; i++ {
		put(i)
		time.Sleep(200 * time.Millisecond)
	}
	waitFor(t, 30*time.Second, "intake to pause", func() bool { return d.metric("s3replicad_intake_paused") == 1 })
	// The pause holds for as long as the disk is full: look often.
	for i := range 40 {
		if v := d.metric("s3replicad_intake_paused"); v != 1 {
			t.Fatalf("sample %d: s3replicad_intake_paused is %v while the disk is still full", i, v)
		}
		if i%8 == 0 {
			out, _, code := w.cli("status", "-json")
			if code != 0 || !strings.Contains(out, `"intake_paused": true`) {
				t.Fatalf("sample %d: status during the pause (exit %d): %s", i, code, out)
			}
			resp, err := http.Get("http://" + d.listen + "/readyz")
			must(t, err)
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("sample %d: /readyz answers %d while the state disk is full", i, resp.StatusCode)
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	logs := d.logs.String()
	if n := strings.Count(logs, "the state file's disk is full: intake and copies are paused"); n != 1 {
		t.Fatalf("the pause was announced %d times, want once (it flapped)", n)
	}
	if strings.Contains(logs, "has space again") {
		t.Fatal("intake resumed while the disk was full")
	}
	if n := w.dlqDepth(); n != 0 {
		t.Fatalf("%d messages in the dead-letter queue during the pause", n)
	}

	must(t, os.Remove(filler))
	must(t, proxy.Clear())
	waitFor(t, 20*time.Second, "intake to resume", func() bool { return d.metric("s3replicad_intake_paused") == 0 })
	took := w.waitExact(keys, 90*time.Second)
	if n := w.dlqDepth(); n != 0 {
		t.Fatalf("%d messages went to the dead-letter queue", n)
	}
	t.Logf("exact replica of %d versions %v after space returned; nothing in the dead-letter queue", len(keys), took.Round(10*time.Millisecond))
	d.stop()
}

// A queue that is missing (deleted, or a wrong queue.url) is no quiet
// retry: an ERROR line that says what to fix, /readyz failing with the
// reason, s3replicad_queue_refused at 1; once the queue exists again, the
// daemon receives by itself and replicates what was sent to it.
func TestMissingQueueIsLoudAndRecovers(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{})
	attrs, err := env.SQSClient().GetQueueAttributes(w.ctx, &sqsAttrsInput{QueueUrl: &w.queueURL, AttributeNames: allAttrs})
	must(t, err)
	redrive := attrs.Attributes["RedrivePolicy"]
	_, err = env.SQSClient().DeleteQueue(w.ctx, &sqs.DeleteQueueInput{QueueUrl: &w.queueURL})
	must(t, err)

	d := w.launch()
	waitFor(t, 30*time.Second, "the refusal reported", func() bool {
		return strings.Contains(testenv.Scrape(d.listen), "s3replicad_queue_refused 1")
	})
	if !d.logged("level=ERROR", "the queue refuses this daemon", "queue.url") {
		t.Fatalf("no ERROR line naming the queue's refusal and queue.url:\n%s", d.logs.String())
	}
	resp, err := http.Get("http://" + d.listen + "/readyz")
	must(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "queue") {
		t.Fatalf("/readyz answers %d %q while the queue is missing", resp.StatusCode, body)
	}

	name := w.queueURL[strings.LastIndex(w.queueURL, "/")+1:]
	_, err = env.SQSClient().CreateQueue(w.ctx, &sqs.CreateQueueInput{QueueName: &name,
		Attributes: map[string]string{"RedrivePolicy": redrive, "VisibilityTimeout": "30"}})
	must(t, err)
	ev := w.put("after", []byte("sent once the queue is back"))
	must(t, w.pub.SendEvents(w.ctx, ev))
	w.waitReplicated("after", ev.VersionID, 90*time.Second)
	if d.metric("s3replicad_queue_refused") != 0 || !d.logged("the queue answers again") {
		t.Fatal("the refusal is still reported after the queue answered")
	}
	d.stop()
}
