//go:build unix

package checkpoint

import (
	"os"

	"golang.org/x/sys/unix"
)

// freeBytes is the space this process may still use in dir's file system
// (root may also use the blocks reserved for it).
func freeBytes(dir string) (int64, bool) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, false
	}
	blocks := st.Bavail
	if os.Geteuid() == 0 {
		blocks = st.Bfree
	}
	return int64(blocks) * int64(st.Bsize), true
}
