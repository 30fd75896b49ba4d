package reconcile

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/engine"
)

// listing is a bucket's versions in S3's order, served a few at a time.
type listing struct {
	versions []engine.Version
	pageSize int
	calls    int
	failNext int // transient failures to answer first
}

func (l *listing) ListVersions(_ context.Context, _, prefix, km, vm string) (engine.VersionPage, error) {
	l.calls++
	if l.failNext > 0 {
		l.failNext--
		return engine.VersionPage{}, &engine.Error{Class: engine.Transient, Reason: engine.ReasonNetwork, Err: errors.New("connection reset")}
	}
	start := 0
	if km != "" {
		start = len(l.versions)
		for i, v := range l.versions {
			if v.Key > km || v.Key == km && vm != "" && i > 0 && l.versions[i-1].Key == km && l.versions[i-1].VersionID == vm {
				start = i
				break
			}
		}
	}
	var page engine.VersionPage
	for i := start; i < len(l.versions); i++ {
		v := l.versions[i]
		if !strings.HasPrefix(v.Key, prefix) {
			continue
		}
		if len(page.Versions) == l.pageSize {
			last := page.Versions[len(page.Versions)-1]
			page.Truncated, page.NextKeyMarker, page.NextVersionIDMarker = true, last.Key, last.VersionID
			break
		}
		page.Versions = append(page.Versions, v)
	}
	return page, nil
}

func ver(key, id, etag string, size int64, latest bool) engine.Version {
	return engine.Version{Key: key, VersionID: id, ETag: etag, Size: size, IsLatest: latest}
}

