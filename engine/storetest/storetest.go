// Package storetest is the conformance suite of the engine's store
// interfaces: one set of tests that every implementation of
// engine.ObjectStore (and engine.ServerSideCopier, where it has it) must
// pass, so that the engine's tests on the in-memory fake mean something
// for the S3 adapter on each real store, and each store's differences are
// found here rather than by users. Run it from a test of the
// implementation:
//
//	func TestConformance(t *testing.T) { storetest.Run(t, newHarness) }
package storetest

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/engine"
)

// Harness is one store set up for one test.
type Harness struct {
	// Store is the implementation under test.
	Store engine.ObjectStore
	// Bucket and Other are versioned buckets of Store, empty, for this
	// test alone; Unversioned is one that never had versioning.
	Bucket, Other, Unversioned string
	// Denied is Store as seen by a client whose credentials it refuses.
	Denied engine.ObjectStore
	// Faulty is Store reached through Faults.
	Faulty engine.ObjectStore
	Faults Faults
	// DeleteVersion deletes a version for good, as a user of the store
	// would (the interfaces have no such call: s3replicad never does it).
	DeleteVersion func(ctx context.Context, bucket, key, versionID string) error
	// PageSize is the most entries one ListVersions page holds.
	PageSize int
	// Quirks are the store's known departures from S3; the suite checks
	// that the store does what they say.
	Quirks Quirks
}

// Quirks are the departures from S3's behaviour that a store is known for
// and s3replicad lives with (see README, "Store compatibility").
type Quirks struct {
	// NoMarkerOnAbsentKey: a DELETE of a key that has no version writes
	// no delete marker (and returns no version id). S3 writes one.
	NoMarkerOnAbsentKey bool
	// NoMarkerOnMarker: a DELETE of a key whose current version is a
	// delete marker writes no second marker and returns the current
	// one's id. S3 writes another.
	NoMarkerOnMarker bool
	// MarkersApart: a listing does not tell where a key's delete markers
	// stand among its versions (the store lists them apart, and versions'
	// times too coarsely to merge by): the key's newest entry comes first,
	// versions and markers are each in order, but not interleaved as
	// written.
	MarkersApart bool
}

// Fault is a way for the store's endpoint to fail.
type Fault int

const (
	// Throttle answers 503 SlowDown.
	Throttle Fault = iota
	// ServerError answers 500 InternalError.
	ServerError
	// Reset cuts the connection half way through a request's body.
	Reset
	// Refused refuses connections.
	Refused
	// Stalled accepts a request and never answers.
	Stalled
)

func (f Fault) String() string {
	return [...]string{"throttle", "500", "reset", "refused", "stalled"}[f]
}

// Faults makes Harness.Faulty's requests fail.
type Faults interface {
	// Set makes every request fail in the given way until Clear.
	Set(Fault)
	Clear()
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Payload wraps bytes with their CRC32C, as the engine writes them.
func Payload(b []byte) engine.Payload {
	return engine.Payload{Data: b, CRC32C: crc32.Checksum(b, castagnoli)}
}

// Run runs the suite; newHarness is called once per test.
func Run(t *testing.T, newHarness func(t *testing.T) Harness) {
	tests := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"PutGet", testPutGet},
		{"TagsPerVersion", testTagsPerVersion},
		{"Integrity", testIntegrity},
		{"Listing", testListing},
		{"DeleteMarkers", testDeleteMarkers},
		{"NullVersions", testNullVersions},
		{"Multipart", testMultipart},
		{"MultipartAbort", testMultipartAbort},
		{"Current", testCurrent},
		{"CopyVersion", testCopyVersion},
		{"Copy", testCopy},
		{"CopyPart", testCopyPart},
		{"FindReplica", testFindReplica},
		{"FindReplicaDeleteMarker", testFindReplicaMarker},
		{"ErrorsGone", testGone},
		{"ErrorsPermanent", testPermanent},
		{"ErrorsTransient", testTransient},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newHarness(t))
		})
	}
}

func ctxOf(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func random(t *testing.T, n int) []byte {
	b := make([]byte, n)
	_, err := rand.Read(b)
	must(t, err)
	return b
}

func md5Hex(b []byte) string {
	s := md5.Sum(b)
	return hex.EncodeToString(s[:])
}

// read reads a whole version and closes its body.
func read(t *testing.T, h Harness, ref engine.VersionRef, r *engine.ByteRange) (*engine.Object, []byte) {
	t.Helper()
	obj, err := h.Store.Get(ctxOf(t), ref, r)
	must(t, err)
	defer obj.Body.Close()
	b, err := io.ReadAll(obj.Body)
	must(t, err)
	return obj, b
}

// wantClass fails unless err is classified as class with reason ("" for
// any reason).
func wantClass(t *testing.T, what string, err error, class engine.Class, reason string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want %s", what, className(class))
	}
	c, r := engine.Classify(err)
	if c != class || reason != "" && r != reason {
		t.Fatalf("%s: classified %s/%s, want %s/%s (%v)", what, className(c), r, className(class), reason, err)
	}
}

func className(c engine.Class) string {
	switch c {
	case engine.Transient:
		return "transient"
	case engine.Permanent:
		return "permanent"
	case engine.Gone:
		return "gone"
	}
	return fmt.Sprint(int(c))
}

// fullMeta is every header the contract says travels with a version.
func fullMeta(tag string) engine.ObjectMeta {
	return engine.ObjectMeta{
		ContentType:        "text/x-" + tag,
		ContentEncoding:    "identity",
		ContentDisposition: `attachment; filename="` + tag + `.txt"`,
		ContentLanguage:    "de-CH",
		CacheControl:       "max-age=" + fmt.Sprint(len(tag)),
		Expires:            time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC).Format(http.TimeFormat),
		Metadata:           map[string]string{"color": tag, engine.MetaSourceVersion: "src-" + tag},
		Tags:               map[string]string{"team": tag, "with space": "a/b=c+d"},
	}
}

// checkMeta compares what a Get returned with what was written; tags are
// compared when the object carries them (Get tells their count only).
func checkMeta(t *testing.T, what string, got engine.ObjectMeta, tagCount int, want engine.ObjectMeta) {
	t.Helper()
	var bad []string
	for _, f := range []struct{ name, got, want string }{
		{"Content-Type", got.ContentType, want.ContentType},
		{"Content-Encoding", got.ContentEncoding, want.ContentEncoding},
		{"Content-Disposition", got.ContentDisposition, want.ContentDisposition},
		{"Content-Language", got.ContentLanguage, want.ContentLanguage},
		{"Cache-Control", got.CacheControl, want.CacheControl},
	} {
		if f.got != f.want {
			bad = append(bad, fmt.Sprintf("%s %q, want %q", f.name, f.got, f.want))
		}
	}
	if !sameHTTPDate(got.Expires, want.Expires) {
		bad = append(bad, fmt.Sprintf("Expires %q, want %q", got.Expires, want.Expires))
	}
	if !maps.Equal(nonEmpty(got.Metadata), nonEmpty(want.Metadata)) {
		bad = append(bad, fmt.Sprintf("metadata %v, want %v", got.Metadata, want.Metadata))
	}
	if tagCount != len(want.Tags) {
		bad = append(bad, fmt.Sprintf("tag count %d, want %d", tagCount, len(want.Tags)))
	}
	if len(bad) > 0 {
		t.Fatalf("%s: %s", what, strings.Join(bad, "; "))
	}
}

