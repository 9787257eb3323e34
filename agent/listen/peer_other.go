//go:build !linux

package listen

import "net"

// peerProcess is not known off Linux: every unix socket client is one.
func peerProcess(*net.UnixConn) string { return "" }
