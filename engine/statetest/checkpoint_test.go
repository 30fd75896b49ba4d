package statetest_test

import (
	"testing"
	"time"

	"github.com/s3replicad/s3replicad/checkpoint"
	"github.com/s3replicad/s3replicad/engine"
	"github.com/s3replicad/s3replicad/engine/statetest"
)

// The bbolt state file passes the suite: it is the reference the cluster
// store is held to.
func TestCheckpointConforms(t *testing.T) {
	statetest.Run(t, func(t *testing.T) engine.StateStore {
		st, err := checkpoint.Open(t.TempDir(), checkpoint.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}, statetest.Options{
		CrashDetection: true,
		StateCounts: func(t *testing.T, s engine.StateStore) map[engine.State]int64 {
			st, err := s.(*checkpoint.Store).Status(time.Now())
			if err != nil {
				t.Fatal(err)
			}
			return st.Counts
		},
		LateVersions: func(t *testing.T, s engine.StateStore) int64 {
			st, err := s.(*checkpoint.Store).Status(time.Now())
			if err != nil {
				t.Fatal(err)
			}
			return st.LateVersions
		},
	})
}
