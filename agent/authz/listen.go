package authz

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
)

// Listen opens the address a mode serves on: "host:port", or a unix socket
// as "unix:///path/to.sock" or "/path/to.sock". A socket file left by a
// previous run (nobody answers on it) is replaced; a live socket or any
// other file at the path is an error.
func Listen(addr string) (net.Listener, error) {
	path, isUnix := strings.CutPrefix(addr, "unix://")
	if !isUnix && strings.HasPrefix(addr, "/") {
		path, isUnix = addr, true
	}
	if !isUnix {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("authz: listen on %s: %w (want host:port, unix:///path or /path)", addr, err)
		}
		return lis, nil
	}
	if !strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("authz: unix socket %q: want an absolute path, as unix:///run/tokenwarden/authz.sock", addr)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("authz: %s exists and is not a socket; remove it or pick another path", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("authz: unix socket %s is in use by another process", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("authz: remove stale socket %s: %w", path, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("authz: unix socket %s: %w", path, err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("authz: listen on unix socket %s: %w", path, err)
	}
	return lis, nil
}
