package retention

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/store/bolt"
	"github.com/tokenwarden/tokenwarden/policy"
)

// TestPruneStore deletes rules past their expiry and token records past the
// retention, and keeps everything else.
func TestPruneStore(t *testing.T) {
	st, err := bolt.Open(filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	now := time.Now()
	rule := func(id string, expires time.Time) policy.Revocation {
		return policy.Revocation{ID: id, Kind: policy.RevokeSubject, Target: "x", EffectiveAt: now.Add(-48 * time.Hour),
			IssuedBefore: now.Add(-48 * time.Hour), Expires: expires, Reason: "test", Actor: "test", CreatedAt: now.Add(-48 * time.Hour)}
	}
	record := func(id string, expires time.Time) store.TokenRecord {
		return store.TokenRecord{ID: id, Subject: "x", Class: "service", Env: "dev", KeyID: "k", IssuedAt: expires.Add(-time.Hour),
			ExpiresAt: expires, Status: store.TokenActive, Actor: "test", LeakHash: [32]byte{byte(len(id)), id[0]}}
	}
	tests := map[string]struct {
		put  func() error
		get  func() error
		kept bool
	}{
		"expired rule": {func() error { return st.PutRevocation(ctx, rule("rv_old", now.Add(-time.Hour))) },
			func() error { return findRule(ctx, st, "rv_old") }, false},
		"live rule": {func() error { return st.PutRevocation(ctx, rule("rv_live", now.Add(time.Hour))) },
			func() error { return findRule(ctx, st, "rv_live") }, true},
		"key rule (never expires)": {func() error { return st.PutRevocation(ctx, rule("rv_key", time.Time{})) },
			func() error { return findRule(ctx, st, "rv_key") }, true},
		"token past retention": {func() error { return st.PutToken(ctx, record("old", now.Add(-DefaultTokenRetention-time.Hour))) },
			func() error { _, err := st.Token(ctx, "old"); return err }, false},
		"recently expired token": {func() error { return st.PutToken(ctx, record("recent", now.Add(-time.Hour))) },
			func() error { _, err := st.Token(ctx, "recent"); return err }, true},
	}
	for name, tc := range tests {
		if err := tc.put(); err != nil {
			t.Fatalf("%s: put: %v", name, err)
		}
	}
	p, err := Prune(ctx, st, now, DefaultTokenRetention)
	if err != nil {
		t.Fatal(err)
	}
	if p != (Pruned{Rules: 1, Tokens: 1}) {
		t.Errorf("Prune reports %+v, want one rule and one token", p)
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := tc.get()
			if tc.kept && err != nil {
				t.Errorf("pruned, want kept: %v", err)
			}
			if !tc.kept && !errors.Is(err, store.ErrNotFound) {
				t.Errorf("kept (err %v), want pruned", err)
			}
		})
	}
}

func findRule(ctx context.Context, st store.Store, id string) error {
	rules, err := st.Revocations(ctx)
	if err != nil {
		return err
	}
	for _, r := range rules {
		if r.ID == id {
			return nil
		}
	}
	return store.ErrNotFound
}
