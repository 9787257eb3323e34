//go:build !linux

package cli

import "io"

// terminal is false off Linux: a broad revocation there takes --yes.
func terminal(io.Reader) bool { return false }
