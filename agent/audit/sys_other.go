//go:build !linux

package audit

import "os"

// fdatasync falls back to a full fsync where fdatasync is not available.
func fdatasync(f *os.File) error { return f.Sync() }

// lockDir does nothing here: the agent runs on Linux, and elsewhere the log
// is only opened by tests and tools.
func lockDir(*os.File) error { return nil }

// diskSpace is not known here; the reserve is not enforced.
func diskSpace(*os.File) (free, total uint64, ok bool) { return 0, 0, false }
