package engine_test

import (
	"testing"

	"github.com/s3replicad/s3replicad/internal/budget"
)

// objectPathBudget is the most heap allocations one small object may cost
// on its whole path through the engine. BenchmarkObjectPath/serial's path,
// counted here with testing.AllocsPerRun, was 423 when the budget was set
// (462 at caf070d; the decoder's one pass, the per-op logger made only
// when something is logged, and the state file's counter keys built in
// one piece took it down); the state file's two commits are about two
// thirds of it. The 12% of headroom is for small, deliberate additions,
// not for a regression of the kind issue 20 was about (+50%).
const objectPathBudget = 475

// TestObjectPathAllocBudget fails when one small object's path through
// the engine allocates more than its budget: allocations per object are
// what a busy bucket pays for in CPU and garbage collection, and unlike
// times they can be counted exactly on a shared machine.
func TestObjectPathAllocBudget(t *testing.T) {
	if budget.Race {
		t.Skip("allocation counts differ under the race detector")
	}
	p := newObjectPath(t, 4)
	const runs = 100
	allocs := testing.AllocsPerRun(runs, func() { p.run(t, 1) })
	p.check(t, runs+1)
	budget.Allocs(t, "one small object through the engine", allocs, objectPathBudget)
}
