package revoke

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/policy"
)

func testRule(id string) policy.Revocation {
	t := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return policy.Revocation{ID: id, Kind: policy.RevokeToken, Target: "jti-" + id, Reason: "leak", Actor: "admin", EffectiveAt: t, CreatedAt: t, Expires: t.Add(time.Hour)}
}

func openJournal(t *testing.T, path string) *Journal {
	t.Helper()
	j, err := OpenJournal(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

func pendingIDs(j *Journal) []string {
	var ids []string
	for _, r := range j.Pending() {
		ids = append(ids, r.ID)
	}
	return ids
}

// TestJournalSurvivesRestart: an added rule is pending after a reopen until
// it is done; order is kept; the file is private.
func TestJournalSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), JournalFile)
	j := openJournal(t, path)
	for _, id := range []string{"a", "b", "c"} {
		if err := j.Add(testRule(id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Done("b"); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j = openJournal(t, path)
	if got := pendingIDs(j); len(got) != 2 || got[0] != "a" || got[1] != "c" {
		t.Fatalf("pending after reopen = %v, want [a c]", got)
	}
	if got := j.Pending()[0]; got != testRule("a") {
		t.Errorf("rule read back = %+v", got)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("journal mode = %v, %v; want 0600", st.Mode(), err)
	}
}

// TestJournalTornTail is a crash mid-write: a partial or corrupted last
// frame is dropped, every frame before it is kept, and the next write is
// not lost behind the garbage.
func TestJournalTornTail(t *testing.T) {
	for name, damage := range map[string]func([]byte) []byte{
		"cut mid-frame":    func(b []byte) []byte { return b[:len(b)-3] },
		"flipped byte":     func(b []byte) []byte { b[len(b)-2] ^= 0xff; return b },
		"garbage appended": func(b []byte) []byte { return append(b, 0, 0, 0, 9, 1, 2, 3) },
		"huge length":      func(b []byte) []byte { return append(b, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0) },
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), JournalFile)
			j := openJournal(t, path)
			j.Add(testRule("a"))
			j.Add(testRule("b"))
			j.Close()
			b, _ := os.ReadFile(path)
			whole := name == "garbage appended" || name == "huge length"
			os.WriteFile(path, damage(b), 0o600)
			j = openJournal(t, path)
			want := []string{"a"}
			if whole {
				want = []string{"a", "b"}
			}
			if got := pendingIDs(j); len(got) != len(want) || got[0] != "a" {
				t.Fatalf("pending = %v, want %v", got, want)
			}
			j.Add(testRule("c"))
			j.Close()
			j = openJournal(t, path)
			if got := pendingIDs(j); got[len(got)-1] != "c" {
				t.Errorf("a rule written after the damage was lost: %v", got)
			}
		})
	}
}

// TestJournalBounded: past MaxPending rules the journal refuses more, and
// done entries are compacted away once the file grows.
func TestJournalBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), JournalFile)
	j := openJournal(t, path)
	j.pending = map[string]policy.Revocation{}
	for n := range MaxPending {
		j.pending[string(rune(n))] = policy.Revocation{}
	}
	if err := j.Add(testRule("over")); err != ErrJournalFull {
		t.Fatalf("Add past the bound = %v, want ErrJournalFull", err)
	}
	j.pending, j.order = map[string]policy.Revocation{}, nil
	j.Add(testRule("keep"))
	big := testRule("x")
	big.Reason = string(bytes.Repeat([]byte("r"), 8<<10))
	for range 2 * compactBytes / len(big.Reason) {
		big.ID = policy.NewRevocationID()
		if err := j.Add(big); err != nil {
			t.Fatal(err)
		}
		if err := j.Done(big.ID); err != nil {
			t.Fatal(err)
		}
	}
	st, _ := os.Stat(path)
	if st.Size() > compactBytes {
		t.Errorf("journal is %d bytes after compaction, want at most %d", st.Size(), compactBytes)
	}
	j.Close()
	j = openJournal(t, path)
	if got := pendingIDs(j); len(got) != 1 || got[0] != "keep" {
		t.Errorf("pending after compaction = %v, want [keep]", got)
	}
}

// FuzzJournal: any file content opens without panicking, keeps only whole
// frames, and accepts a new rule after it.
func FuzzJournal(f *testing.F) {
	frame, _ := encodeFrame(entry{Rule: ptr(testRule("a"))})
	done, _ := encodeFrame(entry{Done: "a"})
	f.Add([]byte{})
	f.Add(frame)
	f.Add(append(append([]byte{}, frame...), done...))
	f.Add(append(append([]byte{}, frame...), 1, 2, 3))
	f.Add([]byte{0, 0, 0, 2, 0, 0, 0, 0, '{', '}'})
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), JournalFile)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		j, err := OpenJournal(path)
		if err != nil {
			t.Fatal(err)
		}
		defer j.Close()
		if err := j.Add(testRule("z")); err != nil {
			t.Fatal(err)
		}
		j.Close()
		j2, err := OpenJournal(path)
		if err != nil {
			t.Fatal(err)
		}
		defer j2.Close()
		if got := pendingIDs(j2); !slices.Contains(got, "z") {
			t.Fatalf("rule added after fuzzed content lost: %v", got)
		}
	})
}

func ptr[T any](v T) *T { return &v }
