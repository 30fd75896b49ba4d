// Package units renders sizes for people: one way, wherever s3replicad
// prints or logs a number of bytes.
package units

import "fmt"

// Bytes renders a byte count with a binary unit (16.0 MiB, 512 B).
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
