package bolt

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

// TestTokenIndexes: a store written before the indexes existed gets them at
// Open; a record's index entries follow its subject, tenant and key id, and
// leave with it, so a filtered listing never names a stale or missing
// token.
func TestTokenIndexes(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), FileName)
	now := time.Now().UTC()
	rec := func(id, subject, tenant, kid string) store.TokenRecord {
		return store.TokenRecord{ID: id, Subject: subject, Tenant: tenant, KeyID: kid, Class: "c", Env: "e", IssuedAt: now, ExpiresAt: now.Add(time.Hour), Status: store.TokenActive, Actor: "system"}
	}
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucket(bucketTokens)
		if err != nil {
			return err
		}
		for _, r := range []store.TokenRecord{rec("a", "alice", "acme", "k1"), rec("b", "bob", "acme", "k1")} {
			v, _ := store.EncodeRecord(r)
			if err := b.Put([]byte(r.ID), v); err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ids := func(f store.TokenFilter) []string {
		t.Helper()
		recs, err := s.Tokens(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range recs {
			out = append(out, r.ID)
		}
		return out
	}
	want := func(name string, got []string, want ...string) {
		t.Helper()
		if len(got) != len(want) {
			t.Errorf("%s = %v, want %v", name, got, want)
			return
		}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("%s = %v, want %v", name, got, want)
			}
		}
	}
	want("built: alice", ids(store.TokenFilter{Subject: "alice"}), "a")
	want("built: acme", ids(store.TokenFilter{Tenant: "acme"}), "a", "b")
	want("built: k1", ids(store.TokenFilter{KeyID: "k1"}), "a", "b")
	// A prefix of a subject is not that subject.
	if err := s.PutToken(ctx, rec("c", "ali", "acme", "k2")); err != nil {
		t.Fatal(err)
	}
	want("prefix", ids(store.TokenFilter{Subject: "ali"}), "c")
	// A record that changes subject moves in the index.
	if err := s.PutToken(ctx, rec("a", "carol", "globex", "k2")); err != nil {
		t.Fatal(err)
	}
	want("moved: alice", ids(store.TokenFilter{Subject: "alice"}))
	want("moved: carol", ids(store.TokenFilter{Subject: "carol"}), "a")
	want("moved: acme", ids(store.TokenFilter{Tenant: "acme"}), "b", "c")
	if err := s.DeleteToken(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	want("deleted: bob", ids(store.TokenFilter{Subject: "bob"}))
	want("deleted: k1", ids(store.TokenFilter{KeyID: "k1"}))
}
