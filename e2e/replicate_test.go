package e2e

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"hash/crc32"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/internal/testenv"
)

// longKey is a 1,000-byte key (path segments stay under file-name limits of
// POSIX-backed stores).
func longKey() string {
	return strings.Repeat(strings.Repeat("k", 199)+"/", 4) + strings.Repeat("é", 100)
}

func TestReplicatesVersionsWithMetadataAndAwkwardKeys(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{})
	d := w.start()
	// Every family of the contract is exported from start-up, at zero.
	for _, f := range []struct{ name, label, value string }{
		{"s3replicad_events_received_total", "kind", "malformed"},
		{"s3replicad_replicated_objects_total", "rule", "all"},
		{"s3replicad_replicated_bytes_total", "rule", "all"},
		{"s3replicad_operations_pending", "rule", "all"},
		{"s3replicad_bytes_pending", "rule", "all"},
		{"s3replicad_operations_failed_total", "reason", "access_denied"},
		{"s3replicad_replication_latency_seconds_count", "rule", "all"},
		{"s3replicad_deletes_not_replicated_total", "rule", "all"},
		{"s3replicad_oldest_pending_seconds", "", ""},
		{"go_goroutines", "", ""},
		{"process_resident_memory_bytes", "", ""},
	} {
		if !d.hasSeries(f.name, f.label, f.value) {
			t.Errorf("metric %s{%s=%q} is not exported at start-up", f.name, f.label, f.value)
		}
	}

	keys := []string{
		"plain.txt", "with space.txt", "plus+sign.txt", "percent%25.txt", "equals=and&amp.txt",
		"unicode/élan-日本語-😀.txt", "deep/nested/path/file.bin", longKey(),
	}
	if len(keys[len(keys)-1]) != 1000 {
		t.Fatalf("long key is %d bytes", len(keys[len(keys)-1]))
	}
	var evs []testenv.Event
	for i, k := range keys {
		evs = append(evs, w.put(k, []byte("content of "+k+strings.Repeat("x", i*100))))
	}
	// A 0-byte object, and one with every header, user metadata and tags.
	evs = append(evs, w.put("empty", nil))
	expires := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	evs = append(evs, w.put("headers.json", []byte(`{"a":1}`), func(in *s3.PutObjectInput) {
		in.ContentType = aws.String("application/json")
		in.ContentEncoding = aws.String("identity")
		in.ContentDisposition = aws.String(`attachment; filename="h.json"`)
		in.ContentLanguage = aws.String("fr-CA")
		in.CacheControl = aws.String("max-age=60")
		in.Expires = &expires
		in.Metadata = map[string]string{"owner": "team a", "n": "42"}
		in.Tagging = aws.String("env=prod&class=gold%20star")
	}))
	// Several records in one message, plus one message per event.
	w.send(testenv.S3Body(evs[:3]...))
	must(t, w.pub.SendEvents(w.ctx, evs[3:]...))

	for _, ev := range evs {
		w.waitReplicated(ev.Key, ev.VersionID, 30*time.Second)
	}
	for i, k := range keys {
		got, _ := w.getDest(k, "")
		if want := "content of " + k + strings.Repeat("x", i*100); string(got) != want {
			t.Errorf("%q: destination holds %q", k, got)
		}
	}
	if got, _ := w.getDest("empty", ""); len(got) != 0 {
		t.Errorf("empty object has %d bytes on the destination", len(got))
	}
	body, out := w.getDest("headers.json", "")
	if string(body) != `{"a":1}` {
		t.Errorf("headers.json body %q", body)
	}
	check := func(name, got, want string) {
		if got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	check("Content-Type", aws.ToString(out.ContentType), "application/json")
	check("Content-Encoding", aws.ToString(out.ContentEncoding), "identity")
	check("Content-Disposition", aws.ToString(out.ContentDisposition), `attachment; filename="h.json"`)
	check("Content-Language", aws.ToString(out.ContentLanguage), "fr-CA")
	check("Cache-Control", aws.ToString(out.CacheControl), "max-age=60")
	if exp, err := time.Parse(time.RFC1123, aws.ToString(out.ExpiresString)); err != nil || !exp.Equal(expires) {
		t.Errorf("Expires = %q", aws.ToString(out.ExpiresString))
	}
	check("meta owner", out.Metadata["owner"], "team a")
	check("meta n", out.Metadata["n"], "42")
	for k := range out.Metadata {
		if k != "owner" && k != "n" && !strings.HasPrefix(k, "s3replicad-") {
			t.Errorf("unexpected metadata key %q on the replica", k)
		}
	}
	tags := w.destTags("headers.json")
	check("tag env", tags["env"], "prod")
	check("tag class", tags["class"], "gold star")

	// Exactly one destination version per source version.
	for _, ev := range evs {
		if vs, _ := w.destVersions(ev.Key); len(vs) != 1 {
			t.Errorf("%q has %d destination versions, want 1", ev.Key, len(vs))
		}
	}
	if got := d.metric("s3replicad_replicated_objects_total", "rule", "all"); got != float64(len(evs)) {
		t.Errorf("replicated_objects_total = %v, want %d", got, len(evs))
	}
	if got := d.metric("s3replicad_events_received_total", "kind", "created"); got != float64(len(evs)) {
		t.Errorf("events_received_total{created} = %v, want %d", got, len(evs))
	}
	d.stop()
}

