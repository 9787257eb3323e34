package revoke

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/policy"
)

// storer fails the first failures calls with err, then stores.
type storer struct {
	mu       sync.Mutex
	failures int
	err      error
	calls    int
	stored   []policy.Revocation
}

func (s *storer) Revoke(_ context.Context, r policy.Revocation) (policy.Revocation, int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.calls <= s.failures {
		return r, 0, s.err
	}
	s.stored = append(s.stored, r)
	return r, 1, nil
}

type enforcer struct {
	mu    sync.Mutex
	rules []policy.Revocation
}

func (e *enforcer) Enforce(r policy.Revocation) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.rules = append(e.rules, r)
}

func newRevoker(t *testing.T, s *storer, e *enforcer) *Revoker {
	t.Helper()
	v, err := New(Config{
		Store: s, Enforce: e, MaxLifetime: func() time.Duration { return time.Hour },
		RetryFirst: time.Millisecond, RetryMax: 4 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

var rule = policy.Revocation{Kind: policy.RevokeToken, Target: "tok", Reason: "anomaly:max_rps", Actor: "system"}

// TestInsistEnforcesAtOnceAndStoresLater: a store fault does not lose an
// automatic revocation: it is enforced from memory at once and stored by
// Run once the store takes it.
func TestInsistEnforcesAtOnceAndStoresLater(t *testing.T) {
	s := &storer{failures: 3, err: errors.New("etcd unavailable")}
	e := &enforcer{}
	v := newRevoker(t, s, e)
	v.Insist(rule)
	if len(e.rules) != 1 || e.rules[0].Target != "tok" || e.rules[0].Expires.IsZero() {
		t.Fatalf("enforced from memory: %+v, want one rule on tok with an expiry", e.rules)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { v.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(30 * time.Second)
	for v.Pending() != 0 { // a positive wait: polling is fine
		if time.Now().After(deadline) {
			t.Fatal("the rule was never stored")
		}
		time.Sleep(time.Millisecond)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.stored) != 1 || s.calls != 4 {
		t.Fatalf("stored %d rules in %d attempts, want 1 in 4", len(s.stored), s.calls)
	}
}

// TestInsistRefusedIsNotRetried: a refusal cannot be fixed by retrying;
// the rule stays enforced from memory.
func TestInsistRefusedIsNotRetried(t *testing.T) {
	s := &storer{failures: 1, err: &policy.Refusal{Msg: "no"}}
	e := &enforcer{}
	v := newRevoker(t, s, e)
	v.Insist(rule)
	if len(e.rules) != 1 || v.Pending() != 0 {
		t.Fatalf("refused: %d enforced, %d pending; want 1 and 0", len(e.rules), v.Pending())
	}
}

// TestInsistStoredFirstTimeEnforcesThroughTheStore: when the store takes
// the rule nothing is kept in memory here (the replica's writer enforced
// it).
func TestInsistStoredFirstTimeEnforcesThroughTheStore(t *testing.T) {
	s := &storer{}
	e := &enforcer{}
	newRevoker(t, s, e).Insist(rule)
	if len(e.rules) != 0 || len(s.stored) != 1 {
		t.Fatalf("%d enforced from memory, %d stored; want 0 and 1", len(e.rules), len(s.stored))
	}
}
