package audit

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// smallFS mounts a tmpfs of size bytes for the test and returns its path.
// It needs root; without it the test is skipped, except in CI
// (TOKENWARDEN_REQUIRE_BPF=1), where it fails.
func smallFS(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		if os.Getenv("TOKENWARDEN_REQUIRE_BPF") == "1" {
			t.Fatalf("mount a %s tmpfs: %v (CI runs as root)", size, err)
		}
		t.Skipf("mount a %s tmpfs: %v (needs root)", size, err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

func freeBytes(t *testing.T, dir string) uint64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st.Bavail * uint64(st.Bsize)
}

// TestDiskFullFloodKeepsTheReserve is the disk-full attack: a client floods
// denies with huge sources at a log on a small filesystem shared with the
// store. The log stops at the reserve, counts what it refused, and the
// store can still write.
func TestDiskFullFloodKeepsTheReserve(t *testing.T) {
	fs := smallFS(t, "1m")
	dir := filepath.Join(fs, "audit")
	l := openKeyed(t, dir, Config{Key: testKey("k")}) // default budget (1 GiB) far over the filesystem
	hostile := Record{Action: ActionAuthzDeny, Actor: ActorSystem, Reason: "invalid_token", Source: strings.Repeat("9", 64<<10)}
	refused := 0
	for i := 0; i < 5000 && refused < 100; i++ {
		_, err := l.Append(hostile)
		if errors.Is(err, ErrReserve) {
			refused++
			continue
		}
		if err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
	if refused == 0 {
		t.Fatal("the flood never reached the reserve; the filesystem is larger than the test assumes")
	}
	if s := l.Stats(); s.AppendsRefusedReserve != uint64(refused) || s.AppendsFailed != 0 {
		t.Errorf("stats %+v, want %d refused for the reserve and no failures", s, refused)
	}
	if free := freeBytes(t, fs); free < 64<<10 {
		t.Errorf("the flood left %d bytes free; the reserve should keep about 100 KiB", free)
	}
	// The store's write still fits.
	if err := os.WriteFile(filepath.Join(fs, "tokenwarden.db"), make([]byte, 64<<10), 0o600); err != nil {
		t.Errorf("a store write after the flood: %v", err)
	}
	if _, err := Verify(dir, VerifyOptions{Key: testKey("k")}); err != nil {
		t.Error(err)
	}
}

// TestFullAuditDiskFailsCleanly: with the audit filesystem full (reserve
// off, as when another writer filled it), Append fails and counts it, the
// chain stays intact, and appends work again once space is back.
func TestFullAuditDiskFailsCleanly(t *testing.T) {
	fs := smallFS(t, "256k")
	dir := filepath.Join(fs, "audit")
	l := openKeyed(t, dir, Config{Key: testKey("k"), ReserveBytes: -1})
	last := appendN(t, l, 3)[2]
	filler := filepath.Join(fs, "filler")
	fill(t, filler)
	// The active file's last page may still hold a few records.
	for i := 0; ; i++ {
		r, err := l.Append(sampleRecord(i))
		if err != nil {
			break
		}
		if i > 100 {
			t.Fatal("Append keeps succeeding on a full filesystem")
		}
		last = r
	}
	if s := l.Stats(); s.AppendsFailed != 1 {
		t.Errorf("stats %+v, want one failed append", s)
	}
	os.Remove(filler)
	if r, err := l.Append(sampleRecord(0)); err != nil || r.Seq != last.Seq+1 {
		t.Fatalf("Append after space came back = #%d, %v; want #%d", r.Seq, err, last.Seq+1)
	}
	if _, err := Verify(dir, VerifyOptions{Key: testKey("k")}); err != nil {
		t.Error(err)
	}
}

// fill writes path until the filesystem is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	for { // the last partial block
		if _, err := f.Write(buf[:1]); err != nil {
			return
		}
	}
}
