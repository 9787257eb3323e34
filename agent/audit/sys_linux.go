package audit

import (
	"errors"
	"os"
	"syscall"
)

// fdatasync flushes f's data and the metadata needed to read it back (its
// size), skipping the timestamps that a full fsync would also write.
func fdatasync(f *os.File) error {
	conn, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = conn.Control(func(fd uintptr) {
		for {
			serr = syscall.Fdatasync(int(fd))
			if !errors.Is(serr, syscall.EINTR) {
				return
			}
		}
	})
	return errors.Join(err, serr)
}

// lockDir takes an exclusive lock on the directory so that a second agent
// pointed at it fails instead of forking the chain. The lock goes with the
// descriptor, so it is released by closing dir or by the process ending.
func lockDir(dir *os.File) error {
	conn, err := dir.SyscallConn()
	if err != nil {
		return err
	}
	var lerr error
	err = conn.Control(func(fd uintptr) {
		lerr = syscall.Flock(int(fd), syscall.LOCK_EX|syscall.LOCK_NB)
	})
	if errors.Is(lerr, syscall.EWOULDBLOCK) {
		lerr = errors.New("held by another process or Log")
	}
	return errors.Join(err, lerr)
}

// diskSpace reports the free bytes (as an unprivileged writer sees them)
// and the size of the filesystem that holds f.
func diskSpace(f *os.File) (free, total uint64, ok bool) {
	conn, err := f.SyscallConn()
	if err != nil {
		return 0, 0, false
	}
	var st syscall.Statfs_t
	var serr error
	if err := conn.Control(func(fd uintptr) { serr = syscall.Fstatfs(int(fd), &st) }); err != nil || serr != nil {
		return 0, 0, false
	}
	bsize := uint64(st.Bsize)
	return st.Bavail * bsize, st.Blocks * bsize, true
}
