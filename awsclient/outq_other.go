//go:build !linux

package awsclient

import "net"

// sendQueue is not known on this platform: progress is seen at writes only.
func sendQueue(net.Conn) (int, bool) { return 0, false }