func TestMultipartObjectIsCopiedInParts(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{transfer: "  workers: 4\n  part_size: 5MiB\n  multipart_threshold: 6MiB\n  part_concurrency: 3\n"})
	d := w.start()
	data := make([]byte, 13<<20+12345)
	_, _ = rand.Read(data)
	ev := w.put("big/object.bin", data, func(in *s3.PutObjectInput) {
		in.ContentType = aws.String("application/x-test")
		in.Metadata = map[string]string{"big": "yes"}
		in.Tagging = aws.String("size=large")
	})
	ev.Name = "ObjectCreated:CompleteMultipartUpload"
	must(t, w.pub.SendEvents(w.ctx, ev))
	w.waitReplicated(ev.Key, ev.VersionID, 60*time.Second)
	got, out := w.getDest(ev.Key, "")
	if !bytes.Equal(got, data) {
		t.Fatalf("multipart replica differs: %d bytes vs %d", len(got), len(data))
	}
	if etag := aws.ToString(out.ETag); !strings.HasSuffix(strings.Trim(etag, `"`), "-3") {
		t.Errorf("replica ETag %s is not a 3-part multipart ETag", etag)
	}
	if aws.ToString(out.ContentType) != "application/x-test" || out.Metadata["big"] != "yes" {
		t.Errorf("headers lost: %q %v", aws.ToString(out.ContentType), out.Metadata)
	}
	if w.destTags(ev.Key)["size"] != "large" {
		t.Errorf("tags lost on multipart replica")
	}
	// The upload was created with CRC32C: the store checked each part's
	// checksum and the replica carries their composite.
	head, err := w.dst.HeadObject(w.ctx, &s3.HeadObjectInput{Bucket: &w.dstBucket, Key: aws.String(ev.Key), ChecksumMode: types.ChecksumModeEnabled})
	must(t, err)
	var sums []byte
	for off := 0; off < len(data); off += 5 << 20 {
		c := crc32.Checksum(data[off:min(off+5<<20, len(data))], crc32.MakeTable(crc32.Castagnoli))
		sums = append(sums, byte(c>>24), byte(c>>16), byte(c>>8), byte(c))
	}
	want := engine.CRC32CBase64(crc32.Checksum(sums, crc32.MakeTable(crc32.Castagnoli))) + "-3"
	if got := aws.ToString(head.ChecksumCRC32C); got != want {
		t.Errorf("replica's CRC32C checksum is %q, want the parts' composite %q", got, want)
	}
	if got := d.metric("s3replicad_source_bytes_read_total"); got < float64(len(data)) {
		t.Errorf("source_bytes_read_total = %v, want >= %d", got, len(data))
	}
	d.stop()
}

