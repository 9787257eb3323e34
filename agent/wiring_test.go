package agent

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/admintoken"
	"github.com/tokenwarden/tokenwarden/agent/anomaly"
	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/authz"
	"github.com/tokenwarden/tokenwarden/agent/issuer"
	"github.com/tokenwarden/tokenwarden/agent/kernel"
	"github.com/tokenwarden/tokenwarden/policy"
)

// newIdleAgent builds an agent that is not running: no listeners, no store
// follower, so whatever it enforces got there without Watch.
func newIdleAgent(t *testing.T, dataDir string) *Agent {
	t.Helper()
	a, err := New(context.Background(), Config{
		DataDir: dataDir, PolicyPath: "../deploy/policy.example.yaml", Env: "dev", BPF: kernel.ModeOff,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func issueDirect(t *testing.T, a *Agent, subject string) issuer.Issued {
	t.Helper()
	out, err := a.issuer.Issue(context.Background(), policy.IssueRequest{Subject: subject, Class: "service", Scopes: []string{"orders:read"}}, audit.ActorSystem)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func tokenOfID(a *Agent, id string) *policy.Token {
	t, _ := a.replica.Token(id)
	return t
}

// TestRevocationEnforcedBeforeTheWriteReturns: a revocation written on this
// node is in the revocation set and the token index when the issuer's call
// returns, without waiting for the store's Watch.
func TestRevocationEnforcedBeforeTheWriteReturns(t *testing.T) {
	a := newIdleAgent(t, t.TempDir())
	tok := issueDirect(t, a, "svc")
	if tokenOfID(a, tok.Record.ID) == nil {
		t.Fatal("issued token is not in the index")
	}
	now := time.Now()
	if d := a.decider.Decide(policy.Request{Token: tok.Token, Method: "GET", Host: "orders", Path: "/orders/1"}, now); !d.Allow {
		t.Fatalf("before revoke: %s", d.Reason)
	}
	if _, _, err := a.issuer.Revoke(context.Background(), policy.Revocation{Kind: policy.RevokeToken, Target: tok.Record.ID, Reason: "test", Actor: audit.ActorSystem}); err != nil {
		t.Fatal(err)
	}
	if d := a.decider.Decide(policy.Request{Token: tok.Token, Method: "GET", Host: "orders", Path: "/orders/1"}, time.Now()); d.Reason != policy.ReasonRevoked {
		t.Fatalf("right after revoke: %s, want revoked", d.Reason)
	}
	hashes := a.replica.RevokedHashes(time.Now())
	if len(hashes) != 1 || hashes[0] != tok.Record.WireHash {
		t.Fatalf("revoked hashes %v, want the token's %x", hashes, tok.Record.WireHash)
	}
}

// TestRestartKnowsRevokedTokenHashes: after a restart the kernel side must
// still drop revoked tokens, so the index holds their hashes too.
func TestRestartKnowsRevokedTokenHashes(t *testing.T) {
	dir := t.TempDir()
	var revoked issuer.Issued
	func() {
		a, err := New(context.Background(), Config{
			DataDir: dir, PolicyPath: "../deploy/policy.example.yaml", Env: "dev", BPF: kernel.ModeOff,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		revoked = issueDirect(t, a, "leaky")
		issueDirect(t, a, "fine")
		if _, _, err := a.issuer.Revoke(context.Background(), policy.Revocation{Kind: policy.RevokeToken, Target: revoked.Record.ID, Reason: "test", Actor: audit.ActorSystem}); err != nil {
			t.Fatal(err)
		}
	}()
	a := newIdleAgent(t, dir)
	if err := a.replica.Load(context.Background(), a.store); err != nil {
		t.Fatal(err)
	}
	hashes := a.replica.RevokedHashes(time.Now())
	if len(hashes) != 1 || hashes[0] != revoked.Record.WireHash {
		t.Fatalf("after restart the kernel would hold %v, want the revoked token's hash %x", hashes, revoked.Record.WireHash)
	}
}

// TestObserveCheckDoesNotAllocate: the hot path costs no allocation for a
// token seen before.
func TestObserveCheckDoesNotAllocate(t *testing.T) {
	a := newIdleAgent(t, t.TempDir())
	tok := issueDirect(t, a, "svc")
	d := a.decider.Decide(policy.Request{Token: tok.Token, Method: "GET", Host: "orders", Path: "/orders/1"}, time.Now())
	if !d.Allow {
		t.Fatal(d.Reason)
	}
	ev := authz.Event{Decision: d, Source: "10.1.2.3:4567", WireHash: d.WireHash}
	a.observeCheck(ev)
	if n := testing.AllocsPerRun(200, func() { a.observeCheck(ev) }); n != 0 {
		t.Errorf("observeCheck allocates %.1f times per check", n)
	}
}

func TestSourceAddr(t *testing.T) {
	for in, want := range map[string]string{
		"10.1.2.3:80": "10.1.2.3", "10.1.2.3": "10.1.2.3", "[::1]:80": "::1", "::1": "::1",
		"[::ffff:10.0.0.1]:9": "10.0.0.1", "": "invalid IP", "nonsense": "invalid IP",
	} {
		if got := sourceAddr(in).String(); got != want {
			t.Errorf("sourceAddr(%q) = %s, want %s", in, got, want)
		}
	}
}

// TestExposedAdminTokenIsReplaced: an admin token file others may read is
// rewritten 0600 and the token it held revoked.
func TestExposedAdminTokenIsReplaced(t *testing.T) {
	dir := t.TempDir()
	a := newIdleAgent(t, dir)
	ctx := context.Background()
	path := a.adminToken.Path()
	if err := a.adminToken.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	old := readToken(t, path)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := a.adminToken.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if now := readToken(t, path); now == old { // readToken checks 0600
		t.Fatal("the exposed admin token was kept")
	}
	d := a.decider.Decide(policy.Request{Token: old, Method: "GET", Host: "tokenwarden", Path: "/v1/keys"}, time.Now())
	if d.Reason != policy.ReasonRevoked {
		t.Fatalf("the exposed admin token: %s, want revoked", d.Reason)
	}
	// An oversized file is refused, not read.
	if err := os.WriteFile(path, []byte(strings.Repeat("x", 16<<10+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.adminToken.Ensure(ctx); err == nil || !strings.Contains(err.Error(), "remove it") {
		t.Fatalf("oversized admin token file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, admintoken.FileName)); err != nil {
		t.Fatal(err)
	}
}

// TestAnomalyRevocationThatCannotBeStoredIsStillEnforced: the detector asks
// once; a revocation the store cannot take is enforced from memory, through
// the agent's one revocation path.
func TestAnomalyRevocationThatCannotBeStoredIsStillEnforced(t *testing.T) {
	a := newIdleAgent(t, t.TempDir())
	// A token this node has no record of (issued elsewhere): the store
	// refuses a rule for it.
	id := policy.NewTokenID()
	a.onAnomaly(anomaly.Trigger{TokenID: id, Subject: "svc", Rule: "max_rps", Action: anomaly.ActionRevoke})
	tok := &policy.Token{Claims: policy.Claims{ID: id, Subject: "svc"}}
	if !a.replica.Revocations().Revoked(tok, time.Now()) {
		t.Fatal("an anomaly revocation that could not be stored is not enforced")
	}
	// The store answered (no such token): retrying cannot help.
	if a.revoker.Pending() != 0 {
		t.Fatalf("%d revocations pending a retry, want 0", a.revoker.Pending())
	}
}
