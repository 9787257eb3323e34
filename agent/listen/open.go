// Package listen opens the agent's listeners and bounds what clients can
// hold on them: connections per listener and per client, in-flight gRPC
// calls with a deadline, and a reserve of file descriptors so that health
// and admin still answer while the enforcement listeners are flooded.
package listen

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
)

// Open opens addr: "host:port", or a unix socket as "unix:///path",
// "unix:/path" or "/path". A socket file left by a previous run (nobody
// answers on it) is replaced; a live socket, or any other file at the path,
// is an error, so that two agents never steal each other's socket. mode,
// when not 0, is set on a unix socket file after it is created.
func Open(addr string, mode fs.FileMode) (net.Listener, error) {
	path, isUnix := SocketPath(addr)
	if !isUnix {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w (want host:port, unix:///path or /path)", addr, err)
		}
		return lis, nil
	}
	if !strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("unix socket %q: want an absolute path, as unix:///run/tokenwarden/authz.sock", addr)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket; remove it or pick another path", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("unix socket %s is in use by another process", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("unix socket %s: %w", path, err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on unix socket %s: %w", path, err)
	}
	if mode != 0 {
		if err := os.Chmod(path, mode); err != nil {
			lis.Close()
			return nil, fmt.Errorf("unix socket %s: %w", path, err)
		}
	}
	return lis, nil
}

// SocketPath reports whether addr names a unix socket (unix:///path,
// unix:/path or /path), and its path.
func SocketPath(addr string) (string, bool) {
	if rest, ok := strings.CutPrefix(addr, "unix:"); ok {
		if p, ok := strings.CutPrefix(rest, "//"); ok {
			return p, true
		}
		return rest, true
	}
	if strings.HasPrefix(addr, "/") {
		return addr, true
	}
	return "", false
}
