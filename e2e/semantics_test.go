package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/s3replicad/s3replicad/internal/testenv"
)

type statusJSON struct {
	Counts        map[string]int `json:"counts"`
	DaemonRunning bool           `json:"daemon_running"`
	Failed        []struct {
		Key    string `json:"key"`
		Reason string `json:"reason"`
		Error  string `json:"error"`
	} `json:"failed"`
	BytesPending int64 `json:"bytes_pending"`
	LateVersions int64 `json:"late_versions"`
}

func (w *world) status() statusJSON {
	w.t.Helper()
	out, errOut, code := w.cli("status", "-json")
	if code != 0 {
		w.t.Fatalf("status exited %d: %s", code, errOut)
	}
	var st statusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		w.t.Fatalf("status -json is not JSON: %v\n%s", err, out)
	}
	return st
}

// Duplicates are copied once; versions whose events come after a newer
// one was written are still written (complete history), each followed by
// the newest copied back on top (guarantee 4); events reversed inside one
// batch are sorted by their sequencer first, with no extra copy.
func TestDuplicateAndReversedEvents(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{})
	d := w.start()
	v1 := w.put("doc", []byte("one"))
	v2 := w.put("doc", []byte("two"))
	v3 := w.put("doc", []byte("three"))

	// Newest first; once it is written, the older ones come, late.
	must(t, w.pub.SendEvents(w.ctx, v3, v3))
	w.waitReplicated("doc", v3.VersionID, 30*time.Second)
	must(t, w.pub.SendEvents(w.ctx, v1, v2, v3, v1))
	waitFor(t, 30*time.Second, "late versions", func() bool {
		return d.metric("s3replicad_late_versions_total", "rule", "all") == 2
	})
	if body, _ := w.getDest("doc", ""); string(body) != "three" {
		t.Fatalf("current destination version holds %q, want three", body)
	}
	var history []string
	vs, _ := w.destVersions("doc")
	for i := len(vs) - 1; i >= 0; i-- {
		body, _ := w.getDest("doc", aws.ToString(vs[i].VersionId))
		history = append(history, string(body))
	}
	if got, want := strings.Join(history, " "), "three one three two three"; got != want {
		t.Fatalf("destination history %q, want %q: every version once, the newest back on top after each late one", got, want)
	}
	st := w.status()
	if st.Counts["superseded"] != 0 || st.Counts["completed"] != 3 || st.LateVersions != 2 {
		t.Fatalf("status counts %v, %d late; want 3 completed, 2 of them late", st.Counts, st.LateVersions)
	}

	// Reversed order inside one batch: sorted within the order window, so
	// each version is written once, in order.
	a1 := w.put("batch", []byte("a1"))
	a2 := w.put("batch", []byte("a2"))
	a3 := w.put("batch", []byte("a3"))
	w.send(testenv.S3Body(a3, a1, a2))
	waitFor(t, 30*time.Second, "batch replicated", func() bool {
		return d.metric("s3replicad_replicated_objects_total", "rule", "all") == 6
	})
	if body, _ := w.getDest("batch", ""); string(body) != "a3" {
		t.Fatalf("current version of batch is %q, want a3", body)
	}
	if vs, _ := w.destVersions("batch"); len(vs) != 3 {
		t.Fatalf("batch: %d destination versions, want 3", len(vs))
	}
	if late := d.metric("s3replicad_late_versions_total", "rule", "all"); late != 2 {
		t.Fatalf("%v late versions after a reversed batch, want still 2", late)
	}
	d.stop()
}

