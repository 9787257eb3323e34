package agent

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/admintoken"
	"github.com/tokenwarden/tokenwarden/agent/kernel"
	"github.com/tokenwarden/tokenwarden/agent/testclock"
	"github.com/tokenwarden/tokenwarden/policy"
)

// TestBootstrapAdminTokenIsShortLivedAndRetired: the agent's own admin
// token lives at most BootstrapTTL; re-issued past half its life, the one
// it replaces works for Overlap (a CLI command that read the file just
// before finishes) and is revoked from then on: a copy of the file read
// before the re-issue is worth nothing after it.
func TestBootstrapAdminTokenIsShortLivedAndRetired(t *testing.T) {
	clock := testclock.New(time.Now().Truncate(time.Second))
	a, err := New(context.Background(), Config{
		DataDir: t.TempDir(), PolicyPath: "../deploy/policy.example.yaml", Env: "dev", BPF: kernel.ModeOff,
		Now: clock.Now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ctx := context.Background()
	path := a.adminToken.Path()
	if err := a.adminToken.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	first := readToken(t, path)
	tok, verr := a.decider.Verify(first, clock.Now())
	if verr != nil {
		t.Fatal(verr)
	}
	if life := time.Duration(tok.Expires-tok.IssuedAt) * time.Second; life > admintoken.BootstrapTTL {
		t.Errorf("bootstrap admin token lives %s, want at most %s", life, admintoken.BootstrapTTL)
	}
	allowed := func(token string) policy.Reason {
		d := a.decider.Decide(policy.Request{Token: token, Method: "GET", Host: "tokenwarden", Path: "/v1/keys"}, clock.Now())
		return d.Reason
	}

	// Before half its life: kept.
	clock.Add(admintoken.BootstrapTTL/2 - time.Minute)
	if err := a.adminToken.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if readToken(t, path) != first {
		t.Fatal("re-issued before half its life")
	}
	// Past half its life: re-issued; the first still works for Overlap.
	clock.Add(2 * time.Minute)
	if err := a.adminToken.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	second := readToken(t, path)
	if second == first {
		t.Fatal("not re-issued past half its life")
	}
	if r := allowed(first); r != policy.ReasonAllowed {
		t.Fatalf("the previous admin token within the overlap: %s, want ok", r)
	}
	clock.Add(admintoken.Overlap)
	if r := allowed(first); r != policy.ReasonRevoked {
		t.Fatalf("the previous admin token after the overlap: %s, want revoked", r)
	}
	if r := allowed(second); r != policy.ReasonAllowed {
		t.Fatalf("the current admin token: %s, want ok", r)
	}
	// Ensuring again keeps the current one and adds no rule for it.
	if err := a.adminToken.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if readToken(t, path) != second || allowed(second) != policy.ReasonAllowed {
		t.Fatal("the current admin token was replaced or revoked")
	}
}