func nonEmpty(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func sameHTTPDate(a, b string) bool {
	if a == b {
		return true
	}
	ta, err1 := http.ParseTime(a)
	tb, err2 := http.ParseTime(b)
	return err1 == nil && err2 == nil && ta.Equal(tb)
}

func tagsOf(t *testing.T, h Harness, bucket, key, version string) map[string]string {
	t.Helper()
	tags, err := h.Store.Tags(ctxOf(t), bucket, key, version)
	must(t, err)
	return nonEmpty(tags)
}

// Put and Get carry the bytes, the content headers, user metadata and
// tags; the ETag of a single PUT is the MD5 of its bytes; ranged reads
// return the range and the whole object's size; Head agrees.
func testPutGet(t *testing.T, h Harness) {
	ctx := ctxOf(t)
	body := random(t, 100_000)
	meta := fullMeta("one")
	v, err := h.Store.Put(ctx, h.Bucket, "dir/a key+ü", meta, Payload(body))
	must(t, err)
	if v == "" || v == "null" {
		t.Fatalf("Put on a versioned bucket returned version id %q", v)
	}
	obj, got := read(t, h, engine.VersionRef{Bucket: h.Bucket, Key: "dir/a key+ü", VersionID: v}, nil)
	if !bytes.Equal(got, body) {
		t.Fatalf("read %d bytes, not the %d written", len(got), len(body))
	}
	if obj.Size != int64(len(body)) || obj.VersionID != v || obj.ETag != md5Hex(body) {
		t.Fatalf("Get: size %d version %q ETag %q, want %d %q %q", obj.Size, obj.VersionID, obj.ETag, len(body), v, md5Hex(body))
	}
	checkMeta(t, "Get", obj.ObjectMeta, obj.TagCount, meta)
	if tags := tagsOf(t, h, h.Bucket, "dir/a key+ü", v); !maps.Equal(tags, meta.Tags) {
		t.Fatalf("tags %v, want %v", tags, meta.Tags)
	}
	// The current version, without a version id.
	if obj, _ := read(t, h, engine.VersionRef{Bucket: h.Bucket, Key: "dir/a key+ü"}, nil); obj.VersionID != v {
		t.Fatalf("Get without a version id read %q, want the current %q", obj.VersionID, v)
	}
	// A range: its bytes, and the whole object's size.
	obj, got = read(t, h, engine.VersionRef{Bucket: h.Bucket, Key: "dir/a key+ü", VersionID: v}, &engine.ByteRange{First: 10, Last: 19})
	if !bytes.Equal(got, body[10:20]) || obj.Size != int64(len(body)) {
		t.Fatalf("range 10-19: %d bytes (size %d), want body[10:20] and size %d", len(got), obj.Size, len(body))
	}
	// The engine reads byte 0 first to learn an object's headers: an
	// empty object has none, and reads as empty.
	ev, err := h.Store.Put(ctx, h.Bucket, "empty", engine.ObjectMeta{ContentType: "application/x-empty"}, Payload(nil))
	must(t, err)
	obj, got = read(t, h, engine.VersionRef{Bucket: h.Bucket, Key: "empty", VersionID: ev}, &engine.ByteRange{First: 0, Last: 0})
	if len(got) != 0 || obj.Size != 0 || obj.ContentType != "application/x-empty" {
		t.Fatalf("byte 0 of an empty object: %d bytes, size %d, type %q", len(got), obj.Size, obj.ContentType)
	}
	size, etag, md, err := h.Store.Head(ctx, h.Bucket, "dir/a key+ü", v)
	must(t, err)
	if size != int64(len(body)) || etag != md5Hex(body) || !maps.Equal(md, meta.Metadata) {
		t.Fatalf("Head: %d %q %v, want %d %q %v", size, etag, md, len(body), md5Hex(body), meta.Metadata)
	}
	// A second version leaves the first as it was.
	v2, err := h.Store.Put(ctx, h.Bucket, "dir/a key+ü", engine.ObjectMeta{}, Payload([]byte("two")))
	must(t, err)
	if v2 == v {
		t.Fatalf("two PUTs made one version %q", v)
	}
	obj, got = read(t, h, engine.VersionRef{Bucket: h.Bucket, Key: "dir/a key+ü", VersionID: v}, nil)
	if !bytes.Equal(got, body) {
		t.Fatal("the first version changed when the second was written")
	}
	checkMeta(t, "Get of the older version", obj.ObjectMeta, obj.TagCount, meta)
	obj, got = read(t, h, engine.VersionRef{Bucket: h.Bucket, Key: "dir/a key+ü"}, nil)
	if string(got) != "two" || obj.VersionID != v2 {
		t.Fatalf("current version %q %q, want %q two", obj.VersionID, got, v2)
	}
	checkMeta(t, "Get of a version without headers", obj.ObjectMeta, obj.TagCount, engine.ObjectMeta{ContentType: obj.ContentType})
}

// Tags belong to a version: a newer version's tags leave an older one's
// as they were.
func testTagsPerVersion(t *testing.T, h Harness) {
	ctx := ctxOf(t)
	v1, err := h.Store.Put(ctx, h.Bucket, "k", engine.ObjectMeta{Tags: map[string]string{"a": "1"}}, Payload([]byte("1")))
	must(t, err)
	v2, err := h.Store.Put(ctx, h.Bucket, "k", engine.ObjectMeta{Tags: map[string]string{"b": "2", "c": "3"}}, Payload([]byte("2")))
	must(t, err)
	v3, err := h.Store.Put(ctx, h.Bucket, "k", engine.ObjectMeta{}, Payload([]byte("3")))
	must(t, err)
	for _, c := range []struct {
		v    string
		want map[string]string
	}{{v1, map[string]string{"a": "1"}}, {v2, map[string]string{"b": "2", "c": "3"}}, {v3, map[string]string{}}, {"", map[string]string{}}} {
		if got := tagsOf(t, h, h.Bucket, "k", c.v); !maps.Equal(got, c.want) {
			t.Errorf("tags of version %q: %v, want %v", c.v, got, c.want)
		}
		obj, _ := read(t, h, engine.VersionRef{Bucket: h.Bucket, Key: "k", VersionID: c.v}, nil)
		if obj.TagCount != len(c.want) {
			t.Errorf("Get of version %q counts %d tags, want %d", c.v, obj.TagCount, len(c.want))
		}
	}
}

// A PUT or part whose bytes do not match their CRC32C is refused, as an
// integrity error worth retrying, and writes nothing.
func testIntegrity(t *testing.T, h Harness) {
	ctx := ctxOf(t)
	p := Payload([]byte("the real bytes"))
	p.CRC32C++
	_, err := h.Store.Put(ctx, h.Bucket, "k", engine.ObjectMeta{}, p)
	wantClass(t, "Put with a wrong CRC32C", err, engine.Transient, engine.ReasonIntegrity)
	if vs := walk(t, h, h.Bucket, ""); len(vs) != 0 {
		t.Fatalf("a refused PUT left %d versions", len(vs))
	}
	id, _, err := h.Store.CreateMultipart(ctx, h.Bucket, "k", engine.ObjectMeta{}, false)
	must(t, err)
	defer h.Store.AbortMultipart(ctx, h.Bucket, "k", id)
	_, err = h.Store.UploadPart(ctx, h.Bucket, "k", id, 1, p)
	wantClass(t, "UploadPart with a wrong CRC32C", err, engine.Transient, engine.ReasonIntegrity)
}

// walk lists every version under prefix through ListVersions' pages. Each
// entry must come once: a walker that counted an entry twice would copy or
// count it twice.
func walk(t *testing.T, h Harness, bucket, prefix string) []engine.Version {
	t.Helper()
	var out []engine.Version
	seen := map[string]bool{}
	km, vm := "", ""
	for pages := 0; ; pages++ {
		if pages > 1000 {
			t.Fatal("the listing does not end")
		}
		page, err := h.Store.ListVersions(ctxOf(t), bucket, prefix, km, vm)
		must(t, err)
		if h.PageSize > 0 && len(page.Versions) > h.PageSize {
			t.Fatalf("a page of %d entries, more than %d", len(page.Versions), h.PageSize)
		}
		for _, v := range page.Versions {
			id := v.Key + "\x00" + v.VersionID
			if seen[id] {
				t.Fatalf("%s@%s listed twice (page after markers %q %q)", v.Key, v.VersionID, km, vm)
			}
			seen[id] = true
			out = append(out, v)
		}
		if !page.Truncated {
			return out
		}
		if page.NextKeyMarker == "" {
			t.Fatal("a truncated page without a next key marker")
		}
		km, vm = page.NextKeyMarker, page.NextVersionIDMarker
	}
}

type written struct {
	key, id string
	marker  bool
	body    []byte
}

// Listings: keys ascending, each key's versions and delete markers newest
// first with only the newest marked latest, ETags and sizes of versions,
// the prefix respected, and the pages' markers leading on without an entry
// twice or missing, also where a page ends on a key's latest version or
// inside a key's history.
func testListing(t *testing.T, h Harness) {
	ctx := ctxOf(t)
	ps := h.PageSize
	if ps <= 0 || ps > 20 {
		ps = 5 // too large to cross pages cheaply: the order is still checked
	}
	var all []written
	put := func(key string, i int) {
		b := []byte(fmt.Sprintf("%s#%d", key, i))
		v, err := h.Store.Put(ctx, h.Bucket, key, engine.ObjectMeta{}, Payload(b))
		must(t, err)
		all = append(all, written{key: key, id: v, body: b})
	}
	mark := func(key string) {
		v, err := h.Store.PutDeleteMarker(ctx, h.Bucket, key)
		must(t, err)
		all = append(all, written{key: key, id: v, marker: true})
	}
	// The first page ends on p/b's latest version: ps-1 keys of one
	// version come before it.
	for i := 0; i < ps-1; i++ {
		put(fmt.Sprintf("p/a%02d", i), i)
	}
	// Histories mixing versions and markers, written close together (a
	// store's clock may give several the same millisecond), keys in turn.
	for i := 0; i < 2*ps+3; i++ {
		switch i % 6 {
		case 0, 3:
			put("p/hot", i)
		case 1:
			put("p/b", i)
		case 2:
			mark("p/hot")
		case 4:
			put("p/c", i)
		case 5:
			mark("p/b")
		}
	}
	put("p/b", 0) // p/b's latest is a version
	mark("p/c")   // p/c's latest is a marker
	put("q/outside", 0)
	got := walk(t, h, h.Bucket, "p/")
	// Expected: keys ascending, newest first.
	var want []written
	keys := map[string]bool{}
	for _, w := range all {
		if strings.HasPrefix(w.key, "p/") {
			keys[w.key] = true
		}
	}
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		for i := len(all) - 1; i >= 0; i-- {
			if all[i].key == k {
				want = append(want, all[i])
			}
		}
	}
	describe := func(vs []engine.Version) string {
		var b strings.Builder
		for _, v := range vs {
			fmt.Fprintf(&b, "\n  %s %s marker=%v latest=%v %s", v.Key, v.VersionID, v.DeleteMarker, v.IsLatest, v.LastModified.Format("15:04:05.000000"))
		}
		return b.String()
	}
	if len(got) != len(want) {
		t.Fatalf("listed %d entries under p/, wrote %d:%s", len(got), len(want), describe(got))
	}
	if h.Quirks.MarkersApart {
		// Check what the store does tell: the newest first, and versions
		// and markers each in order.
		order := func(vs []written, marker bool) []string {
			var out []string
			for _, w := range vs {
				if w.marker == marker {
					out = append(out, w.key+"@"+w.id)
				}
			}
			return out
		}
		var gotW []written
		for _, g := range got {
			gotW = append(gotW, written{key: g.Key, id: g.VersionID, marker: g.DeleteMarker})
		}
		for _, marker := range []bool{false, true} {
			if g, w := order(gotW, marker), order(want, marker); !slices.Equal(g, w) {
				t.Fatalf("listed (markers=%v) %v, want %v; the listing:%s", marker, g, w, describe(got))
			}
		}
		firsts := func(vs []written) []string {
			var out []string
			for i, w := range vs {
				if i == 0 || vs[i-1].key != w.key {
					out = append(out, w.key+"@"+w.id)
				}
			}
			return out
		}
		if g, w := firsts(gotW), firsts(want); !slices.Equal(g, w) {
			t.Fatalf("keys' first entries %v, want their newest %v; the listing:%s", g, w, describe(got))
		}
	}
	for i, w := range want {
		g := got[i]
		latest := i == 0 || want[i-1].key != w.key
		if h.Quirks.MarkersApart {
			// Matched by id rather than by place.
			j := slices.IndexFunc(got, func(v engine.Version) bool { return v.Key == w.key && v.VersionID == w.id })
			g = got[j]
		} else if g.Key != w.key || g.VersionID != w.id {
			t.Fatalf("entry %d is %s@%s marker=%v, want %s@%s marker=%v; the listing:%s",
				i, g.Key, g.VersionID, g.DeleteMarker, w.key, w.id, w.marker, describe(got))
		}
		if g.DeleteMarker != w.marker || g.IsLatest != latest {
			t.Fatalf("%s@%s listed marker=%v latest=%v, want marker=%v latest=%v; the listing:%s",
				g.Key, g.VersionID, g.DeleteMarker, g.IsLatest, w.marker, latest, describe(got))
		}
		if !w.marker && (g.Size != int64(len(w.body)) || g.ETag != md5Hex(w.body)) {
			t.Fatalf("%s@%s listed with size %d ETag %q, want %d %q", g.Key, g.VersionID, g.Size, g.ETag, len(w.body), md5Hex(w.body))
		}
		if g.LastModified.IsZero() {
			t.Fatalf("%s@%s listed without a time", g.Key, g.VersionID)
		}
	}
	// Starting after a key marker alone skips that key.
	page, err := h.Store.ListVersions(ctx, h.Bucket, "p/", "p/b", "")
	must(t, err)
	for _, v := range page.Versions {
		if v.Key <= "p/b" {
			t.Fatalf("a listing after key p/b returned %s", v.Key)
		}
	}
}

