package admin_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/tokenwarden/tokenwarden/agent/admin"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// flakyTokens fails its first Token read as a store that does not answer.
type flakyTokens struct {
	store.Store
	n atomic.Int32
}

func (f *flakyTokens) Token(ctx context.Context, id string) (store.TokenRecord, error) {
	if f.n.Add(1) == 1 {
		return store.TokenRecord{}, fmt.Errorf("%w: timeout", store.ErrUnavailable)
	}
	return f.Store.Token(ctx, id)
}

// TestRotateScopeCheckFailsClosed attacks the earlier mayRotate, which let
// a rotation through when its own read of the token failed: a
// tokenwarden:issue caller, on a flapping store, rotated an admin's token
// and was handed the successor, with tokenwarden:admin.
func TestRotateScopeCheckFailsClosed(t *testing.T) {
	s := newServer(t)
	issuerBot := s.scopedToken("issuer-bot", admin.IssueScope)
	victim := s.issue(policy.IssueRequest{Subject: "alice", Class: "admin", Scopes: []string{admin.AdminScope}})
	api, err := admin.New(admin.Config{
		Issuer: s.iss, Store: &flakyTokens{Store: s.st}, Audit: s.log, AuditDir: s.auditDir, Decider: s.decider,
		Revocations: s.set, Now: s.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api)
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/tokens/"+victim.Record.ID+"/rotate", nil)
	req.Header.Set("Authorization", "Bearer "+issuerBot)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("rotation by an issue-scoped caller while the scope check's read failed: %d, want 503 (never the successor)", resp.StatusCode)
	}
}
