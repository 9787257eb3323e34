package policy

import (
	"io"
	"os"
)

// ReadFile reads a policy file, at most one byte more than a policy may
// hold, so that Load refuses an oversized file (or a path naming a device)
// by its size instead of it being read into memory whole.
func ReadFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, MaxDocumentBytes+1))
}