func TestDeleteMarkersAndVersionDeletes(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{rules: `
  - id: markers-on
    priority: 2
    source_bucket: %[1]s
    filter: {prefix: "on/"}
    destination: dr
    destination_bucket: %[2]s
    replicate_delete_markers: true
  - id: markers-off
    priority: 1
    source_bucket: %[1]s
    filter: {prefix: "off/"}
    destination: dr
    destination_bucket: %[2]s
`})
	d := w.start()
	on := w.put("on/file", []byte("on"))
	off := w.put("off/file", []byte("off"))
	must(t, w.pub.SendEvents(w.ctx, on, off))
	w.waitReplicated("on/file", on.VersionID, 30*time.Second)
	w.waitReplicated("off/file", off.VersionID, 30*time.Second)

	dmOn, err := w.pub.DeleteMarker(w.ctx, w.src, w.srcBucket, "on/file")
	must(t, err)
	dmOff, err := w.pub.DeleteMarker(w.ctx, w.src, w.srcBucket, "off/file")
	must(t, err)
	// Delivered through EventBridge and SNS as well as plain S3 bodies.
	w.send(testenv.EventBridgeBody(dmOn), testenv.SNSBody(testenv.S3Body(dmOff)))
	waitFor(t, 30*time.Second, "delete marker on the destination", func() bool {
		_, markers := w.destVersions("on/file")
		return len(markers) == 1 && aws.ToBool(markers[0].IsLatest)
	})
	waitFor(t, 30*time.Second, "delete marker counted as not replicated", func() bool {
		return d.metric("s3replicad_deletes_not_replicated_total", "rule", "markers-off") == 1
	})
	if vs, markers := w.destVersions("off/file"); len(markers) != 0 || len(vs) != 1 {
		t.Fatalf("off/file: %d versions, %d markers; the marker must not be replicated", len(vs), len(markers))
	}
	if vs, _ := w.destVersions("on/file"); len(vs) != 1 {
		t.Fatalf("on/file lost its version: a delete marker must never delete a version")
	}

	// A permanent version delete on the source is never propagated.
	keep := w.put("on/keep", []byte("keep me"))
	must(t, w.pub.SendEvents(w.ctx, keep))
	w.waitReplicated("on/keep", keep.VersionID, 30*time.Second)
	del, err := w.pub.DeleteVersion(w.ctx, w.src, w.srcBucket, "on/keep", keep.VersionID)
	must(t, err)
	must(t, w.pub.SendEvents(w.ctx, del))
	waitFor(t, 30*time.Second, "version delete counted", func() bool {
		return d.metric("s3replicad_deletes_not_replicated_total", "rule", "markers-on") == 1
	})
	vs, markers := w.destVersions("on/keep")
	if len(vs) != 1 || len(markers) != 0 {
		t.Fatalf("on/keep: %d versions and %d markers after a source version delete, want 1 and 0", len(vs), len(markers))
	}
	if body, _ := w.getDest("on/keep", ""); string(body) != "keep me" {
		t.Fatalf("on/keep holds %q", body)
	}
	d.stop()
}

func TestVersionGoneBeforeCopyIsSkipped(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{})
	d := w.start()
	gone := w.put("gone", []byte("short-lived"))
	_, err := w.src.DeleteObject(w.ctx, &s3.DeleteObjectInput{Bucket: &w.srcBucket, Key: aws.String("gone"), VersionId: &gone.VersionID})
	must(t, err)
	after := w.put("after", []byte("still replicated"))
	must(t, w.pub.SendEvents(w.ctx, gone, after))
	w.waitReplicated("after", after.VersionID, 30*time.Second)
	waitFor(t, 30*time.Second, "skipped", func() bool { return w.status().Counts["skipped"] == 1 })
	if vs, _ := w.destVersions("gone"); len(vs) != 0 {
		t.Fatalf("a version that no longer exists was written: %d versions", len(vs))
	}
	if d.metric("s3replicad_operations_failed_total", "reason", "source_missing") != 1 {
		t.Errorf("failed_total{reason=source_missing} not counted")
	}
	d.stop()
}

func TestPrefixAndTagFilters(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{rules: `
  - id: logs
    priority: 1
    source_bucket: %[1]s
    filter: {prefix: "logs/"}
    destination: dr
    destination_bucket: %[2]s
    destination_prefix: "copy/"
  - id: tagged
    priority: 2
    source_bucket: %[1]s
    filter:
      tags: {replicate: "yes"}
    destination: dr
    destination_bucket: %[2]s
`})
	d := w.start()
	logsEv := w.put("logs/a.log", []byte("log"))
	tagged := w.put("data/tagged", []byte("t"), func(in *s3.PutObjectInput) { in.Tagging = aws.String("replicate=yes") })
	untagged := w.put("data/untagged", []byte("u"), func(in *s3.PutObjectInput) { in.Tagging = aws.String("replicate=no") })
	other := w.put("other/x", []byte("x"))
	must(t, w.pub.SendEvents(w.ctx, logsEv, tagged, untagged, other))
	waitFor(t, 30*time.Second, "filtered replication", func() bool {
		return d.metric("s3replicad_replicated_objects_total") == 2
	})
	if body, _ := w.getDest("copy/logs/a.log", ""); string(body) != "log" {
		t.Fatalf("prefix rule with destination_prefix wrote %q", body)
	}
	if body, _ := w.getDest("data/tagged", ""); string(body) != "t" {
		t.Fatalf("tag rule wrote %q", body)
	}
	time.Sleep(1500 * time.Millisecond) // a poll period: nothing else may arrive
	for _, k := range []string{"data/untagged", "other/x", "logs/a.log"} {
		if vs, _ := w.destVersions(k); len(vs) != 0 {
			t.Errorf("%s was replicated but no rule selects it there", k)
		}
	}
	if got := d.metric("s3replicad_replicated_objects_total", "rule", "logs"); got != 1 {
		t.Errorf("rule logs replicated %v", got)
	}
	d.stop()
}

