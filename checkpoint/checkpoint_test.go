package checkpoint_test

import (
	"context"
	"slices"
	"testing"

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
