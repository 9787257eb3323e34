package bolt_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/store/bolt"
	"github.com/tokenwarden/tokenwarden/agent/store/storetest"
	"github.com/tokenwarden/tokenwarden/policy"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, _ := openTemp(t)
		return s
	})
}

func TestReopenAfterClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", bolt.FileName)
	ctx := t.Context()
	s, err := bolt.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	k := store.Key{ID: "k1", Public: make([]byte, 32), State: store.KeyActive, CreatedAt: t0}
	tok := store.TokenRecord{ID: "tok_a", Subject: "alice", KeyID: "k1", ExpiresAt: t0.Add(time.Hour),
		LeakHash: [32]byte{1, 2, 3}, Status: store.TokenActive}
	r := revocation("rv_1")
	for _, err := range []error{s.PutKeys(ctx, k), s.PutToken(ctx, tok), s.PutRevocation(ctx, r)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	for name, want := range map[string]os.FileMode{path: 0o600, filepath.Dir(path): 0o700} {
		if fi, err := os.Stat(name); err != nil {
			t.Error(err)
		} else if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s has mode %v, want %v", name, got, want)
		}
	}

	s, err = bolt.Open(path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	if keys, err := s.Keys(ctx); err != nil || len(keys) != 1 || keys[0].ID != k.ID {
		t.Errorf("Keys after reopen = %v, %v; want [k1]", keys, err)
	}
	if got, err := s.TokenByLeakHash(ctx, tok.LeakHash); err != nil || got.ID != tok.ID {
		t.Errorf("TokenByLeakHash after reopen = %v, %v; want tok_a", got.ID, err)
	}
	if rules, err := s.Revocations(ctx); err != nil || len(rules) != 1 || rules[0].ID != r.ID {
		t.Errorf("Revocations after reopen = %v, %v; want [rv_1]", rules, err)
	}
}

func TestSecondOpenFailsFast(t *testing.T) {
	_, path := openTemp(t)
	start := time.Now()
	s, err := bolt.Open(path, bolt.WithLockTimeout(100*time.Millisecond))
	if err == nil {
		s.Close()
		t.Fatal("second Open of the same file succeeded")
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("second Open took %v to fail", elapsed)
	}
	t.Logf("second Open: %v", err)
	if !errors.Is(err, bolt.ErrInUse) {
		t.Errorf("error = %v, want ErrInUse", err)
	}
	for _, want := range []string{path, "data dir is in use by another tokenwarden", "(pid ", "its own data directory"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestOpenRejectsBadOptions(t *testing.T) {
	tests := map[string]bolt.Option{
		"zero lock timeout":  bolt.WithLockTimeout(0),
		"zero watch buffer":  bolt.WithWatchBuffer(0),
		"negative buffer":    bolt.WithWatchBuffer(-1),
		"negative lock wait": bolt.WithLockTimeout(-time.Second),
	}
	for name, opt := range tests {
		t.Run(name, func(t *testing.T) {
			s, err := bolt.Open(filepath.Join(t.TempDir(), bolt.FileName), opt)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
		})
	}
}

func TestSlowWatcherIsDropped(t *testing.T) {
	const buffer = 4
	s, _ := openTemp(t, bolt.WithWatchBuffer(buffer))
	ctx := t.Context()
	slow, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fast, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const writes = 3 * buffer
	for i := range writes {
		if err := s.PutRevocation(ctx, revocation(fmt.Sprintf("rv_%02d", i))); err != nil {
			t.Fatal(err)
		}
		if ev := <-fast; ev.Revocation == nil {
			t.Fatalf("fast watcher got %+v", ev)
		}
	}
	got := 0
	for range slow {
		got++
	}
	if got != buffer {
		t.Errorf("slow watcher got %d events before its channel closed, want %d", got, buffer)
	}
}

func TestRecordSizeIsBounded(t *testing.T) {
	s, path := openTemp(t)
	ctx := t.Context()
	huge := revocation("rv_huge")
	huge.Reason = strings.Repeat("x", 128<<10)
	if err := s.PutRevocation(ctx, huge); err == nil {
		t.Error("stored a 128 KiB revocation")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// A value over the bound that got into the file anyway is reported, not
	// decoded.
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte("revocations")).Put([]byte("rv_huge"), []byte(`"`+huge.Reason+`"`))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = bolt.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Revocations(ctx); err == nil || !strings.Contains(err.Error(), "may be corrupt") {
		t.Errorf("Revocations over an oversized record: error = %v, want a corruption report", err)
	}
}

func BenchmarkPutRevocation(b *testing.B) {
	s, _ := openTemp(b)
	ctx := context.Background()
	i := 0
	for b.Loop() {
		if err := s.PutRevocation(ctx, revocation(fmt.Sprintf("rv_%09d", i))); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func revocation(id string) policy.Revocation {
	return policy.Revocation{
		ID: id, Kind: policy.RevokeToken, Target: "tok_" + id, EffectiveAt: t0,
		Expires: t0.Add(24 * time.Hour), Reason: "leaked", Actor: "tok_admin", CreatedAt: t0,
	}
}

// openTemp opens a store in a fresh directory, closed when the test ends.
func openTemp(tb testing.TB, opts ...bolt.Option) (*bolt.Store, string) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), bolt.FileName)
	s, err := bolt.Open(path, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Error(err)
		}
	})
	return s, path
}
