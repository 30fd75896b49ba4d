package dynamostate_test

import (
	"context"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/engine"
)

func TestSmoke(t *testing.T) {
	t.Parallel()
	cfg := newTable(t, 4)
	n := startNode(t, cfg, "a")
	waitFor(t, 10*time.Second, "all shards held", func() bool { return len(n.Held()) == 4 })
	ctx := context.Background()
	ops := []*engine.Op{
		{Rule: "r", Bucket: "b", Key: "k1", VersionID: "v1", Dest: "d", DestBucket: "db", DestKey: "k1", State: engine.Pending, Origin: engine.OriginEvent, Size: 10},
		{Rule: "r", Bucket: "b", Key: "k2", VersionID: "v1", Dest: "d", DestBucket: "db", DestKey: "k2", State: engine.Pending, Origin: engine.OriginEvent, Size: 20},
	}
	added, err := n.Record(ctx, ops)
	if err != nil || len(added) != 2 {
		t.Fatal(added, err)
	}
	got, more, err := n.Pending(ctx, engine.OriginEvent, 0, 10)
	if err != nil || len(got) != 2 || more {
		t.Fatal(got, more, err)
	}
	got[0].State, got[0].Replica = engine.Completed, "rep1"
	if err := n.Save(ctx, got[0]); err != nil {
		t.Fatal(err)
	}
	st, err := n.Status(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", st)
}
