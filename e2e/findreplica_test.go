package e2e

import (
	"bytes"
	"fmt"
	"hash/crc32"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/internal/faultproxy"
	"github.com/s3replicad/s3replicad/internal/testenv"
	"github.com/s3replicad/s3replicad/s3store"
)

// After a crash every unfinished copy looks for its replica before
// writing. Against the real store: a copy is known by its source version
// and pass; a delete marker counts only while it is the key's newest
// version, so an earlier delete's marker is not taken for a later one's.
func TestFindReplicaOnARealStore(t *testing.T) {
	t.Parallel()
	w := newWorld(t, worldOpts{})
	st, err := s3store.New(w.ctx, s3store.Config{Endpoint: env.Destination, PathStyle: true,
		AccessKeyID: testenv.AccessKey, SecretAccessKey: testenv.SecretKey})
	must(t, err)
	since := time.Now()
	find := func(a engine.Action, src, pass string) (string, bool) {
		t.Helper()
		v, ok, err := st.FindReplica(w.ctx, w.dstBucket, "k", a, engine.ReplicaOf{Version: src, Pass: pass}, since)
		must(t, err)
		return v, ok
	}
	if _, ok := find(engine.ActionDeleteMarker, "dm1", ""); ok {
		t.Fatal("found a delete marker on an empty key")
	}
	buf := []byte("hello")
	put := func(src string, extra ...string) string {
		t.Helper()
		meta := engine.ObjectMeta{Metadata: map[string]string{engine.MetaSourceVersion: src}}
		for i := 0; i+1 < len(extra); i += 2 {
			meta.Metadata[extra[i]] = extra[i+1]
		}
		v, err := st.Put(w.ctx, w.dstBucket, "k", meta, engine.Payload{Data: buf, CRC32C: crc32.Checksum(buf, crc32.MakeTable(crc32.Castagnoli))})
		must(t, err)
		return v
	}
	put("s1")
	dm1, err := st.PutDeleteMarker(w.ctx, w.dstBucket, "k")
	must(t, err)
	if v, ok := find(engine.ActionDeleteMarker, "dm1", ""); !ok || v != dm1 {
		t.Fatalf("delete marker %s not found as the newest version (got %q, %v)", dm1, v, ok)
	}
	// A marker known to be an earlier write's is not this one's.
	if _, ok, err := st.FindReplica(w.ctx, w.dstBucket, "k", engine.ActionDeleteMarker, engine.ReplicaOf{After: engine.VersionDigest(dm1)}, since); err != nil || ok {
		t.Fatalf("an earlier write's marker %s was taken for a later delete's (%v)", dm1, err)
	}
	v2 := put("s2")
	if v, ok := find(engine.ActionDeleteMarker, "dm2", ""); ok {
		t.Fatalf("an earlier delete's marker %s was taken for a later delete's", v)
	}
	if v, ok := find(engine.ActionCopy, "s2", ""); !ok || v != v2 {
		t.Fatalf("copy of s2 not found (got %q, %v; want %s)", v, ok, v2)
	}
	if _, ok := find(engine.ActionCopy, "s3", ""); ok {
		t.Fatal("found a copy of a version never written")
	}
	if _, ok := find(engine.ActionCopy, "s2", "backfill-1"); ok {
		t.Fatal("the first copy was taken for a later pass")
	}
	// Writes of a null version are told apart by their sequencer.
	n1 := put("null", engine.MetaSourceSequencer, "0A")
	seq := func(s string) (string, bool) {
		t.Helper()
		v, ok, err := st.FindReplica(w.ctx, w.dstBucket, "k", engine.ActionCopy, engine.ReplicaOf{Sequencer: s}, since)
		must(t, err)
		return v, ok
	}
	if v, ok := seq("0A"); !ok || v != n1 {
		t.Fatalf("null-version replica of sequencer 0A not found (got %q, %v; want %s)", v, ok, n1)
	}
	if v, ok := seq("0B"); ok {
		t.Fatalf("the replica of an earlier null-version write (%s) was taken for a later one's", v)
	}

	// On a hot key the search stops at the last recorded write, and reads
	// the metadata of versions of the right size only: after a crash each
	// unfinished op costs a listing and a HEAD or two, not one per version.
	proxy, err := faultproxy.Start(env.Destination)
	must(t, err)
	defer proxy.Close()
	counted, err := s3store.New(w.ctx, s3store.Config{Endpoint: proxy.URL(), PathStyle: true,
		AccessKeyID: testenv.AccessKey, SecretAccessKey: testenv.SecretKey})
	must(t, err)
	var hot []string
	body := bytes.Repeat([]byte("h"), 100)
	for i := 0; i < 30; i++ {
		meta := engine.ObjectMeta{Metadata: map[string]string{engine.MetaSourceVersion: fmt.Sprintf("h%d", i)}}
		v, err := st.Put(w.ctx, w.dstBucket, "hot", meta, engine.Payload{Data: body, CRC32C: crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli))})
		must(t, err)
		hot = append(hot, v)
	}
	odd := []byte("odd size")
	_, err = st.Put(w.ctx, w.dstBucket, "hot", engine.ObjectMeta{Metadata: map[string]string{engine.MetaSourceVersion: "other"}},
		engine.Payload{Data: odd, CRC32C: crc32.Checksum(odd, crc32.MakeTable(crc32.Castagnoli))})
	must(t, err)
	look := func(of engine.ReplicaOf) (string, bool, int64) {
		t.Helper()
		before := proxy.Requests()
		v, ok, err := counted.FindReplica(w.ctx, w.dstBucket, "hot", engine.ActionCopy, of, since)
		must(t, err)
		return v, ok, proxy.Requests() - before
	}
	if v, ok, n := look(engine.ReplicaOf{Version: "h29", Size: 100, After: engine.VersionDigest(hot[28])}); !ok || v != hot[29] || n > 2 {
		t.Fatalf("the write after the last recorded one: found %v (%s, want %s) in %d requests, want a listing and one HEAD", ok, v, hot[29], n)
	}
	if _, ok, n := look(engine.ReplicaOf{Version: "h30", Size: 100, After: engine.VersionDigest(hot[29])}); ok || n > 1 {
		t.Fatalf("a write that never happened: found %v in %d requests, want one listing", ok, n)
	}
}
