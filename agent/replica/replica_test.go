package replica

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/store/bolt"
	"github.com/tokenwarden/tokenwarden/policy"
)

func openStore(t *testing.T) *bolt.Store {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func record(id string, hash uint64, now time.Time) store.TokenRecord {
	return store.TokenRecord{
		ID: id, Subject: "svc", Class: "service", Env: "dev", KeyID: "k1", IssuedAt: now.Add(-time.Minute),
		ExpiresAt: now.Add(time.Hour), Status: store.TokenActive, Actor: "test", WireHash: hash,
		LeakHash: [32]byte{byte(hash)},
	}
}

func tokenRule(target string, now time.Time) policy.Revocation {
	return policy.Revocation{
		ID: policy.NewRevocationID(), Kind: policy.RevokeToken, Target: target, Reason: "test", Actor: "test",
		CreatedAt: now, EffectiveAt: now, Expires: now.Add(time.Hour),
	}
}

// run starts r.Run on st and waits for the first load.
func run(t *testing.T, r *Replica, st store.Store) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, st) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-r.Synced():
	case err := <-done:
		t.Fatalf("Run ended before the first load: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no first load")
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// droppingStore hands out, on the first Watch, a channel the test closes:
// the store dropping a watcher that fell behind.
type droppingStore struct {
	store.Store
	first   chan store.Event
	watches atomic.Int32
}

func (s *droppingStore) Watch(ctx context.Context) (<-chan store.Event, error) {
	if s.watches.Add(1) == 1 {
		return s.first, nil
	}
	return s.Store.Watch(ctx)
}

// TestReloadAfterAWatchGap: a rule written while the watch was down (as
// another node would) is enforced once the watch is re-established, keys
// are reloaded, and Gap reports the interruption only while it lasts.
func TestReloadAfterAWatchGap(t *testing.T) {
	st := &droppingStore{Store: openStore(t), first: make(chan store.Event)}
	now := time.Now()
	var keyReloads atomic.Int32
	r := New(Config{Logger: quiet(), RetryEvery: time.Millisecond, ReloadKeys: func(context.Context) error { keyReloads.Add(1); return nil }})
	run(t, r, st)
	if err := st.PutToken(context.Background(), record("tok", 7, now)); err != nil {
		t.Fatal(err)
	}
	rule := tokenRule("tok", now)
	if err := st.PutRevocation(context.Background(), rule); err != nil {
		t.Fatal(err)
	}
	close(st.first) // the store drops the watcher
	tok := &policy.Token{Claims: policy.Claims{ID: "tok"}}
	waitFor(t, "the rule written in the gap to be enforced", func() bool { return r.Revocations().Revoked(tok, time.Now()) })
	waitFor(t, "the gap to close", func() bool { return r.Gap() == nil })
	if keyReloads.Load() == 0 {
		t.Error("signing keys were not reloaded after the gap")
	}
	if got := r.RevokedHashes(time.Now()); len(got) != 1 || got[0] != 7 {
		t.Errorf("revoked hashes after the gap: %v, want [7]", got)
	}
}