// Delete markers: PutDeleteMarker adds one (a version of its own, the
// current one); reading the key, or the marker by id, is Gone (the
// source saying the version does not exist), and the versions under it
// stay readable.
func testDeleteMarkers(t *testing.T, h Harness) {
	ctx := ctxOf(t)
	v1, err := h.Store.Put(ctx, h.Bucket, "k", engine.ObjectMeta{}, Payload([]byte("one")))
	must(t, err)
	dm, err := h.Store.PutDeleteMarker(ctx, h.Bucket, "k")
	must(t, err)
	if dm == "" || dm == v1 {
		t.Fatalf("PutDeleteMarker returned version id %q", dm)
	}
	_, err = h.Store.Get(ctx, engine.VersionRef{Bucket: h.Bucket, Key: "k"}, nil)
	wantClass(t, "Get of a key whose current version is a delete marker", err, engine.Gone, engine.ReasonSourceMissing)
	_, err = h.Store.Get(ctx, engine.VersionRef{Bucket: h.Bucket, Key: "k", VersionID: dm}, nil)
	wantClass(t, "Get of a delete marker by id", err, engine.Gone, engine.ReasonSourceMissing)
	_, err = h.Store.Get(ctx, engine.VersionRef{Bucket: h.Bucket, Key: "k", VersionID: dm}, &engine.ByteRange{First: 0, Last: 0})
	wantClass(t, "ranged Get of a delete marker by id", err, engine.Gone, engine.ReasonSourceMissing)
	_, _, _, err = h.Store.Head(ctx, h.Bucket, "k", dm)
	wantClass(t, "Head of a delete marker by id", err, engine.Gone, engine.ReasonSourceMissing)
	if _, got := read(t, h, engine.VersionRef{Bucket: h.Bucket, Key: "k", VersionID: v1}, nil); string(got) != "one" {
		t.Fatalf("the version under a marker reads %q", got)
	}
	// A second marker on top is a version of its own.
	dm2, err := h.Store.PutDeleteMarker(ctx, h.Bucket, "k")
	must(t, err)
	vs := walk(t, h, h.Bucket, "k")
	if h.Quirks.NoMarkerOnMarker {
		if dm2 != dm || len(vs) != 2 || vs[0].VersionID != dm || !vs[0].DeleteMarker || !vs[0].IsLatest || vs[1].VersionID != v1 {
			t.Fatalf("store said to write no marker on a marker returned %q (the first was %q) and lists %+v", dm2, dm, vs)
		}
	} else if len(vs) != 3 || vs[0].VersionID != dm2 || !vs[0].DeleteMarker || !vs[0].IsLatest || vs[1].VersionID != dm || !vs[1].DeleteMarker || vs[2].VersionID != v1 {
		t.Fatalf("after two markers the listing is %+v; S3 writes a second marker", vs)
	}
	// A key that has no version at all.
	v, err := h.Store.PutDeleteMarker(ctx, h.Bucket, "never")
	must(t, err)
	vs = walk(t, h, h.Bucket, "never")
	if h.Quirks.NoMarkerOnAbsentKey {
		if v != "" || len(vs) != 0 {
			t.Fatalf("store said to write no marker on an absent key returned %q and lists %+v", v, vs)
		}
	} else if v == "" || len(vs) != 1 || !vs[0].DeleteMarker || vs[0].VersionID != v {
		t.Fatalf("a marker on a key without versions: returned %q, listed %+v; S3 writes a marker", v, vs)
	}
}