func TestTestEventsAndMalformedMessages(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{maxReceives: 2})
	d := w.start()
	good := w.put("good", []byte("good"))
	w.send(
		"this is not json",
		`{"Records":[{"eventVersion":"2.1","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{}}}]}`,
		`{"unknown":"shape"}`,
		testenv.TestEventBody(w.srcBucket),
		testenv.S3Body(good),
	)
	w.waitReplicated("good", good.VersionID, 30*time.Second)
	waitFor(t, 30*time.Second, "test event counted", func() bool {
		return d.metric("s3replicad_events_received_total", "kind", "test") == 1
	})
	waitFor(t, 60*time.Second, "malformed messages moved to the DLQ", func() bool {
		return d.metric("s3replicad_events_received_total", "kind", "malformed") >= 3
	})
	// They are left to the redrive policy, never deleted by the daemon:
	// after maxReceiveCount they are in the dead-letter queue.
	dlq := w.queueURL + "-dlq"
	waitFor(t, 60*time.Second, "3 messages in the DLQ", func() bool {
		attrs, err := w.pub.Client.GetQueueAttributes(w.ctx, &sqsAttrsInput{QueueUrl: &dlq, AttributeNames: allAttrs})
		if err != nil {
			return false
		}
		return attrs.Attributes["ApproximateNumberOfMessages"] == "3"
	})
	// Still alive and replicating.
	later := w.put("later", []byte("later"))
	must(t, w.pub.SendEvents(w.ctx, later))
	w.waitReplicated("later", later.VersionID, 30*time.Second)
	d.stop()
}

// A key's delete marker's event comes before its only version's. The
// destination has nothing to put the marker on (versitygw, like MinIO,
// makes none on a key without versions); the version then comes late:
// it is written, and a delete marker on top keeps the key deleted, as on
// the source.
func TestLateVersionUnderAMarkerTheStoreDidNotMake(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{rules: markerRules})
	d := w.start()
	v1 := w.put("gone-soon", []byte("one"))
	dm, err := w.pub.DeleteMarker(w.ctx, w.src, w.srcBucket, "gone-soon")
	must(t, err)
	must(t, w.pub.SendEvents(w.ctx, dm))
	waitFor(t, 30*time.Second, "the marker's event handled", func() bool {
		counts, err := w.statusCounts()
		return err == nil && counts["completed"] == 1
	})
	must(t, w.pub.SendEvents(w.ctx, v1))
	w.waitExact([]string{"gone-soon"}, 30*time.Second)
	d.stop()
}

// Two delete markers in a row on the source: S3 and versitygw make two on
// the destination; MinIO makes no marker over a marker and answers with the
// current one, which then stands for both (counted, and logged). Either
// way the key is deleted on both sides and its version is kept.
func TestTwoDeleteMarkersInARow(t *testing.T) {
	t.Parallel()
	for _, store := range []testenv.Kind{testenv.VersityGW, testenv.MinIO} {
		t.Run(string(store), func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, worldOpts{rules: markerRules, dstStore: store})
			d := w.start()
			v := w.put("k", []byte("kept"))
			must(t, w.pub.SendEvents(w.ctx, v))
			w.waitReplicated("k", v.VersionID, 30*time.Second)
			for range 2 {
				dm, err := w.pub.DeleteMarker(w.ctx, w.src, w.srcBucket, "k")
				must(t, err)
				must(t, w.pub.SendEvents(w.ctx, dm))
			}
			waitFor(t, 30*time.Second, "both markers recorded", func() bool { return w.status().Counts["completed"] == 3 })
			out, err := w.src.ListObjectVersions(w.ctx, &s3.ListObjectVersionsInput{Bucket: &w.srcBucket, Prefix: aws.String("k")})
			must(t, err)
			if len(out.Versions) != 1 || len(out.DeleteMarkers) != 2 {
				t.Fatalf("source: %d versions and %d markers, want 1 and 2", len(out.Versions), len(out.DeleteMarkers))
			}
			vs, markers := w.destVersions("k")
			merged := d.metric("s3replicad_delete_markers_merged_total", "rule", "all")
			want := 2.0
			if store == testenv.MinIO {
				want = 1
			}
			if len(vs) != 1 || float64(len(markers)) != want || !aws.ToBool(markers[0].IsLatest) || float64(len(markers))+merged != 2 {
				t.Fatalf("destination: %d versions and %d markers (the newest current: %v), %v merged; want 1 version, %v markers, and the markers plus the merged 2",
					len(vs), len(markers), len(markers) > 0 && aws.ToBool(markers[0].IsLatest), merged, want)
			}
			if merged == 1 && !d.logged("made no second delete marker") {
				t.Fatal("a merged marker was counted but not logged")
			}
			d.stop()
		})
	}
}
