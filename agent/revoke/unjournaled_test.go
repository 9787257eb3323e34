package revoke_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/replica"
	"github.com/tokenwarden/tokenwarden/agent/revoke"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// downStore prepares rules and never stores them: etcd is down.
type downStore struct{ n int }

func (s *downStore) Prepare(r policy.Revocation) (policy.Revocation, error) {
	if r.ID == "" {
		s.n++
		r.ID = fmt.Sprintf("rule-%d", s.n)
	}
	r.CreatedAt = time.Now()
	if r.EffectiveAt.IsZero() {
		r.EffectiveAt = r.CreatedAt
	}
	r.Expires = r.CreatedAt.Add(time.Hour)
	return r, nil
}

func (s *downStore) Revoke(context.Context, policy.Revocation) (policy.Revocation, int, error) {
	return policy.Revocation{}, 0, fmt.Errorf("%w: etcd down", store.ErrUnavailable)
}

func (s *downStore) Coverage(context.Context, policy.Revocation) ([]store.TokenRecord, error) {
	return nil, store.ErrUnavailable
}

func (s *downStore) TokenByLeakHash(context.Context, [32]byte) (store.TokenRecord, error) {
	return store.TokenRecord{}, store.ErrUnavailable
}

// TestUnjournaledRevocationIsStillRetried attacks an earlier Submit: with
// the store down and the journal refusing (full, or the disk is), the rule
// was enforced in memory only, never retried, and the caller's retry of
// the 503 was answered "existed, stored" (200): a revocation lost for every
// other node and at the next restart.
func TestUnjournaledRevocationIsStillRetried(t *testing.T) {
	j, err := revoke.OpenJournal(filepath.Join(t.TempDir(), "journal"))
	if err != nil {
		t.Fatal(err)
	}
	j.Close() // every journal write now fails
	rep := replica.New(replica.Config{Logger: quiet})
	v, err := revoke.New(revoke.Config{Store: &downStore{}, Enforce: rep, Revocations: rep.Revocations(), Journal: j, Logger: quiet, Deadline: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	req := policy.Revocation{Kind: policy.RevokeToken, Target: "tok-1", Reason: "leak", Actor: "op"}
	if _, err := v.Submit(context.Background(), req, revoke.Options{}); err == nil {
		t.Fatal("a revocation neither stored nor journaled answered without an error")
	}
	if v.Pending() != 1 {
		t.Fatalf("%d rules wait for the store, want the unjournaled one retried from memory", v.Pending())
	}
	res, err := v.Submit(context.Background(), req, revoke.Options{})
	if err != nil || !res.Existed || res.Stored {
		t.Errorf("retry: %+v, %v; want existed and not stored (200, replicating)", res, err)
	}
}
