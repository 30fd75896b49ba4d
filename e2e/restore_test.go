package e2e

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/s3replicad/s3replicad/internal/faultproxy"
	"github.com/s3replicad/s3replicad/internal/testenv"
)

// drillObject is one key of the ransomware drill, as its good version was.
type drillObject struct {
	key     string
	good    []byte
	deleted bool
}

func withAttrs(i int) func(*s3.PutObjectInput) {
	return func(in *s3.PutObjectInput) {
		in.ContentType = aws.String("application/pdf")
		in.CacheControl = aws.String("max-age=60")
		in.Metadata = map[string]string{"owner": fmt.Sprintf("user%d", i%7)}
		in.Tagging = aws.String(fmt.Sprintf("class=report&n=%d", i))
	}
}

// restored checks a restored bucket: every key not deleted holds exactly
// one version, with want's bytes, the original headers, metadata and tags,
// and names the replica it came from; deleted keys are absent.
func (w *world) checkRestored(bucket string, objs []drillObject, want func(drillObject) []byte) {
	w.t.Helper()
	for i, o := range objs {
		vs, err := listVersions(w, w.src, bucket, o.key)
		must(w.t, err)
		if o.deleted {
			if len(vs) != 0 {
				w.t.Fatalf("%s was deleted at that time, but restore wrote %d versions of it", o.key, len(vs))
			}
			continue
		}
		if len(vs) != 1 {
			w.t.Fatalf("%s: %d versions in %s, want exactly 1", o.key, len(vs), bucket)
		}
		out, err := w.src.GetObject(w.ctx, &s3.GetObjectInput{Bucket: &bucket, Key: &o.key})
		must(w.t, err)
		body, err := io.ReadAll(out.Body)
		out.Body.Close()
		must(w.t, err)
		if !bytes.Equal(body, want(o)) {
			w.t.Fatalf("%s: restored %q, want %q", o.key, body, want(o))
		}
		if aws.ToString(out.ContentType) != "application/pdf" || aws.ToString(out.CacheControl) != "max-age=60" ||
			out.Metadata["owner"] != fmt.Sprintf("user%d", i%7) || out.Metadata["s3replicad-restored-from"] == "" {
			w.t.Fatalf("%s: restored with headers %q %q and metadata %v", o.key, aws.ToString(out.ContentType), aws.ToString(out.CacheControl), out.Metadata)
		}
		for k := range out.Metadata {
			if strings.HasPrefix(k, "s3replicad-source") {
				w.t.Fatalf("%s: restored object carries the replica's own metadata %s", o.key, k)
			}
		}
		tags, err := w.src.GetObjectTagging(w.ctx, &s3.GetObjectTaggingInput{Bucket: &bucket, Key: &o.key})
		must(w.t, err)
		got := map[string]string{}
		for _, t := range tags.TagSet {
			got[aws.ToString(t.Key)] = aws.ToString(t.Value)
		}
		if got["class"] != "report" || got["n"] != fmt.Sprint(i) {
			w.t.Fatalf("%s: restored tags %v", o.key, got)
		}
	}
}