// A bucket without versioning keeps one version of a key, the null
// version, which each write replaces: the engine copies it pinned by its
// ETag (contract, guarantee 8), so reads and copies of anything else must
// fail with ErrChanged.
func testNullVersions(t *testing.T, h Harness) {
	ctx := ctxOf(t)
	b := h.Unversioned
	first, second := []byte("first"), []byte("second!")
	v, err := h.Store.Put(ctx, b, "k", engine.ObjectMeta{Tags: map[string]string{"n": "1"}}, Payload(first))
	must(t, err)
	if v != "" && v != "null" {
		t.Fatalf("Put into a bucket without versioning returned version id %q", v)
	}
	pin := engine.VersionRef{Bucket: b, Key: "k", IfMatch: md5Hex(first)}
	if obj, got := read(t, h, pin, nil); !bytes.Equal(got, first) || obj.VersionID != "" && obj.VersionID != "null" {
		t.Fatalf("pinned read: %q, version %q", got, obj.VersionID)
	}
	_, err = h.Store.Put(ctx, b, "k", engine.ObjectMeta{Tags: map[string]string{"n": "2"}}, Payload(second))
	must(t, err)
	_, err = h.Store.Get(ctx, pin, nil)
	if !errors.Is(err, engine.ErrChanged) {
		t.Fatalf("a read pinned to the replaced content: %v, want ErrChanged", err)
	}
	// The engine's first read of an object is its byte 0.
	_, err = h.Store.Get(ctx, pin, &engine.ByteRange{First: 0, Last: 0})
	if !errors.Is(err, engine.ErrChanged) {
		t.Fatalf("a ranged read pinned to the replaced content: %v, want ErrChanged", err)
	}
	pin.IfMatch = md5Hex(second)
	if _, got := read(t, h, pin, nil); !bytes.Equal(got, second) {
		t.Fatalf("read pinned to the current content: %q", got)
	}
	if tags := tagsOf(t, h, b, "k", ""); !maps.Equal(tags, map[string]string{"n": "2"}) {
		t.Fatalf("tags of the null version %v, want the second write's", tags)
	}
	vs := walk(t, h, b, "k")
	if len(vs) != 1 || vs[0].VersionID != "" || !vs[0].IsLatest || vs[0].Size != int64(len(second)) || vs[0].ETag != md5Hex(second) {
		t.Fatalf("listing of a key without versioning: %+v, want one null version (id \"\") of the second write", vs)
	}
	if cp, ok := h.Store.(engine.ServerSideCopier); ok {
		_, err = cp.Copy(ctx, engine.VersionRef{Bucket: b, Key: "k", IfMatch: md5Hex(first)}, h.Other, "k", engine.ObjectMeta{})
		if !errors.Is(err, engine.ErrChanged) {
			t.Fatalf("a copy pinned to the replaced content: %v, want ErrChanged", err)
		}
		v, err := cp.Copy(ctx, pin, h.Other, "k", engine.ObjectMeta{})
		must(t, err)
		if _, got := read(t, h, engine.VersionRef{Bucket: h.Other, Key: "k", VersionID: v}, nil); !bytes.Equal(got, second) {
			t.Fatalf("copy of the null version holds %q", got)
		}
	}
}

// partSize is S3's minimum for all parts but the last.
const partSize = 5 << 20

