package cli

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// terminal reports whether r is an interactive terminal (not a pipe, a
// file or /dev/null).
func terminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