// The ransomware drill: 300 keys with a good version, a few deleted, then
// every remaining key overwritten a second later by an "encrypted" one,
// whose event comes before the good version's for a third of the keys.
// Once the daemon drains, a restore as of a moment between the two gives
// exactly the good set (byte for byte, with headers, metadata and tags,
// without the deleted keys), verify -restore agrees, and a restore with no
// time gives the encrypted set.
func TestRansomwareDrill(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{rules: markerRules})
	d := w.start()
	const n = 300
	objs := make([]drillObject, n)
	var late []testenv.Event
	var now []testenv.Event
	var keys []string
	for i := range objs {
		o := &objs[i]
		o.key = fmt.Sprintf("docs/%03d.pdf", i)
		o.good = []byte(fmt.Sprintf("good report %d %s", i, strings.Repeat("g", i)))
		keys = append(keys, o.key)
		ev := w.put(o.key, o.good, withAttrs(i))
		if i%3 == 0 {
			late = append(late, ev) // its event comes after the encrypted one's
		} else {
			now = append(now, ev)
		}
	}
	must(t, w.pub.SendEvents(w.ctx, now...))
	for i := 1; i < n; i += 30 {
		objs[i].deleted = true
		ev, err := w.pub.DeleteMarker(w.ctx, w.src, w.srcBucket, objs[i].key)
		must(t, err)
		must(t, w.pub.SendEvents(w.ctx, ev))
	}
	// The deletes reach the replica before the moment restored, as in
	// production a second or so after the source's.
	waitFor(t, 60*time.Second, "the good versions and deletes replicated", func() bool {
		counts, err := w.statusCounts()
		return err == nil && counts["completed"] == int64(len(now)+n/30) && w.queueDepth() == 0
	})
	asOf := time.Now().UTC()
	time.Sleep(1100 * time.Millisecond)

	var encrypted []testenv.Event
	for i := range objs {
		if !objs[i].deleted {
			encrypted = append(encrypted, w.put(objs[i].key, []byte(fmt.Sprintf("ENCRYPTED %d", i)), withAttrs(i)))
		}
	}
	must(t, w.pub.SendEvents(w.ctx, encrypted...))
	time.Sleep(500 * time.Millisecond)
	must(t, w.pub.SendEvents(w.ctx, late...))
	took, missing, tally := w.waitReplica(keys, 120*time.Second)
	if len(missing) > 0 {
		t.Fatalf("%d versions missing from the replica's history, e.g. %s@%s", len(missing), missing[0].key, missing[0].version)
	}
	t.Logf("drained in %v with %d late versions (extra copies %d)", took.Round(10*time.Millisecond), w.lateVersions(), tally.extra())

	good := uniqueName("restored")
	out, errOut, code := w.cli("restore", "-rule", "all", "-as-of", asOf.Format(time.RFC3339Nano), "-to-bucket", good)
	if code != 0 {
		t.Fatalf("restore exit %d: %s\n%s", code, out, errOut)
	}
	t.Logf("restore: %s", strings.TrimSpace(out))
	if !strings.Contains(out, fmt.Sprintf("%d keys", n-n/30)) || !strings.Contains(out, fmt.Sprintf("skipped %d keys: deleted", n/30)) {
		t.Fatalf("restore summary does not say %d keys restored and %d deleted:\n%s", n-n/30, n/30, out)
	}
	w.checkRestored(good, objs, func(o drillObject) []byte { return o.good })
	vout, verr, code := w.cli("verify", "-restore", "-rule", "all", "-as-of", asOf.Format(time.RFC3339Nano), "-bucket", good)
	if code != 0 {
		t.Fatalf("verify -restore exit %d: %s\n%s", code, vout, verr)
	}
	// A second run of the same restore writes nothing.
	if out, errOut, code := w.cli("restore", "-rule", "all", "-as-of", asOf.Format(time.RFC3339Nano), "-to-bucket", good); code != 0 {
		t.Fatalf("restore again: exit %d: %s\n%s", code, out, errOut)
	}
	w.checkRestored(good, objs, func(o drillObject) []byte { return o.good })

	latest := uniqueName("restored")
	if out, errOut, code := w.cli("restore", "-rule", "all", "-to-bucket", latest); code != 0 {
		t.Fatalf("restore of now: exit %d: %s\n%s", code, out, errOut)
	}
	w.checkRestored(latest, objs, func(o drillObject) []byte {
		var i int
		fmt.Sscanf(o.key, "docs/%03d.pdf", &i)
		return []byte(fmt.Sprintf("ENCRYPTED %d", i))
	})
	// The good restore checked against "now" differs: verify says so.
	if out, _, code := w.cli("verify", "-restore", "-rule", "all", "-bucket", good); code != 1 || !strings.Contains(out, "different") {
		t.Fatalf("verify -restore of the good set against now: exit %d, want 1 with differences:\n%s", code, out)
	}
	// Restoring into a bucket that holds objects needs -into-existing.
	if _, errOut, code := w.cli("restore", "-rule", "all", "-prefix", "docs/00", "-to-bucket", latest); code != 2 || !strings.Contains(errOut, "-into-existing") {
		t.Fatalf("restore into a non-empty bucket: exit %d, %s", code, errOut)
	}
	d.stop()
}

// replicated writes n keys and waits until they are replicated.
func (w *world) replicated(n, size int) []drillObject {
	w.t.Helper()
	objs := make([]drillObject, n)
	var evs []testenv.Event
	var keys []string
	for i := range objs {
		objs[i] = drillObject{key: fmt.Sprintf("r/%03d", i), good: randBytes(w, size+i)}
		evs = append(evs, w.put(objs[i].key, objs[i].good, withAttrs(i)))
		keys = append(keys, objs[i].key)
	}
	must(w.t, w.pub.SendEvents(w.ctx, evs...))
	w.waitExact(keys, 90*time.Second)
	return objs
}

// kill -9 of restore at random moments, then the same command again: each
// key restored exactly once, with the right bytes; a further run writes
// nothing.
func TestRestoreKilledAndRerun(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{transfer: "  workers: 2\n"})
	d := w.start()
	objs := w.replicated(120, 20000)
	d.stop()
	target := uniqueName("restored")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for i := 0; i < 4; i++ {
		cmd := exec.Command(binary, "restore", "-config", w.configPath, "-rule", "all", "-to-bucket", target)
		cmd.Env = cliEnv()
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		must(t, cmd.Start())
		time.Sleep(time.Duration(200+rng.IntN(1200)) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	}
	out, errOut, code := w.cli("restore", "-rule", "all", "-to-bucket", target)
	if code != 0 {
		t.Fatalf("restore after kills: exit %d: %s\n%s", code, out, errOut)
	}
	w.checkRestored(target, objs, func(o drillObject) []byte { return o.good })
	if out, errOut, code := w.cli("restore", "-rule", "all", "-to-bucket", target); code != 0 {
		t.Fatalf("restore after it finished: exit %d: %s\n%s", code, out, errOut)
	}
	w.checkRestored(target, objs, func(o drillObject) []byte { return o.good })
}