// Multipart uploads, with and without CRC32C part checksums: parts listed
// with their numbers, ETags and sizes (how a copy resumes after a crash),
// the object made of them with the headers, metadata and tags given at
// creation, and S3's multipart ETag.
func testMultipart(t *testing.T, h Harness) {
	for _, sums := range []bool{false, true} {
		t.Run(fmt.Sprintf("checksums=%v", sums), func(t *testing.T) {
			ctx := ctxOf(t)
			key := fmt.Sprintf("mp-%v", sums)
			meta := fullMeta("multi")
			id, algo, err := h.Store.CreateMultipart(ctx, h.Bucket, key, meta, sums)
			must(t, err)
			if !sums && algo != "" {
				t.Fatalf("an upload without part checksums took on %q", algo)
			}
			if algo != "" && algo != "CRC32C" {
				t.Fatalf("checksum algorithm %q, want CRC32C or none", algo)
			}
			t.Logf("part checksums asked %v, kept %q", sums, algo)
			parts := [][]byte{random(t, partSize), random(t, 1234)}
			var done []engine.Part
			// Uploaded out of order, as parts in flight finish.
			for _, i := range []int{1, 0} {
				pl := Payload(parts[i])
				etag, err := h.Store.UploadPart(ctx, h.Bucket, key, id, int32(i+1), pl)
				must(t, err)
				if etag != md5Hex(parts[i]) {
					t.Fatalf("part %d ETag %q, want the MD5 %q", i+1, etag, md5Hex(parts[i]))
				}
				p := engine.Part{Number: int32(i + 1), ETag: etag, Size: int64(len(parts[i]))}
				if algo != "" {
					p.CRC32C = engine.CRC32CBase64(pl.CRC32C)
				}
				done = append(done, p)
			}
			slices.SortFunc(done, func(a, b engine.Part) int { return int(a.Number - b.Number) })
			listed, err := h.Store.ListParts(ctx, h.Bucket, key, id)
			must(t, err)
			if len(listed) != 2 {
				t.Fatalf("ListParts: %+v, want 2 parts", listed)
			}
			for i, p := range listed {
				if p.Number != done[i].Number || p.ETag != done[i].ETag || p.Size != done[i].Size {
					t.Fatalf("ListParts part %d: %+v, want %+v", i, p, done[i])
				}
			}
			v, err := h.Store.CompleteMultipart(ctx, h.Bucket, key, id, done)
			must(t, err)
			obj, got := read(t, h, engine.VersionRef{Bucket: h.Bucket, Key: key, VersionID: v}, nil)
			if !bytes.Equal(got, append(slices.Clone(parts[0]), parts[1]...)) {
				t.Fatal("the completed object is not its parts")
			}
			sum := md5.New()
			for _, p := range parts {
				s := md5.Sum(p)
				sum.Write(s[:])
			}
			if want := fmt.Sprintf("%x-2", sum.Sum(nil)); obj.ETag != want {
				t.Fatalf("multipart ETag %q, want %q", obj.ETag, want)
			}
			checkMeta(t, "Get of a multipart object", obj.ObjectMeta, obj.TagCount, meta)
			if tags := tagsOf(t, h, h.Bucket, key, v); !maps.Equal(tags, meta.Tags) {
				t.Fatalf("tags %v, want %v", tags, meta.Tags)
			}
		})
	}
}

// An aborted upload is gone: listing its parts fails for good (the copier
// then starts over), and no version was written.
func testMultipartAbort(t *testing.T, h Harness) {
	ctx := ctxOf(t)
	id, _, err := h.Store.CreateMultipart(ctx, h.Bucket, "k", engine.ObjectMeta{}, true)
	must(t, err)
	_, err = h.Store.UploadPart(ctx, h.Bucket, "k", id, 1, Payload([]byte("part")))
	must(t, err)
	must(t, h.Store.AbortMultipart(ctx, h.Bucket, "k", id))
	_, err = h.Store.ListParts(ctx, h.Bucket, "k", id)
	wantClass(t, "ListParts of an aborted upload", err, engine.Permanent, "")
	_, err = h.Store.CompleteMultipart(ctx, h.Bucket, "k", id, []engine.Part{{Number: 1, ETag: md5Hex([]byte("part"))}})
	wantClass(t, "CompleteMultipart of an aborted upload", err, engine.Permanent, "")
	if vs := walk(t, h, h.Bucket, "k"); len(vs) != 0 {
		t.Fatalf("an aborted upload left versions %+v", vs)
	}
	// A completion that names a part never uploaded is refused.
	id, _, err = h.Store.CreateMultipart(ctx, h.Bucket, "k", engine.ObjectMeta{}, false)
	must(t, err)
	defer h.Store.AbortMultipart(ctx, h.Bucket, "k", id)
	etag, err := h.Store.UploadPart(ctx, h.Bucket, "k", id, 1, Payload([]byte("part")))
	must(t, err)
	_, err = h.Store.CompleteMultipart(ctx, h.Bucket, "k", id, []engine.Part{{Number: 1, ETag: etag}, {Number: 2, ETag: etag}})
	wantClass(t, "CompleteMultipart naming a part never uploaded", err, engine.Permanent, "")
}

func copier(t *testing.T, h Harness) engine.ServerSideCopier {
	cp, ok := h.Store.(engine.ServerSideCopier)
	if !ok {
		// Not every store can copy; the engine then reads and writes.
		t.Skip("the store does not implement engine.ServerSideCopier")
	}
	return cp
}

// Current is a key's newest entry, a delete marker included; a key with
// none has no current version.
func testCurrent(t *testing.T, h Harness) {
	ctx := ctxOf(t)
	if _, ok, err := h.Store.Current(ctx, h.Bucket, "nothing here"); err != nil || ok {
		t.Fatalf("Current of a key never written: ok %v, %v", ok, err)
	}
	_, err := h.Store.Put(ctx, h.Bucket, "cur", engine.ObjectMeta{}, Payload([]byte("one")))
	must(t, err)
	v2, err := h.Store.Put(ctx, h.Bucket, "cur", engine.ObjectMeta{}, Payload([]byte("two!")))
	must(t, err)
	// A longer key sharing the prefix is not this key's.
	_, err = h.Store.Put(ctx, h.Bucket, "cur-longer", engine.ObjectMeta{}, Payload([]byte("x")))
	must(t, err)
	cur, ok, err := h.Store.Current(ctx, h.Bucket, "cur")
	if err != nil || !ok || cur.VersionID != v2 || cur.DeleteMarker || cur.Size != 4 {
		t.Fatalf("Current after two writes: %+v, ok %v, %v; want version %s of 4 bytes", cur, ok, err, v2)
	}
	dm, err := h.Store.PutDeleteMarker(ctx, h.Bucket, "cur")
	must(t, err)
	cur, ok, err = h.Store.Current(ctx, h.Bucket, "cur")
	if err != nil || !ok || !cur.DeleteMarker || cur.VersionID != dm {
		t.Fatalf("Current after a delete: %+v, ok %v, %v; want the marker %s", cur, ok, err, dm)
	}
	_, _, err = h.Store.Current(ctx, missingBucket(h), "cur")
	wantClass(t, "Current in a bucket that does not exist", err, engine.Permanent, engine.ReasonNoSuchBucket)
}

