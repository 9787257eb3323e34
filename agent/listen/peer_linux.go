package listen

import (
	"net"
	"strconv"

	"golang.org/x/sys/unix"
)

// peerProcess names the process at the other end of a unix socket by its
// pid; "" when the pid is not visible from our pid namespace (a uid would
// lump together every sidecar running as the same user).
func peerProcess(c *net.UnixConn) string {
	raw, err := c.SyscallConn()
	if err != nil {
		return ""
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || credErr != nil {
		return ""
	}
	if cred.Pid <= 0 {
		return ""
	}
	return "pid:" + strconv.Itoa(int(cred.Pid))
}
