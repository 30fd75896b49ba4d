package checkpoint_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/s3replicad/s3replicad/checkpoint"
	"github.com/s3replicad/s3replicad/engine"
)

// BenchmarkSmallObjectLifecycle writes what the daemon writes for each
// small object: its op recorded with the 9 others of its queue batch, and
// its completion (with the write mark), from 16 workers at once. It
// reports the state file's commits and pages written and the process CPU
// per op.
func BenchmarkSmallObjectLifecycle(b *testing.B) {
	st, err := checkpoint.Open(b.TempDir(), checkpoint.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	work := make(chan *engine.Op, 64)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for op := range work {
				op.WriteStarted = time.Now()
				op.State, op.Finished, op.Replica = engine.Completed, time.Now(), "r"+op.VersionID
				if err := st.Save(ctx, op); err != nil {
					b.Error(err)
				}
			}
		}()
	}
	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	w0, c0 := writes(st), commits(st)
	b.ResetTimer()
	var pollers sync.WaitGroup
	batches := make(chan int)
	for range 8 {
		pollers.Add(1)
		go func() {
			defer pollers.Done()
			for n := range batches {
				ops := make([]*engine.Op, n)
				for i := range ops {
					ops[i] = &engine.Op{Rule: "bench", Bucket: "source-bucket", Key: fmt.Sprintf("data/2026/11/%08d.parquet", rand.Uint32()),
						VersionID: fmt.Sprintf("%016x%016x", rand.Uint64(), rand.Uint64()), Sequencer: fmt.Sprintf("%016X", rand.Uint64()),
						ETag: `"0123456789abcdef0123456789abcdef"`, Size: 65536, Action: engine.ActionCopy, Origin: engine.OriginEvent,
						Dest: "dr", DestBucket: "replica-bucket", EventTime: time.Now(), Recorded: time.Now(), State: engine.Pending}
					ops[i].DestKey = ops[i].Key
				}
				if _, err := st.Record(ctx, ops); err != nil {
					b.Error(err)
				}
				for _, op := range ops {
					work <- op
				}
			}
		}()
	}
	for left := b.N; left > 0; left -= 10 {
		batches <- min(left, 10)
	}
	close(batches)
	pollers.Wait()
	close(work)
	wg.Wait()
	b.StopTimer()
	var ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
	b.ReportMetric(float64(writes(st)-w0)/float64(b.N), "pages/op")
	b.ReportMetric((commits(st)-c0)/float64(b.N), "commits/op")
}

func commits(st *checkpoint.Store) float64 {
	return testutil.ToFloat64(st.Collectors()[0])
}

func writes(st *checkpoint.Store) int64 {
	s := st.Stats()
	return s.TxStats.GetWrite()
}
