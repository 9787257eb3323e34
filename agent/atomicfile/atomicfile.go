// Package atomicfile reads and writes secret files (the key-encryption
// key, the admin token, tokens delivered to file sinks). Writes never let a
// reader or a crash see a short or half-written file: the data goes to a
// temporary file in the same directory, mode 0600, is synced, and is then
// linked or renamed into place; the directory is synced so the new name is
// durable. Reads are bounded and say whether others could read the file.
package atomicfile

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Mode is the mode of every file written here: secrets, owner only.
const Mode = 0o600

// Write replaces path with data.
func Write(path string, data []byte) error {
	return install(path, data, os.Rename)
}

// Create writes data to path only if nothing is there yet; an existing file
// is reported with an error satisfying errors.Is(err, fs.ErrExist). Two
// processes racing to create the same file cannot replace each other's.
func Create(path string, data []byte) error {
	return install(path, data, os.Link)
}

func install(path string, data []byte, place func(oldpath, newpath string) error) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	// One err for every step: a failed chmod, write or sync must not be
	// lost, or a short or unsynced file would be put in place.
	err = tmp.Chmod(Mode) // explicit: CreateTemp's 0600 is subject to umask
	if err == nil {
		_, err = tmp.Write(data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := place(tmp.Name(), path); err != nil {
		return err
	}
	return syncDir(dir)
}

// Read reads a secret file of at most max bytes, refusing anything but a
// regular file, and reports whether group or others may read it (the
// secret should then be replaced).
func Read(path string, max int64) (data []byte, exposed bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, false, err
	}
	if !st.Mode().IsRegular() {
		return nil, false, fmt.Errorf("not a regular file (%s)", st.Mode().Type())
	}
	if st.Size() > max {
		return nil, false, fmt.Errorf("%d bytes, more than the %d it may hold", st.Size(), max)
	}
	data, err = io.ReadAll(io.LimitReader(f, max))
	return data, st.Mode().Perm()&0o077 != 0, err
}

// syncDir makes a rename or link in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
