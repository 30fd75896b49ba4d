//go:build !race

package budget

// Race is set when the race detector is on.
const Race = false
