package bolt

import (
	"path/filepath"
	"testing"
)

// The store promises a write is on stable storage when the call returns;
// that rests on bbolt syncing every commit.
func TestCommitsAreSynced(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), FileName))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.db.NoSync {
		t.Fatal("bbolt NoSync is set: writes would return before reaching the disk")
	}
}
