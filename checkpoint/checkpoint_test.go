package checkpoint_test

import (
	"context"
	"slices"
	"testing"
	"time"

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
