package checkpoint_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/s3replicad/s3replicad/checkpoint"
	"github.com/s3replicad/s3replicad/engine"
)

// OpsOf finds the first copy of a version and its later passes, and
// nothing of a key that merely starts with the same bytes.
func TestOpsOfAVersion(t *testing.T) {
	st, err := checkpoint.Open(t.TempDir(), checkpoint.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	mk := func(key, version, pass string) *engine.Op {
		return &engine.Op{Rule: "r", Bucket: "b", Key: key, VersionID: version, Pass: pass, State: engine.Pending}
	}
	ops := []*engine.Op{mk("a", "null", ""), mk("a", "null", "backfill-1"), mk("ab", "null", ""), mk("a", "v2", ""), mk("a/b", "null", "")}
	if _, err := st.Record(context.Background(), ops); err != nil {
		t.Fatal(err)
	}
	got, err := st.OpsOf("r", "b", "a", "null")
	if err != nil {
		t.Fatal(err)
	}
	var passes []string
	for _, o := range got {
		if o.Key != "a" || o.VersionID != "null" {
			t.Errorf("OpsOf(a, null) returned %s@%s", o.Key, o.VersionID)
		}
		passes = append(passes, o.Pass)
	}
	if !slices.Equal(passes, []string{"", "backfill-1"}) {
		t.Fatalf("passes %q, want the first copy and backfill-1", passes)
	}
	if got, _ := st.OpsOf("r", "b", "zzz", "null"); len(got) != 0 {
		t.Fatalf("OpsOf of an unknown version returned %d ops", len(got))
	}
}

// The daemon's status counts the ops it is copying as in flight although
// their write marks are not saved yet; a clean stop clears the run mark.
func TestStatusOfARunningDaemonAndTheRunMark(t *testing.T) {
	st, err := checkpoint.Open(t.TempDir(), checkpoint.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ops := []*engine.Op{
		{Rule: "r", Bucket: "b", Key: "a", VersionID: "1", State: engine.Pending},
		{Rule: "r", Bucket: "b", Key: "b", VersionID: "1", State: engine.Pending},
	}
	if _, err := st.Record(context.Background(), ops); err != nil {
		t.Fatal(err)
	}
	s, err := st.Status(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	s.WithRunning(map[string]int{"r": 1})
	if s.Counts[engine.Pending] != 1 || s.Counts[engine.InFlight] != 1 || s.Rules["r"].Counts[engine.InFlight] != 1 {
		t.Fatalf("counts %v, want one pending and one in flight", s.Counts)
	}

	for i, want := range []bool{false, true} {
		crashed, err := st.BeginRun(context.Background())
		if err != nil || crashed != want {
			t.Fatalf("BeginRun #%d: crashed=%v, %v; want %v", i+1, crashed, err, want)
		}
	}
	if err := st.EndRun(context.Background()); err != nil {
		t.Fatal(err)
	}
	if crashed, _ := st.BeginRun(context.Background()); crashed {
		t.Fatal("after EndRun the next run is taken for a crash")
	}
}

// Completions saved at about the same time, and the records of the next
// messages, share commits, and the commits metric counts them: a small
// object's cost in the state file is its share of a commit.
func TestSavesAndRecordsShareCommits(t *testing.T) {
	st, err := checkpoint.Open(t.TempDir(), checkpoint.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	commits := st.Collectors()[0]
	pages := st.Collectors()[1]
	if n := testutil.ToFloat64(commits); n != 0 {
		t.Fatalf("%v commits counted before any write", n)
	}
	ctx := context.Background()
	const n = 40
	ops := make([]*engine.Op, n)
	for i := range ops {
		ops[i] = &engine.Op{Rule: "r", Bucket: "b", Key: fmt.Sprintf("k%03d", i), VersionID: "1", State: engine.Pending}
	}
	if _, err := st.Record(ctx, ops); err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(commits); n != 1 {
		t.Fatalf("one Record counted as %v commits", n)
	}
	var wg sync.WaitGroup
	for i, op := range ops {
		wg.Add(2)
		go func() {
			defer wg.Done()
			op.State, op.Finished, op.Replica = engine.Completed, time.Now(), "r1"
			if err := st.Save(ctx, op); err != nil {
				t.Error(err)
			}
		}()
		go func() {
			defer wg.Done()
			more := []*engine.Op{{Rule: "r", Bucket: "b", Key: fmt.Sprintf("next%03d", i), VersionID: "1", State: engine.Pending}}
			if _, err := st.Record(ctx, more); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	got := testutil.ToFloat64(commits) - 1
	if got < 1 || got > n/4 {
		t.Fatalf("%d saves and %d records made %v commits, want them to share a few", n, n, got)
	}
	if p := testutil.ToFloat64(pages); p < got {
		t.Fatalf("%v pages written by %v commits", p, got)
	}
	s, err := st.Status(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if s.Counts[engine.Completed] != n || s.Counts[engine.Pending] != n {
		t.Fatalf("counts %v after the shared commits, want %d completed and %d pending", s.Counts, n, n)
	}
}
