// Package budget holds the allocation budgets' common checks. Heap
// allocations per operation are counted, not timed: they do not depend on
// what else the machine runs, so a test can fail on them.
package budget

import "testing"

// Allocs fails t when got, the allocations per operation of what, is
// above max; it logs the figure either way, so that a budget can be set
// again from a measurement. It skips under the race detector, which
// allocates on its own account.
func Allocs(t testing.TB, what string, got, max float64) {
	t.Helper()
	if Race {
		t.Skip("allocation counts differ under the race detector")
	}
	t.Logf("%s: %.1f allocations (budget %.0f)", what, got, max)
	if got > max {
		t.Errorf("%s: %.1f allocations, over the budget of %.0f. Find the new ones with the benchmark's "+
			"-memprofile (go tool pprof -sample_index=alloc_objects); raise the budget only for a reason worth its cost", what, got, max)
	}
}