// CopyVersion puts a copy of an older version on top of its key, inside
// the store, with its bytes, headers, metadata and tags: what a late
// version's write is followed by.
func testCopyVersion(t *testing.T, h Harness) {
	ctx := ctxOf(t)
	body := random(t, 40_000)
	meta := fullMeta("newest")
	v1, err := h.Store.Put(ctx, h.Bucket, "k", meta, Payload(body))
	must(t, err)
	_, err = h.Store.Put(ctx, h.Bucket, "k", engine.ObjectMeta{}, Payload([]byte("late")))
	must(t, err)
	v, err := h.Store.CopyVersion(ctx, h.Bucket, "k", v1)
	must(t, err)
	cur, ok, err := h.Store.Current(ctx, h.Bucket, "k")
	if err != nil || !ok || cur.VersionID != v || v == v1 {
		t.Fatalf("after CopyVersion the current version is %+v (%v), want the new copy %s", cur, err, v)
	}
	obj, got := read(t, h, engine.VersionRef{Bucket: h.Bucket, Key: "k", VersionID: v}, nil)
	if !bytes.Equal(got, body) {
		t.Fatalf("the copy holds %d bytes, not the version copied", len(got))
	}
	checkMeta(t, "Get of a version copied on top", obj.ObjectMeta, obj.TagCount, meta)
	if tags := tagsOf(t, h, h.Bucket, "k", v); !maps.Equal(tags, meta.Tags) {
		t.Fatalf("tags of the copy %v, want %v", tags, meta.Tags)
	}
	if vs := walk(t, h, h.Bucket, "k"); len(vs) != 3 {
		t.Fatalf("%d versions after the copy, want 3", len(vs))
	}
}

// Server-side copy of a version, inside one endpoint and across buckets:
// the source version's bytes with the replica's own headers, metadata and
// tags (none of the source's); pinned by IfMatch, a copy of anything else
// is ErrChanged; a copy of a version that is gone is Gone.
func testCopy(t *testing.T, h Harness) {
	cp := copier(t, h)
	ctx := ctxOf(t)
	body := random(t, 50_000)
	v1, err := h.Store.Put(ctx, h.Bucket, "src key+1", fullMeta("source"), Payload(body))
	must(t, err)
	_, err = h.Store.Put(ctx, h.Bucket, "src key+1", engine.ObjectMeta{}, Payload([]byte("newer")))
	must(t, err)
	meta := fullMeta("replica")
	ref := engine.VersionRef{Bucket: h.Bucket, Key: "src key+1", VersionID: v1}
	v, err := cp.Copy(ctx, ref, h.Other, "dst/k", meta)
	must(t, err)
	obj, got := read(t, h, engine.VersionRef{Bucket: h.Other, Key: "dst/k", VersionID: v}, nil)
	if !bytes.Equal(got, body) || obj.ETag != md5Hex(body) {
		t.Fatalf("the copy holds %d bytes with ETag %q, not the older source version", len(got), obj.ETag)
	}
	checkMeta(t, "Get of a copy", obj.ObjectMeta, obj.TagCount, meta)
	if tags := tagsOf(t, h, h.Other, "dst/k", v); !maps.Equal(tags, meta.Tags) {
		t.Fatalf("tags of the copy %v, want %v", tags, meta.Tags)
	}
	// Pinned to the right ETag it copies; to another it does not.
	ref.IfMatch = md5Hex(body)
	if _, err := cp.Copy(ctx, ref, h.Other, "dst/k", meta); err != nil {
		t.Fatalf("a copy pinned to the source's ETag: %v", err)
	}
	ref.IfMatch = md5Hex([]byte("something else"))
	_, err = cp.Copy(ctx, ref, h.Other, "dst/k", meta)
	if !errors.Is(err, engine.ErrChanged) {
		t.Fatalf("a copy pinned to another ETag: %v, want ErrChanged", err)
	}
	wantClass(t, "a copy pinned to another ETag", err, engine.Transient, "")
	// Reads are pinned the same way.
	_, err = h.Store.Get(ctx, ref, nil)
	if !errors.Is(err, engine.ErrChanged) {
		t.Fatalf("a read pinned to another ETag: %v, want ErrChanged", err)
	}
	ref.IfMatch = ""
	if vs := walk(t, h, h.Other, "dst/k"); len(vs) != 2 {
		t.Fatalf("%d versions of the copy's key, want 2 (a refused copy writes nothing)", len(vs))
	}
	// The source version gone: the copy says so.
	must(t, h.DeleteVersion(ctx, h.Bucket, "src key+1", v1))
	_, err = cp.Copy(ctx, ref, h.Other, "dst/k", meta)
	wantClass(t, "Copy of a deleted version", err, engine.Gone, engine.ReasonSourceMissing)
	_, err = cp.Copy(ctx, engine.VersionRef{Bucket: h.Bucket, Key: "never written"}, h.Other, "dst/k", meta)
	wantClass(t, "Copy of a key that never was", err, engine.Gone, engine.ReasonSourceMissing)
	_, err = cp.Copy(ctx, engine.VersionRef{Bucket: h.Bucket, Key: "src key+1"}, missingBucket(h), "dst/k", meta)
	wantClass(t, "Copy into a bucket that does not exist", err, engine.Permanent, engine.ReasonNoSuchBucket)
}

// UploadPartCopy: an object copied in ranges into an upload is the
// source's bytes; pinned by IfMatch, a part of anything else is
// ErrChanged. The engine creates uploads of copied parts without part
// checksums (stores disagree on what a copied part's checksum is), and so
// does this test.
func testCopyPart(t *testing.T, h Harness) {
	cp := copier(t, h)
	ctx := ctxOf(t)
	body := random(t, partSize+4321)
	src, err := h.Store.Put(ctx, h.Bucket, "big", engine.ObjectMeta{}, Payload(body))
	must(t, err)
	ref := engine.VersionRef{Bucket: h.Bucket, Key: "big", VersionID: src, IfMatch: md5Hex(body)}
	meta := fullMeta("parts")
	id, algo, err := h.Store.CreateMultipart(ctx, h.Other, "copied", meta, false)
	must(t, err)
	if algo != "" {
		t.Fatalf("an upload without part checksums took on %q", algo)
	}
	defer h.Store.AbortMultipart(ctx, h.Other, "copied", id)
	var parts []engine.Part
	for i, r := range []engine.ByteRange{{First: 0, Last: partSize - 1}, {First: partSize, Last: int64(len(body)) - 1}} {
		etag, err := cp.CopyPart(ctx, ref, r, h.Other, "copied", id, int32(i+1))
		must(t, err)
		if etag != md5Hex(body[r.First:r.Last+1]) {
			t.Fatalf("copied part %d ETag %q, want the MD5 of its bytes", i+1, etag)
		}
		parts = append(parts, engine.Part{Number: int32(i + 1), ETag: etag})
	}
	bad := ref
	bad.IfMatch = md5Hex([]byte("another"))
	_, err = cp.CopyPart(ctx, bad, engine.ByteRange{First: 0, Last: 9}, h.Other, "copied", id, 3)
	if !errors.Is(err, engine.ErrChanged) {
		t.Fatalf("a part pinned to another ETag: %v, want ErrChanged", err)
	}
	listed, err := h.Store.ListParts(ctx, h.Other, "copied", id)
	must(t, err)
	if len(listed) != 2 || listed[0].ETag != parts[0].ETag || listed[1].ETag != parts[1].ETag || listed[0].Size != partSize {
		t.Fatalf("ListParts after copies: %+v", listed)
	}
	v, err := h.Store.CompleteMultipart(ctx, h.Other, "copied", id, parts)
	must(t, err)
	obj, got := read(t, h, engine.VersionRef{Bucket: h.Other, Key: "copied", VersionID: v}, nil)
	if !bytes.Equal(got, body) {
		t.Fatal("the object copied in parts is not the source's bytes")
	}
	checkMeta(t, "Get of an object copied in parts", obj.ObjectMeta, obj.TagCount, meta)
	// The source version gone: the part copy says so.
	must(t, h.DeleteVersion(ctx, h.Bucket, "big", src))
	id2, _, err := h.Store.CreateMultipart(ctx, h.Other, "copied", meta, false)
	must(t, err)
	defer h.Store.AbortMultipart(ctx, h.Other, "copied", id2)
	ref.IfMatch = ""
	_, err = cp.CopyPart(ctx, ref, engine.ByteRange{First: 0, Last: 9}, h.Other, "copied", id2, 1)
	wantClass(t, "CopyPart of a deleted version", err, engine.Gone, engine.ReasonSourceMissing)
}

