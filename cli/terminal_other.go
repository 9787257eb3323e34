//go:build !linux

package cli

// terminal is false off Linux: a broad revocation there takes --yes, and
// serve prints no banner.
func terminal(any) bool { return false }
