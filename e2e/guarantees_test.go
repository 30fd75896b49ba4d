package e2e

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/s3replicad/s3replicad/internal/faultproxy"
	"github.com/s3replicad/s3replicad/internal/testenv"
)

// Guarantee 9: a version is skipped only when the source itself says it is
// gone. A bare 404 (a wrong endpoint, a proxy in the way) is a failure,
// visible in status with its reason, and `retry` brings it back.
func TestOnlyTheSourcesOwnWordSkips(t *testing.T) {
	t.Parallel()
	proxy, err := faultproxy.Start(env.Source)
	must(t, err)
	t.Cleanup(proxy.Close)
	w := newWorld(t, worldOpts{srcEndpoint: proxy.URL()})
	d := w.start()
	proxy.Set(faultproxy.Fault{Kind: faultproxy.NotFound, Match: faultproxy.Reads})
	ev := w.put("k", []byte("hello"))
	w.send(testenv.S3Body(ev))
	var counts map[string]int64
	waitFor(t, 20*time.Second, "the op to fail", func() bool {
		counts, err = w.statusCounts()
		return err == nil && counts["failed"] == 1
	})
	if counts["skipped"] != 0 || d.metric("s3replicad_skipped_total") != 0 {
		t.Fatalf("a bare 404 made the version skipped: %v", counts)
	}
	out, _, _ := w.cli("status")
	if !strings.Contains(out, "invalid_request") || !strings.Contains(out, "404") {
		t.Fatalf("status does not show the failure and its 404:\n%s", out)
	}
	if d.metric("s3replicad_operations_failed_total", "reason", "invalid_request") == 0 {
		t.Fatal("the failure is not counted")
	}
	must(t, proxy.Clear())
	if _, errOut, code := w.cli("retry", "-all"); code != 0 {
		t.Fatalf("retry: exit %d: %s", code, errOut)
	}
	w.waitExact([]string{"k"}, 30*time.Second)
}

// Guarantee 8: writes to an unversioned source, or one whose versioning is
// suspended, all have the version id null; the sequencer tells them apart.
// Each is copied unless a newer one already was, and an older one never
// overwrites a newer one.
func TestUnversionedWritesAreReplicated(t *testing.T) {
	for _, c := range []struct {
		name        string
		unversioned bool
		versionID   string // as the event spells it
	}{
		{"versioning suspended", false, "null"},
		{"never versioned", true, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, worldOpts{unversionedSource: c.unversioned})
			if !c.unversioned {
				_, err := w.src.PutBucketVersioning(w.ctx, &s3.PutBucketVersioningInput{Bucket: &w.srcBucket,
					VersioningConfiguration: &types.VersioningConfiguration{Status: types.BucketVersioningStatusSuspended}})
				must(t, err)
			}
			w.start()
			put := func(key, body string) testenv.Event {
				ev := w.put(key, []byte(body))
				ev.VersionID = c.versionID
				return ev
			}
			// One write copied before the next is made: both reach the
			// destination, the last one current.
			w.send(testenv.S3Body(put("a", "first write of a")))
			waitContent(w, "a", "first write of a")
			w.send(testenv.S3Body(put("a", "second write of a")))
			waitContent(w, "a", "second write of a")
			// Two writes before either is copied, events in order, then
			// the first event again: the first write is gone from the
			// source, so only the second is copied.
			b1, b2 := put("b", "first write of b"), put("b", "second write of b")
			w.send(testenv.S3Body(b1), testenv.S3Body(b2), testenv.S3Body(b1))
			waitContent(w, "b", "second write of b")
			// Events reversed: the newer is copied, the older one never
			// goes over it.
			c1, c2 := put("c", "first write of c"), put("c", "second write of c")
			w.send(testenv.S3Body(c2))
			waitContent(w, "c", "second write of c")
			w.send(testenv.S3Body(c1))
			waitFor(t, 20*time.Second, "everything finished", func() bool {
				counts, err := w.statusCounts()
				return err == nil && counts["pending"]+counts["in_flight"] == 0 && counts["completed"]+counts["superseded"] == 6
			})
			counts, _ := w.statusCounts()
			if counts["completed"] != 4 || counts["superseded"] != 2 || counts["failed"]+counts["skipped"] != 0 {
				t.Fatalf("counts %v: want 4 copies (a twice, b and c once) and 2 superseded (the first writes of b and c); the duplicate is nothing", counts)
			}
			for key, want := range map[string]int{"a": 2, "b": 1, "c": 1} {
				vs, _ := w.destVersions(key)
				if len(vs) != want {
					t.Errorf("%s has %d destination versions, want %d", key, len(vs), want)
				}
			}
			waitContent(w, "b", "second write of b")
			waitContent(w, "c", "second write of c")
		})
	}
}

// waitContent waits until the destination's current version of key holds
// body.
func waitContent(w *world, key, body string) {
	w.t.Helper()
	waitFor(w.t, 20*time.Second, key+" = "+body, func() bool {
		out, err := w.dst.GetObject(context.Background(), &s3.GetObjectInput{Bucket: &w.dstBucket, Key: &key})
		if err != nil {
			return false
		}
		defer out.Body.Close()
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(out.Body)
		return buf.String() == body
	})
}
