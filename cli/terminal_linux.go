package cli

import (
	"os"

	"golang.org/x/sys/unix"
)

// terminal reports whether stream (standard input, or the output the
// start-up banner goes to) is an interactive terminal, not a pipe, a file
// or /dev/null.
func terminal(stream any) bool {
	f, ok := stream.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