// Keys that are prefixes of one another, keys split across pages, keys on
// one side only and a destination prefix: every key comes once, in order,
// with all its versions, and the listings are read once each.
func TestWalkPairsBothListingsInKeyOrder(t *testing.T) {
	src := &listing{pageSize: 2, versions: []engine.Version{
		ver("a", "a2", "e", 1, true), ver("a", "a1", "e", 1, false),
		ver("a/b", "ab1", "e", 1, true),
		ver("ab", "x3", "e", 1, true), ver("ab", "x2", "e", 1, false), ver("ab", "x1", "e", 1, false),
		ver("only-source", "o1", "e", 1, true),
		ver("z", "z1", "e", 1, true),
	}}
	dst := &listing{pageSize: 3, versions: []engine.Version{
		ver("bk/a", "d1", "e", 1, true),
		ver("bk/ab", "d3", "e", 1, true), ver("bk/ab", "d2", "e", 1, false),
		ver("bk/extra", "d4", "e", 1, true),
		ver("bk/z", "d5", "e", 1, true),
	}}
	rule := engine.Rule{ID: "r", SourceBucket: "src", DestinationBucket: "dst", DestinationPrefix: "bk/"}
	var got []string
	err := Walk(context.Background(), src, dst, rule, "", func(p Pair) error {
		got = append(got, fmt.Sprintf("%s->%s:%d/%d", p.Key, p.DestKey, len(p.Source), len(p.Dest)))
		if p.DestListedAt.IsZero() {
			t.Errorf("%s: no listing time", p.Key)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"a->bk/a:2/1", "a/b->bk/a/b:1/0", "ab->bk/ab:3/2", "extra->bk/extra:0/1", "only-source->bk/only-source:1/0", "z->bk/z:1/1"}
	if !slices.Equal(got, want) {
		t.Fatalf("pairs\n %v\nwant\n %v", got, want)
	}
	if src.calls != 4 || dst.calls != 2 {
		t.Fatalf("%d source and %d destination listing calls, want one per page (4 and 2)", src.calls, dst.calls)
	}
	// Resuming after a key starts on both sides after it.
	got = nil
	must(t, Walk(context.Background(), src, dst, rule, "ab", func(p Pair) error { got = append(got, p.Key); return nil }))
	if !slices.Equal(got, []string{"extra", "only-source", "z"}) {
		t.Fatalf("resumed after ab: %v", got)
	}
	// A listing that fails for a moment is asked again.
	src.failNext = 2
	must(t, Walk(context.Background(), src, dst, rule, "", func(Pair) error { return nil }))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type heads struct {
	meta map[string]map[string]string // version -> metadata
	n    int
}

func (h *heads) Head(_ context.Context, _, _, v string) (int64, string, map[string]string, error) {
	h.n++
	return 0, "", h.meta[v], nil
}

// Inspect reads a replica's metadata only where the listing cannot tell:
// a single-part ETag and size that occur once on each side identify the
// content; a multipart ETag, or a content written twice, takes a HEAD.
func TestInspectHeadsOnlyWhereTheListingCannotTell(t *testing.T) {
	src := []engine.Version{
		ver("k", "s4", "big-3", 30<<20, true), // multipart
		ver("k", "s3", "aaaa", 5, false),      // same content as s1
		ver("k", "s2", "bbbb", 7, false),
		ver("k", "s1", "aaaa", 5, false),
	}
	dst := []engine.Version{
		ver("k", "d4", "other-2", 30<<20, true),
		ver("k", "d3", "aaaa", 5, false),
		ver("k", "d2", "bbbb", 7, false),
		ver("k", "d1", "aaaa", 5, false),
	}
	h := &heads{meta: map[string]map[string]string{
		"d4": {engine.MetaSourceVersion: "s4", engine.MetaSourceETag: "big-3"},
		"d3": {engine.MetaSourceVersion: "s3"},
		"d1": {engine.MetaSourceVersion: "s1"},
	}}
	have, err := Inspect(context.Background(), h, "dst", "k", src, dst)
	must(t, err)
	if h.n != 3 || have.Heads != 3 {
		t.Fatalf("%d HEADs, want 3 (the multipart replica and the two of the content written twice)", h.n)
	}
	for s, d := range map[string]string{"s1": "d1", "s2": "d2", "s3": "d3", "s4": "d4"} {
		if r, ok := have.BySource[s]; !ok || r.VersionID != d {
			t.Errorf("%s's replica: %+v, want %s", s, r, d)
		}
	}
	if have.BySource["s2"].Headed {
		t.Error("s2's replica was read although its ETag identified it")
	}
	if have.Current == nil || have.Current.Source != "s4" {
		t.Fatalf("current %+v", have.Current)
	}
	if same, why := SameContent(src[0], have.BySource["s4"]); !same {
		t.Fatalf("multipart replica made from the same ETag differs: %s", why)
	}
}

func TestPlan(t *testing.T) {
	rule := engine.Rule{ID: "r", SourceBucket: "src", Destination: "d", DestinationBucket: "dst", ReplicateDeleteMarkers: true}
	vs := []engine.Version{ver("k", "v3", "c", 3, true), ver("k", "v2", "b", 2, false), ver("k", "v1", "a", 1, false)}
	listed := time.Now()
	plan := func(have *Replicas, known map[string][]*engine.Op) []string {
		var out []string
		for _, op := range Plan(rule, "k", "k", vs, have, known, listed, "p1", time.Now()) {
			out = append(out, op.VersionID+"/"+op.Pass)
		}
		return out
	}
	replica := func(src string) Replica { return Replica{IsReplica: true, Source: src} }
	// Nothing there: every version, oldest first; the last is current.
	if got := plan(&Replicas{BySource: map[string]Replica{}}, nil); !slices.Equal(got, []string{"v1/", "v2/", "v3/"}) {
		t.Fatalf("empty destination: %v", got)
	}
	// v2 missing under a current v3: v2, then v3 again on top.
	cur := replica("v3")
	have := &Replicas{BySource: map[string]Replica{"v1": replica("v1"), "v3": cur}, Current: &cur}
	if got := plan(have, nil); !slices.Equal(got, []string{"v2/", "v3/current-p1"}) {
		t.Fatalf("a gap under the current version: %v", got)
	}
	// v2 queued already, or failed: left alone (v3 stays current).
	for _, st := range []engine.State{engine.Pending, engine.Failed} {
		if got := plan(have, map[string][]*engine.Op{"v2": {{State: st}}}); len(got) != 0 {
			t.Fatalf("v2 %s: %v", st, got)
		}
	}
	// v2 completed after the listing: it is there; before: it was lost.
	after := map[string][]*engine.Op{"v2": {{State: engine.Completed, Finished: listed.Add(time.Second)}}}
	if got := plan(have, after); len(got) != 0 {
		t.Fatalf("v2 completed after the listing was copied again: %v", got)
	}
	before := map[string][]*engine.Op{"v2": {{State: engine.Completed, Finished: listed.Add(-time.Hour)}}}
	if got := plan(have, before); !slices.Equal(got, []string{"v2/backfill-p1", "v3/current-p1"}) {
		t.Fatalf("v2 lost from the destination: %v", got)
	}
	// All there and current: nothing.
	full := &Replicas{BySource: map[string]Replica{"v1": replica("v1"), "v2": replica("v2"), "v3": cur}, Current: &cur}
	if got := plan(full, nil); len(got) != 0 {
		t.Fatalf("complete: %v", got)
	}
	// A delete marker on top on the source, none on the destination.
	vs = append([]engine.Version{{Key: "k", VersionID: "m1", DeleteMarker: true, IsLatest: true}}, vs...)
	vs[1].IsLatest = false
	if got := plan(full, nil); !slices.Equal(got, []string{"m1/"}) {
		t.Fatalf("delete marker: %v", got)
	}
}

func TestCheck(t *testing.T) {
	rule := engine.Rule{ID: "r"}
	vs := []engine.Version{ver("k", "v2", "bbbb", 2, true), ver("k", "v1", "aaaa", 1, false)}
	r1 := Replica{Version: ver("k", "d1", "zzzz", 1, true), IsReplica: true, Source: "v1"}
	have := &Replicas{BySource: map[string]Replica{"v1": r1}, Current: &r1}
	var kinds []string
	for _, f := range Check(rule, Pair{Key: "k", Source: vs}, vs, have, nil) {
		kinds = append(kinds, f.Kind)
	}
	if !slices.Equal(kinds, []string{"missing", "different", "current"}) {
		t.Fatalf("findings %v, want v2 missing, v1 different, current wrong", kinds)
	}
	extra := Check(rule, Pair{Key: "gone", DestKey: "gone", Dest: []engine.Version{ver("gone", "d", "e", 1, true)}}, nil, nil, nil)
	if len(extra) != 1 || extra[0].Kind != "extra" {
		t.Fatalf("a destination key with no source key: %v", extra)
	}
}

type fakeState struct {
	cursors map[string]engine.Cursor
	ops     map[string][]*engine.Op // version -> ops
	saves   int
}

func (f *fakeState) LoadCursor(rule string) (engine.Cursor, error) { return f.cursors[rule], nil }
func (f *fakeState) SaveCursor(rule string, c engine.Cursor) error {
	f.cursors[rule] = c
	f.saves++
	return nil
}
func (f *fakeState) OpsOf(_, _, _, version string) ([]*engine.Op, error) { return f.ops[version], nil }

type queue struct{ ops []*engine.Op }

func (q *queue) Submit(_ context.Context, ops []*engine.Op) (int, error) {
	q.ops = append(q.ops, ops...)
	return len(ops), nil
}

type tagless struct{ *listing }

func (tagless) Tags(context.Context, string, string, string) (map[string]string, error) {
	return nil, nil
}

// A backfill queues what the destination lacks, saves its cursor as it
// goes, resumes after the last key it submitted when interrupted, and a
// new pass over a complete destination queues nothing.
func TestBackfillResumesFromItsCursor(t *testing.T) {
	var src []engine.Version
	for i := 0; i < 450; i++ {
		src = append(src, ver(fmt.Sprintf("k%03d", i), fmt.Sprintf("v%d", i), fmt.Sprintf("etag%03d", i), int64(i+1), true))
	}
	dst := &listing{pageSize: 100}
	state := &fakeState{cursors: map[string]engine.Cursor{}, ops: map[string][]*engine.Op{}}
	q := &queue{}
	rule := engine.Rule{ID: "r", SourceBucket: "src", DestinationBucket: "dst", Destination: "d"}
	b := &Backfill{Source: tagless{&listing{pageSize: 100, versions: src}}, Destination: func(engine.Rule) Destination { return dstHeads{dst} },
		State: state, Queue: q, Pass: "p1"}

	// Interrupted at the second submission: the cursor says where.
	calls := 0
	b.Queue = submitFunc(func(ctx context.Context, ops []*engine.Op) (int, error) {
		calls++
		if calls == 2 {
			return 0, errors.New("killed")
		}
		return q.Submit(ctx, ops)
	})
	if _, err := b.Rule(context.Background(), rule); err == nil {
		t.Fatal("an interrupted backfill reported no error")
	}
	cur := state.cursors["r"]
	if cur.Done || cur.KeyMarker != "k199" || len(q.ops) != 200 {
		t.Fatalf("after the interruption: cursor %+v, %d ops queued; want k199 and 200", cur, len(q.ops))
	}
	// Resumed: the rest, each key once.
	b.Queue = q
	cur, err := b.Rule(context.Background(), rule)
	must(t, err)
	if !cur.Done || len(q.ops) != 450 || q.ops[200].Key != "k200" || q.ops[449].Key != "k449" {
		t.Fatalf("resumed: cursor %+v, %d ops, want all 450 once in key order", cur, len(q.ops))
	}
	// The destination now holds everything: a new pass queues nothing.
	for _, op := range q.ops {
		dst.versions = append(dst.versions, ver(op.Key, "d"+op.VersionID, op.ETag, op.Size, true))
	}
	before := len(q.ops)
	_, err = b.Rule(context.Background(), rule)
	must(t, err)
	if len(q.ops) != before {
		t.Fatalf("a second pass queued %d ops", len(q.ops)-before)
	}
}

type submitFunc func(context.Context, []*engine.Op) (int, error)

func (f submitFunc) Submit(ctx context.Context, ops []*engine.Op) (int, error) { return f(ctx, ops) }

type dstHeads struct{ *listing }

func (dstHeads) Head(context.Context, string, string, string) (int64, string, map[string]string, error) {
	return 0, "", nil, errors.New("the listing should have told")
}