// TestDeletedRuleStaysEnforced: deleting a rule from the store does not
// lift it on a running node (fail closed); the set's Prune drops it at its
// expiry. The old code tried to lift it when no other rule named its
// target, a branch only a clock-skewed node could reach.
func TestDeletedRuleStaysEnforced(t *testing.T) {
	st := openStore(t)
	now := time.Now()
	r := New(Config{Logger: quiet()})
	run(t, r, st)
	rule := tokenRule("tok", now)
	w := r.Writer(st)
	if err := w.PutRevocation(context.Background(), rule); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteRevocation(context.Background(), rule.ID); err != nil {
		t.Fatal(err)
	}
	// Events arrive in order: once this token is known, the deletion
	// before it has been applied.
	if err := st.PutToken(context.Background(), record("marker", 9, now)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the marker token", func() bool { _, ok := r.Token("marker"); return ok })
	tok := &policy.Token{Claims: policy.Claims{ID: "tok"}}
	if !r.Revocations().Revoked(tok, now) {
		t.Fatal("deleting a rule from the store lifted it on a running node")
	}
	if r.Prune(now.Add(2*time.Hour)) != 1 || r.Revocations().Revoked(tok, now.Add(2*time.Hour)) {
		t.Fatal("the deleted rule was not pruned at its expiry")
	}
}

// TestWriterEnforcesBeforeReturning: a rule written through the writer is in
// the set when the write returns, and the kernel side is told.
func TestWriterEnforcesBeforeReturning(t *testing.T) {
	st := openStore(t)
	r := New(Config{Logger: quiet()})
	now := time.Now()
	w := r.Writer(st)
	if err := w.PutToken(context.Background(), record("tok", 5, now)); err != nil {
		t.Fatal(err)
	}
	drain(r)
	if err := w.PutRevocation(context.Background(), tokenRule("tok", now)); err != nil {
		t.Fatal(err)
	}
	if !r.Revocations().Revoked(&policy.Token{Claims: policy.Claims{ID: "tok"}}, now) {
		t.Fatal("a rule written through the writer is not enforced when the write returns")
	}
	select {
	case <-r.Changed():
	default:
		t.Fatal("the kernel side was not told of the new rule")
	}
	if got := r.RevokedHashes(now); len(got) != 1 || got[0] != 5 {
		t.Fatalf("revoked hashes %v, want [5]", got)
	}
}

// TestFutureRuleSignalsWhenItTakesEffect: a rule that takes effect later
// (rotation's grace) changes what the kernel must drop without any write:
// the replica wakes the kernel side at that time.
func TestFutureRuleSignalsWhenItTakesEffect(t *testing.T) {
	r := New(Config{Logger: quiet()})
	now := time.Now()
	rule := tokenRule("tok", now)
	rule.EffectiveAt = now.Add(50 * time.Millisecond)
	r.Enforce(rule)
	drain(r)
	select {
	case <-r.Changed():
	case <-time.After(30 * time.Second):
		t.Fatal("no change signalled when the rule took effect")
	}
	r.stopTimers()
}

// TestLearnedRevokedTokenSignals: a revoked token the index did not know is
// a change (the kernel can drop it now); a known one costs nothing.
func TestLearnedRevokedTokenSignals(t *testing.T) {
	r := New(Config{Logger: quiet()})
	until := func() time.Time { return time.Now().Add(time.Hour) }
	d := &policy.Decision{TokenID: "tok", WireHash: 11, Reason: policy.ReasonRevoked}
	r.Learn(d, until)
	select {
	case <-r.Changed():
	default:
		t.Fatal("learning a revoked token signalled nothing")
	}
	r.Learn(d, until)
	select {
	case <-r.Changed():
		t.Fatal("learning a known token again signalled a change")
	default:
	}
	if id, _, ok := r.Lookup(11); !ok || id != "tok" {
		t.Fatalf("Lookup(11) = %q, %v", id, ok)
	}
}

func drain(r *Replica) {
	select {
	case <-r.Changed():
	default:
	}
}

// unreachableStore fails every read until up is set: a store down at start.
type unreachableStore struct {
	store.Store
	up atomic.Bool
}

func (s *unreachableStore) Watch(ctx context.Context) (<-chan store.Event, error) {
	if !s.up.Load() {
		return nil, store.ErrUnavailable
	}
	return s.Store.Watch(ctx)
}

// A replica restored from a snapshot enforces the snapshot's rules while the
// store cannot be read, reports the gap, and loads the store once it
// answers, rules written meanwhile included. Without a restore, a store
// down at start is an error (nothing to enforce from).
func TestRestoredReplicaWaitsForTheStore(t *testing.T) {
	now := time.Now()
	st := &unreachableStore{Store: openStore(t)}
	r := New(Config{Logger: quiet(), RetryEvery: time.Millisecond})
	r.Restore([]policy.Revocation{tokenRule("old", now)})
	run(t, r, st)
	old, fresh := &policy.Token{Claims: policy.Claims{ID: "old"}}, &policy.Token{Claims: policy.Claims{ID: "new"}}
	if !r.Revocations().Revoked(old, now) {
		t.Error("the snapshot's rule is not enforced")
	}
	if r.Gap() == nil {
		t.Error("a restored replica reports no gap while the store is down")
	}
	if err := st.Store.PutRevocation(context.Background(), tokenRule("new", now)); err != nil {
		t.Fatal(err)
	}
	st.up.Store(true)
	waitFor(t, "the store's rule to be enforced", func() bool { return r.Revocations().Revoked(fresh, time.Now()) })
	waitFor(t, "the gap to close", func() bool { return r.Gap() == nil })

	down := &unreachableStore{Store: openStore(t)}
	if err := New(Config{Logger: quiet()}).Run(t.Context(), down); err == nil {
		t.Error("an unrestored replica ran with the store down at start")
	}
}
