package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/agent/anomaly"
	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/authz"
	"github.com/tokenwarden/tokenwarden/agent/issuer"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/bpf"
	"github.com/tokenwarden/tokenwarden/policy"
)

// newIdleAgent builds an agent that is not running: no listeners, no store
// follower, so whatever it enforces got there without Watch.
func newIdleAgent(t *testing.T, dataDir string) *Agent {
	t.Helper()
	a, err := New(context.Background(), Config{
		DataDir: dataDir, PolicyPath: "../deploy/policy.example.yaml", Env: "dev", BPF: BPFOff,
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
	out, err := a.issuer.Issue(context.Background(), policy.IssueRequest{Subject: subject, Class: "service", Scopes: []string{"orders:read"}}, issuer.ActorSystem)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func tokenOfID(a *Agent, id string) *policy.Token {
	a.tokens.mu.RLock()
	defer a.tokens.mu.RUnlock()
	return a.tokens.byID[id]
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
	if _, _, err := a.issuer.Revoke(context.Background(), policy.Revocation{Kind: policy.RevokeToken, Target: tok.Record.ID, Reason: "test", Actor: issuer.ActorSystem}); err != nil {
		t.Fatal(err)
	}
	if d := a.decider.Decide(policy.Request{Token: tok.Token, Method: "GET", Host: "orders", Path: "/orders/1"}, time.Now()); d.Reason != policy.ReasonRevoked {
		t.Fatalf("right after revoke: %s, want revoked", d.Reason)
	}
	hashes := a.tokens.revokedHashes(a.revoked, time.Now())
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
			DataDir: dir, PolicyPath: "../deploy/policy.example.yaml", Env: "dev", BPF: BPFOff,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		revoked = issueDirect(t, a, "leaky")
		issueDirect(t, a, "fine")
		if _, _, err := a.issuer.Revoke(context.Background(), policy.Revocation{Kind: policy.RevokeToken, Target: revoked.Record.ID, Reason: "test", Actor: issuer.ActorSystem}); err != nil {
			t.Fatal(err)
		}
	}()
	a := newIdleAgent(t, dir)
	if err := a.loadState(context.Background()); err != nil {
		t.Fatal(err)
	}
	hashes := a.tokens.revokedHashes(a.revoked, time.Now())
	if len(hashes) != 1 || hashes[0] != revoked.Record.WireHash {
		t.Fatalf("after restart the kernel would hold %v, want the revoked token's hash %x", hashes, revoked.Record.WireHash)
	}
}

// TestFollowReloadsAfterAWatchDrop: a dropped watch is re-established and
// the state reloaded; what changed meanwhile is enforced, and /readyz
// reports the gap only while it lasts.
func TestFollowReloadsAfterAWatchDrop(t *testing.T) {
	a := newIdleAgent(t, t.TempDir())
	a.ready.Store(true)
	tok := issueDirect(t, a, "svc")
	// Written behind the agent's back (as another node would): only a
	// reload can bring it.
	rule := policy.Revocation{
		ID: policy.NewRevocationID(), Kind: policy.RevokeToken, Target: tok.Record.ID, Reason: "elsewhere",
		Actor: issuer.ActorSystem, CreatedAt: time.Now().UTC(), EffectiveAt: time.Now().UTC(), Expires: time.Now().Add(time.Hour).UTC(),
	}
	if err := a.store.PutRevocation(context.Background(), rule); err != nil {
		t.Fatal(err)
	}
	dropped := make(chan store.Event)
	close(dropped)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.follow(ctx, dropped, func() {}) }()
	deadline := time.Now().Add(5 * time.Second)
	for !a.revoked.Revoked(tokenOfID(a, tok.Record.ID), time.Now()) {
		if time.Now().After(deadline) {
			t.Fatal("the rule written during the gap is not enforced after the reload")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for a.readiness() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("readiness after the reload: %v", a.readiness())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("follow did not stop with its context")
	}
}

// TestDeletingOneOfTwoRulesKeepsTheOther: the revocation set merges rules
// on one jti, so deleting one must not lift the other.
func TestDeletingOneOfTwoRulesKeepsTheOther(t *testing.T) {
	a := newIdleAgent(t, t.TempDir())
	tok := issueDirect(t, a, "svc")
	ctx := context.Background()
	r1, _, err := a.issuer.Revoke(ctx, policy.Revocation{Kind: policy.RevokeToken, Target: tok.Record.ID, Reason: "one", Actor: issuer.ActorSystem})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.issuer.Revoke(ctx, policy.Revocation{Kind: policy.RevokeToken, Target: tok.Record.ID, Reason: "two", Actor: issuer.ActorSystem}); err != nil {
		t.Fatal(err)
	}
	if err := a.store.DeleteRevocation(ctx, r1.ID); err != nil {
		t.Fatal(err)
	}
	a.apply(ctx, store.Event{Kind: store.EventRevocation, Deleted: true, Revocation: &r1})
	if !a.revoked.Revoked(tokenOfID(a, tok.Record.ID), time.Now()) {
		t.Fatal("deleting one rule lifted the other rule on the same token")
	}
}

// TestServeHTTPDrains: the admin server's task returns only after the
// requests in flight have finished, so they never race Close.
func TestServeHTTPDrains(t *testing.T) {
	var finished atomic.Bool
	started := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		time.Sleep(300 * time.Millisecond)
		finished.Store(true)
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveHTTP(h)(lis)(ctx) }()
	go http.Get("http://" + lis.Addr().String() + "/")
	<-started
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !finished.Load() {
		t.Fatal("serveHTTP returned while a request was still running")
	}
}

// TestServeHTTPEndsStreams: a long-lived stream does not hold the drain
// open until its timeout.
func TestServeHTTPEndsStreams(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		http.NewResponseController(w).Flush()
		<-r.Context().Done()
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveHTTP(h)(lis)(ctx) }()
	resp, err := http.Get("http://" + lis.Addr().String() + "/v1/audit/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	start := time.Now()
	cancel()
	select {
	case <-done:
	case <-time.After(httpDrainTimeout / 2):
		t.Fatal("an open stream held the drain")
	}
	t.Logf("drained in %s", time.Since(start))
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

// TestAnomalyRevocationThatCannotBeStoredIsStillEnforced: the detector asks
// once; a revocation the store cannot take is enforced from memory.
func TestAnomalyRevocationThatCannotBeStoredIsStillEnforced(t *testing.T) {
	a := newIdleAgent(t, t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	a.runCtx.Store(&ctx)
	defer func() { cancel(); a.bg.Wait() }()
	// A token this node has no record of (issued elsewhere): the store
	// refuses a rule for it.
	id := policy.NewTokenID()
	a.onAnomaly(anomaly.Trigger{TokenID: id, Subject: "svc", Rule: "max_rps", Action: anomaly.ActionRevoke})
	tok := &policy.Token{Claims: policy.Claims{ID: id, Subject: "svc"}}
	if !a.revoked.Revoked(tok, time.Now()) {
		t.Fatal("an anomaly revocation that could not be stored is not enforced")
	}
}

// TestExposedAdminTokenIsReplaced: an admin token file others may read is
// rewritten 0600 and the token it held revoked.
func TestExposedAdminTokenIsReplaced(t *testing.T) {
	dir := t.TempDir()
	a := newIdleAgent(t, dir)
	ctx := context.Background()
	path, err := a.ensureAdminToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	old := readToken(t, path)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ensureAdminToken(ctx); err != nil {
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
	if err := os.WriteFile(path, []byte(strings.Repeat("x", maxSecretBytes+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ensureAdminToken(ctx); err == nil || !strings.Contains(err.Error(), "remove it") {
		t.Fatalf("oversized admin token file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, AdminTokenFile)); err != nil {
		t.Fatal(err)
	}
}

// TestKernelDropAuditsAreCapped: a flood of kernel drops is audited up to
// the cap, then summarised in one record.
func TestKernelDropAuditsAreCapped(t *testing.T) {
	a := newIdleAgent(t, t.TempDir())
	now := time.Unix(1_900_000_000, 0)
	a.cfg.Now = func() time.Time { return now }
	k := &kernel{a: a}
	k.drops = prometheus.NewCounter(prometheus.CounterOpts{Name: "test_drops_total", Help: "test"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.use.Run(ctx); close(done) }()
	for range 1000 {
		k.onDrop(bpf.DropEvent{Hash: 42})
	}
	k.flushDropAudit()
	cancel()
	<-done
	recs, err := audit.Tail(filepath.Join(a.cfg.DataDir, auditDir), 5000, audit.Filter{Action: audit.ActionKernelDrop})
	if err != nil {
		t.Fatal(err)
	}
	var single, summarised uint64
	for _, r := range recs {
		if r.Count > 0 {
			summarised += r.Count
		} else {
			single++
		}
	}
	if single != dropAuditsPerSecond || summarised != 1000-dropAuditsPerSecond {
		t.Fatalf("%d single records and %d summarised drops; want %d and %d", single, summarised, dropAuditsPerSecond, 1000-dropAuditsPerSecond)
	}
}