// The restore's target refuses connections, resets them mid-body and
// answers 500 after writing, in turn: the restore finishes by itself,
// with exactly one restored object per key.
func TestRestoreUnderTargetFaults(t *testing.T) {
	t.Parallel()
	proxy, err := faultproxy.Start(env.Source)
	must(t, err)
	t.Cleanup(proxy.Close)
	w := newWorld(t, worldOpts{srcEndpoint: proxy.URL(), transfer: "  workers: 4\n  stall_timeout: 2s\n"})
	d := w.start()
	objs := w.replicated(60, 30000)
	d.stop()
	for _, f := range []faultproxy.Fault{
		{Kind: faultproxy.Refuse},
		{Kind: faultproxy.Reset, Match: faultproxy.ObjectWrites, Times: 5},
		{Kind: faultproxy.Error500After, Match: faultproxy.ObjectWrites, Times: 8},
	} {
		target := uniqueName("restored")
		// The target bucket exists: the faults hit the copies, not its creation.
		must(t, testenv.CreateBucket(w.ctx, w.src, target, true))
		proxy.Set(f)
		if f.Kind == faultproxy.Refuse {
			time.AfterFunc(3*time.Second, func() { _ = proxy.Clear() })
		}
		out, errOut, code := w.cli("restore", "-rule", "all", "-to-bucket", target)
		if code != 0 {
			t.Fatalf("restore with fault %v: exit %d: %s\n%s", f.Kind, code, out, errOut)
		}
		if f.Kind != faultproxy.Refuse && proxy.Hits() == 0 {
			t.Fatalf("fault %v never applied", f.Kind)
		}
		_ = proxy.Clear()
		w.checkRestored(target, objs, func(o drillObject) []byte { return o.good })
	}
}

// Failback: objects lost on the source (version deletes, never
// propagated) are restored into the source bucket itself while the daemon
// runs. Their events come back to the daemon, which recognises each
// restored object by its metadata and records the replica it came from
// instead of copying it again: the destination's version count does not
// grow, and verify passes.
func TestFailback(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{})
	d := w.start()
	objs := w.replicated(20, 5000)
	before := 0
	for _, o := range objs {
		vs, _ := w.destVersions(o.key)
		before += len(vs)
	}
	// The source loses half of its objects for good.
	var evs []testenv.Event
	for _, o := range objs[:10] {
		vs, err := listVersions(w, w.src, w.srcBucket, o.key)
		must(t, err)
		for _, v := range vs {
			ev, err := w.pub.DeleteVersion(w.ctx, w.src, w.srcBucket, o.key, v.id)
			must(t, err)
			evs = append(evs, ev)
		}
	}
	must(t, w.pub.SendEvents(w.ctx, evs...))
	out, errOut, code := w.cli("restore", "-rule", "all", "-to-bucket", w.srcBucket, "-into-existing")
	if code != 0 {
		t.Fatalf("restore into the source bucket: exit %d: %s\n%s", code, out, errOut)
	}
	// S3 would notify the restored writes: publish what it would send.
	evs = nil
	for _, o := range objs {
		vs, err := listVersions(w, w.src, w.srcBucket, o.key)
		must(t, err)
		for _, v := range vs {
			if v.latest {
				evs = append(evs, testenv.Event{Name: "ObjectCreated:Put", Bucket: w.srcBucket, Key: o.key, VersionID: v.id,
					Size: v.size, Sequencer: w.pub.Sequencer(), Time: v.modified})
			}
		}
	}
	must(t, w.pub.SendEvents(w.ctx, evs...))
	waitFor(t, 60*time.Second, "the restored objects' events handled", func() bool {
		counts, err := w.statusCounts()
		return err == nil && counts["pending"]+counts["in_flight"] == 0 && counts["completed"] == int64(2*len(objs)) && w.queueDepth() == 0
	})
	after := 0
	for _, o := range objs {
		vs, _ := w.destVersions(o.key)
		after += len(vs)
	}
	if after != before {
		t.Fatalf("the destination holds %d versions after the failback, %d before: restored objects were copied again", after, before)
	}
	if n := d.metric("s3replicad_source_bytes_read_total"); n > float64(20*5000+400) {
		t.Fatalf("%v source bytes read: the restored objects' bytes were read again", n)
	}
	if vout, verr, code := w.cli("verify"); code != 0 {
		t.Fatalf("verify after the failback: exit %d: %s\n%s", code, vout, verr)
	}
	d.stop()
}
