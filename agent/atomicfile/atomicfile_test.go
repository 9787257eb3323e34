package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteReplacesWithMode0600(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte("old, world-readable"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, []byte("new")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "new" {
		t.Fatalf("read back %q, %v", b, err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != Mode {
		t.Fatalf("mode %v, want %v", st.Mode().Perm(), os.FileMode(Mode))
	}
	assertNoTemporaries(t, filepath.Dir(path), 1)
}

// TestCreateNeverReplaces: a file another process created first is kept.
func TestCreateNeverReplaces(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kek")
	if err := Create(path, []byte("first")); err != nil {
		t.Fatal(err)
	}
	if err := Create(path, []byte("second")); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second Create: %v, want ErrExist", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "first" {
		t.Fatalf("file holds %q, want the first write", b)
	}
	assertNoTemporaries(t, filepath.Dir(path), 1)
}

// TestWriteIntoMissingDirectoryFails leaves nothing behind.
func TestWriteIntoMissingDirectoryFails(t *testing.T) {
	if err := Write(filepath.Join(t.TempDir(), "no", "such", "file"), []byte("x")); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
}

func assertNoTemporaries(t *testing.T, dir string, want int) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != want {
		t.Fatalf("%d entries in %s, want %d (a temporary file was left behind)", len(entries), dir, want)
	}
}

// TestReadRefusesWhatIsNotASmallRegularFile: a directory, a device or an
// oversized file is refused, not read into memory.
func TestReadRefusesWhatIsNotASmallRegularFile(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, 65), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{dir, "/dev/zero", big} {
		if _, _, err := Read(path, 64); err == nil {
			t.Errorf("Read(%s) succeeded", path)
		}
	}
	open := filepath.Join(dir, "open")
	if err := os.WriteFile(open, []byte("s"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, exposed, err := Read(open, 64); err != nil || !exposed || string(b) != "s" {
		t.Fatalf("Read = %q, %v, %v; want the data and exposed", b, exposed, err)
	}
}