// replicaMeta is what the engine writes on a replica of source version
// src.
func replicaMeta(src, pass string) engine.ObjectMeta {
	m := map[string]string{engine.MetaSourceVersion: src}
	if pass != "" {
		m[engine.MetaPass] = pass
	}
	return engine.ObjectMeta{Metadata: m}
}

// FindReplica, the lookup after a crash: a version written at or after
// since whose metadata names the source version (and pass), or only the
// sequencer (the newest version's replica, for a late one); versions of
// another size are not candidates; the search stops at the version
// ReplicaOf.After names (an earlier write's) and at versions older than
// since.
func testFindReplica(t *testing.T, h Harness) {
	ctx := ctxOf(t)
	find := func(of engine.ReplicaOf, since time.Time) (string, bool) {
		t.Helper()
		v, ok, err := h.Store.FindReplica(ctx, h.Bucket, "k", engine.ActionCopy, of, since)
		must(t, err)
		return v, ok
	}
	since := time.Now().Add(-time.Minute)
	if _, ok := find(engine.ReplicaOf{Version: "s1"}, since); ok {
		t.Fatal("found a replica of a key that has no version")
	}
	r1, err := h.Store.Put(ctx, h.Bucket, "k", replicaMeta("s1", ""), Payload([]byte("12345")))
	must(t, err)
	r1b, err := h.Store.Put(ctx, h.Bucket, "k", replicaMeta("s1", "again"), Payload([]byte("12345")))
	must(t, err)
	m2 := replicaMeta("s2", "")
	m2.Metadata[engine.MetaSourceSequencer] = "0002"
	r2, err := h.Store.Put(ctx, h.Bucket, "k", m2, Payload([]byte("123")))
	must(t, err)
	_, err = h.Store.PutDeleteMarker(ctx, h.Bucket, "k")
	must(t, err)
	// Newer replicas of other versions put those above on a later page.
	for i := 0; i < h.PageSize && i < 20; i++ {
		_, err = h.Store.Put(ctx, h.Bucket, "k", replicaMeta(fmt.Sprintf("n%d", i), ""), Payload([]byte("newer")))
		must(t, err)
	}
	// Another key's versions are never this key's.
	_, err = h.Store.Put(ctx, h.Bucket, "k2", replicaMeta("s9", ""), Payload([]byte("9")))
	must(t, err)
	for _, c := range []struct {
		what string
		of   engine.ReplicaOf
		want string
	}{
		{"by source version, under newer versions and a marker", engine.ReplicaOf{Version: "s1"}, r1},
		{"by pass", engine.ReplicaOf{Version: "s1", Pass: "again"}, r1b},
		{"with the size", engine.ReplicaOf{Version: "s1", Size: 5}, r1},
		{"with another size", engine.ReplicaOf{Version: "s1", Size: 6}, ""},
		{"stopped by After at an earlier write", engine.ReplicaOf{Version: "s1", After: engine.VersionDigest(r1b)}, ""},
		{"with After below it", engine.ReplicaOf{Version: "s1", Pass: "again", After: engine.VersionDigest(r1)}, r1b},
		{"of another key's source version", engine.ReplicaOf{Version: "s9"}, ""},
		{"of a source version never copied", engine.ReplicaOf{Version: "s3"}, ""},
		{"by sequencer alone", engine.ReplicaOf{Sequencer: "0002", BySequencer: true}, r2},
		{"by a sequencer never copied", engine.ReplicaOf{Sequencer: "0003", BySequencer: true}, ""},
	} {
		v, ok := find(c.of, since)
		if ok != (c.want != "") || v != c.want && ok {
			t.Errorf("%s: found %q (%v), want %q", c.what, v, ok, c.want)
		}
	}
	// Versions written before since are earlier runs', whatever their
	// metadata (an adapter may allow for clock skew: since is far off).
	if v, ok := find(engine.ReplicaOf{Version: "s1"}, time.Now().Add(time.Hour)); ok {
		t.Errorf("found %s, written before since", v)
	}
}

// FindReplica of a delete marker: the key's newest version, if it is a
// marker written at or after since and not the one After names.
func testFindReplicaMarker(t *testing.T, h Harness) {
	ctx := ctxOf(t)
	since := time.Now().Add(-time.Minute)
	find := func(after uint64, since time.Time) (string, bool) {
		t.Helper()
		v, ok, err := h.Store.FindReplica(ctx, h.Bucket, "k", engine.ActionDeleteMarker, engine.ReplicaOf{Version: "dm", After: after}, since)
		must(t, err)
		return v, ok
	}
	if _, ok := find(0, since); ok {
		t.Fatal("found a delete marker on a key that has no version")
	}
	_, err := h.Store.Put(ctx, h.Bucket, "k", replicaMeta("s1", ""), Payload([]byte("1")))
	must(t, err)
	if _, ok := find(0, since); ok {
		t.Fatal("found a delete marker where the newest version is not one")
	}
	dm, err := h.Store.PutDeleteMarker(ctx, h.Bucket, "k")
	must(t, err)
	if v, ok := find(0, since); !ok || v != dm {
		t.Fatalf("the newest version, marker %s, not found (got %q %v)", dm, v, ok)
	}
	if v, ok := find(engine.VersionDigest(dm), since); ok {
		t.Fatalf("found %s, the earlier write After names", v)
	}
	if v, ok := find(0, time.Now().Add(time.Hour)); ok {
		t.Fatalf("found %s, written before since", v)
	}
	_, err = h.Store.Put(ctx, h.Bucket, "k", replicaMeta("s2", ""), Payload([]byte("2")))
	must(t, err)
	if v, ok := find(0, since); ok {
		t.Fatalf("found marker %s under a newer version: a later delete's marker would be its newest", v)
	}
}

