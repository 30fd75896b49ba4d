package dynamostate_test

import (
	"context"
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/dynamostate"
	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/engine/statetest"
)

// The cluster store passes the state store suite as a single node that
// holds every shard. Its differences are the suite's options: Pending
// remembers what it handed out and ignores after; crash suspicion is per
// shard, not per run.
func TestConformance(t *testing.T) {
	statetest.Run(t, func(t *testing.T) engine.StateStore {
		cfg := testConfig(t, 8)
		// Leases are not under test here: a long one keeps a loaded
		// machine from making this node lose its own shards.
		cfg.Lease = 30 * time.Second
		if _, err := dynamostate.CreateTable(context.Background(), cfg); err != nil {
			t.Fatal(err)
		}
		n := startNode(t, cfg, "solo")
		// Read every queue from its start each time: what Pending skips
		// is then decided by what it remembers alone.
		n.SetRescanEvery(0)
		waitFor(t, 10*time.Second, "every shard held", func() bool { return len(n.Held()) == 8 })
		return n.Store
	}, statetest.Options{
		PendingRemembers: true,
		StateCounts: func(t *testing.T, s engine.StateStore) map[engine.State]int64 {
			st, err := s.(*dynamostate.Store).Status(context.Background(), time.Now())
			if err != nil {
				t.Fatal(err)
			}
			return st.Counts
		},
		LateVersions: func(t *testing.T, s engine.StateStore) int64 {
			st, err := s.(*dynamostate.Store).Status(context.Background(), time.Now())
			if err != nil {
				t.Fatal(err)
			}
			return st.LateVersions
		},
	})
}