// A destination on the source's endpoint gets its copies made inside the
// store: no object bytes pass through the daemon, small objects with
// CopyObject and large ones with UploadPartCopy, with headers, metadata and
// tags as the contract requires. server_side_copy: off streams instead.
func TestServerSideCopyOnTheSameEndpoint(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"auto", "off"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, worldOpts{sameEndpoint: true, destExtra: "    server_side_copy: " + mode,
				transfer: "  workers: 4\n  part_size: 5MiB\n  multipart_threshold: 6MiB\n  part_concurrency: 3\n"})
			d := w.start()
			small := w.put("docs/a b+c.txt", []byte("copied inside the store"), func(in *s3.PutObjectInput) {
				in.ContentType = aws.String("text/plain")
				in.CacheControl = aws.String("max-age=60")
				in.Metadata = map[string]string{"owner": "ops"}
				in.Tagging = aws.String("team=ops&tier=gold")
			})
			large := make([]byte, 12<<20+7)
			_, _ = rand.Read(large)
			big := w.put("big/blob.bin", large, func(in *s3.PutObjectInput) { in.Metadata = map[string]string{"big": "yes"} })
			big.Name = "ObjectCreated:CompleteMultipartUpload"
			empty := w.put("empty", nil)
			must(t, w.pub.SendEvents(w.ctx, small, big, empty))
			for _, ev := range []testenv.Event{small, big, empty} {
				w.waitReplicated(ev.Key, ev.VersionID, 60*time.Second)
			}
			body, out := w.getDest(small.Key, "")
			if string(body) != "copied inside the store" || aws.ToString(out.ContentType) != "text/plain" ||
				aws.ToString(out.CacheControl) != "max-age=60" || out.Metadata["owner"] != "ops" {
				t.Errorf("small replica: %q type %q cache %q meta %v", body, aws.ToString(out.ContentType), aws.ToString(out.CacheControl), out.Metadata)
			}
			if tags := w.destTags(small.Key); tags["team"] != "ops" || tags["tier"] != "gold" || len(tags) != 2 {
				t.Errorf("small replica tags %v", tags)
			}
			body, out = w.getDest(big.Key, "")
			if !bytes.Equal(body, large) || out.Metadata["big"] != "yes" {
				t.Errorf("large replica differs (%d bytes, meta %v)", len(body), out.Metadata)
			}
			if body, _ := w.getDest(empty.Key, ""); len(body) != 0 {
				t.Errorf("empty replica has %d bytes", len(body))
			}
			for _, ev := range []testenv.Event{small, big, empty} {
				if vs, _ := w.destVersions(ev.Key); len(vs) != 1 {
					t.Errorf("%s has %d destination versions, want 1", ev.Key, len(vs))
				}
			}
			read, inStore := d.metric("s3replicad_source_bytes_read_total"), d.metric("s3replicad_server_side_copy_bytes_total")
			total := float64(len(large) + len("copied inside the store"))
			switch mode {
			case "auto":
				if read != 0 || inStore != total {
					t.Errorf("auto: read %v bytes through the daemon and %v inside the store; want 0 and %v", read, inStore, total)
				}
			case "off":
				if read != total || inStore != 0 {
					t.Errorf("off: read %v bytes through the daemon and %v inside the store; want %v and 0", read, inStore, total)
				}
			}
			d.stop()
		})
	}
}

// bandwidth_limit paces the writes to a destination: 2 MiB at 1 MiB/s
// cannot arrive in less than 1.5 s (the first write goes at once).
func TestBandwidthLimitPacesWrites(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{destExtra: "    bandwidth_limit: 1MiB/s"})
	var evs []testenv.Event
	for i := range 4 {
		body := make([]byte, 512<<10)
		_, _ = rand.Read(body)
		evs = append(evs, w.put(fmt.Sprintf("paced/%d", i), body))
	}
	must(t, w.pub.SendEvents(w.ctx, evs...))
	start := time.Now()
	d := w.start()
	for _, ev := range evs {
		w.waitReplicated(ev.Key, ev.VersionID, 30*time.Second)
	}
	if took := time.Since(start); took < 1500*time.Millisecond {
		t.Errorf("2 MiB reached a destination limited to 1 MiB/s in %v", took)
	}
	if !d.hasSeries("s3replicad_destination_concurrency", "destination", "dr") {
		t.Error("s3replicad_destination_concurrency{destination=\"dr\"} not exported")
	}
	d.stop()
}