func missingBucket(h Harness) string { return h.Bucket + "-missing" }

// Gone is only the source's word that a version does not exist:
// NoSuchKey, NoSuchVersion, a delete marker.
func testGone(t *testing.T, h Harness) {
	ctx := ctxOf(t)
	get := func(key, version string) error {
		obj, err := h.Store.Get(ctx, engine.VersionRef{Bucket: h.Bucket, Key: key, VersionID: version}, nil)
		if err == nil {
			obj.Body.Close()
		}
		return err
	}
	wantClass(t, "Get of a key never written", get("never", ""), engine.Gone, engine.ReasonSourceMissing)
	_, err := h.Store.Tags(ctx, h.Bucket, "never", "")
	wantClass(t, "Tags of a key never written", err, engine.Gone, engine.ReasonSourceMissing)
	v1, err := h.Store.Put(ctx, h.Bucket, "k", engine.ObjectMeta{}, Payload([]byte("1")))
	must(t, err)
	v2, err := h.Store.Put(ctx, h.Bucket, "k", engine.ObjectMeta{}, Payload([]byte("2")))
	must(t, err)
	must(t, h.DeleteVersion(ctx, h.Bucket, "k", v1))
	wantClass(t, "Get of a deleted version", get("k", v1), engine.Gone, engine.ReasonSourceMissing)
	_, err = h.Store.Get(ctx, engine.VersionRef{Bucket: h.Bucket, Key: "k", VersionID: v1}, &engine.ByteRange{First: 0, Last: 0})
	wantClass(t, "ranged Get of a deleted version", err, engine.Gone, engine.ReasonSourceMissing)
	_, err = h.Store.Tags(ctx, h.Bucket, "k", v1)
	wantClass(t, "Tags of a deleted version", err, engine.Gone, engine.ReasonSourceMissing)
	// A version id that exists, of another key.
	_, err = h.Store.Put(ctx, h.Bucket, "other", engine.ObjectMeta{}, Payload([]byte("o")))
	must(t, err)
	wantClass(t, "Get of another key's version id", get("other", v2), engine.Gone, engine.ReasonSourceMissing)
	// The last version deleted: the key is gone.
	must(t, h.DeleteVersion(ctx, h.Bucket, "k", v2))
	wantClass(t, "Get of a key whose versions were all deleted", get("k", ""), engine.Gone, engine.ReasonSourceMissing)
	// A HEAD's 404 has no S3 code: not the source's word, and not to be
	// retried forever either.
	_, _, _, err = h.Store.Head(ctx, h.Bucket, "k", v2)
	wantClass(t, "Head of a deleted version", err, engine.Permanent, "")
}

// Permanent: a bucket that does not exist, and credentials the store
// refuses, fail until someone acts.
func testPermanent(t *testing.T, h Harness) {
	ctx := ctxOf(t)
	nb := missingBucket(h)
	_, err := h.Store.Put(ctx, nb, "k", engine.ObjectMeta{}, Payload([]byte("x")))
	wantClass(t, "Put into a bucket that does not exist", err, engine.Permanent, engine.ReasonNoSuchBucket)
	_, err = h.Store.Get(ctx, engine.VersionRef{Bucket: nb, Key: "k"}, nil)
	wantClass(t, "Get from a bucket that does not exist", err, engine.Permanent, engine.ReasonNoSuchBucket)
	_, err = h.Store.ListVersions(ctx, nb, "", "", "")
	wantClass(t, "ListVersions of a bucket that does not exist", err, engine.Permanent, engine.ReasonNoSuchBucket)
	_, _, err = h.Store.CreateMultipart(ctx, nb, "k", engine.ObjectMeta{}, false)
	wantClass(t, "CreateMultipart in a bucket that does not exist", err, engine.Permanent, engine.ReasonNoSuchBucket)
	_, err = h.Store.PutDeleteMarker(ctx, nb, "k")
	wantClass(t, "PutDeleteMarker in a bucket that does not exist", err, engine.Permanent, engine.ReasonNoSuchBucket)

	v, err := h.Store.Put(ctx, h.Bucket, "k", engine.ObjectMeta{}, Payload([]byte("x")))
	must(t, err)
	_, err = h.Denied.Put(ctx, h.Bucket, "k", engine.ObjectMeta{}, Payload([]byte("x")))
	wantClass(t, "Put with refused credentials", err, engine.Permanent, engine.ReasonAccessDenied)
	_, err = h.Denied.Get(ctx, engine.VersionRef{Bucket: h.Bucket, Key: "k", VersionID: v}, nil)
	wantClass(t, "Get with refused credentials", err, engine.Permanent, engine.ReasonAccessDenied)
	_, err = h.Denied.ListVersions(ctx, h.Bucket, "", "", "")
	wantClass(t, "ListVersions with refused credentials", err, engine.Permanent, engine.ReasonAccessDenied)
	_, _, err = h.Denied.FindReplica(ctx, h.Bucket, "k", engine.ActionCopy, engine.ReplicaOf{Version: "s"}, time.Now().Add(-time.Minute))
	wantClass(t, "FindReplica with refused credentials", err, engine.Permanent, engine.ReasonAccessDenied)
}

// Transient: throttling, 5xx, and no answer at all are retried; once the
// fault ends the same calls succeed.
func testTransient(t *testing.T, h Harness) {
	ctx := ctxOf(t)
	v, err := h.Store.Put(ctx, h.Bucket, "k", engine.ObjectMeta{}, Payload([]byte("x")))
	must(t, err)
	for _, c := range []struct {
		fault  Fault
		reason string
	}{
		{Throttle, engine.ReasonThrottled},
		{ServerError, engine.ReasonServerError},
		{Reset, engine.ReasonNetwork},
		{Refused, engine.ReasonNetwork},
		{Stalled, engine.ReasonNetwork},
	} {
		h.Faults.Set(c.fault)
		_, err := h.Faulty.Put(ctx, h.Bucket, "k", engine.ObjectMeta{}, Payload(bytes.Repeat([]byte("y"), 4096)))
		wantClass(t, "Put while the store answers "+c.fault.String(), err, engine.Transient, c.reason)
		if c.fault != Reset { // reset cuts a request's body: reads have none
			obj, err := h.Faulty.Get(ctx, engine.VersionRef{Bucket: h.Bucket, Key: "k", VersionID: v}, nil)
			if err == nil {
				obj.Body.Close()
			}
			wantClass(t, "Get while the store answers "+c.fault.String(), err, engine.Transient, c.reason)
			_, err = h.Faulty.ListVersions(ctx, h.Bucket, "", "", "")
			wantClass(t, "ListVersions while the store answers "+c.fault.String(), err, engine.Transient, c.reason)
		}
		h.Faults.Clear()
		if _, err := h.Faulty.Put(ctx, h.Bucket, "k", engine.ObjectMeta{}, Payload([]byte("z"))); err != nil {
			t.Fatalf("Put after %s ended: %v", c.fault, err)
		}
	}
}
