package issuer_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/testclock"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/issuer"
	"github.com/tokenwarden/tokenwarden/agent/revocation"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/store/bolt"
	"github.com/tokenwarden/tokenwarden/agent/wellknown"
	"github.com/tokenwarden/tokenwarden/policy"
)

// t0 is when every test's clock starts. Whole seconds, so the iat of a
// token minted at t0 is exactly t0.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	testEnv = "staging"
	// actor is the jti of the admin token the tests act as.
	actor = "admin-jti-0001"
)

// examplePolicy loads deploy/policy.example.yaml.
func examplePolicy(t *testing.T) *policy.Policy {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "policy.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Load("policy.example.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// fixture is an issuer over a real bolt store and audit log, with the
// revocation set an agent would keep from the store's Watch.
type fixture struct {
	t        *testing.T
	clock    *testclock.Clock
	pol      *policy.Policy
	kek      []byte
	dbPath   string
	st       *bolt.Store
	auditDir string
	log      *audit.Log
	iss      *issuer.Issuer
	set      *revocation.Set
	events   <-chan store.Event
}

func newFixture(t *testing.T, p *policy.Policy) *fixture {
	t.Helper()
	f := &fixture{t: t, clock: testclock.New(t0), pol: p, kek: newKEK(t)}
	f.dbPath = filepath.Join(t.TempDir(), bolt.FileName)
	st, err := bolt.Open(f.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f.st = st
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if f.events, err = st.Watch(ctx); err != nil {
		t.Fatal(err)
	}
	f.auditDir = t.TempDir()
	if f.log, err = audit.Open(audit.Config{Dir: f.auditDir, Now: f.clock.Now}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.log.Close() })
	f.iss = f.newIssuer(f.kek)
	f.set = revocation.NewSet()
	return f
}

func newKEK(t *testing.T) []byte {
	t.Helper()
	kek := make([]byte, store.KEKSize)
	if _, err := rand.Read(kek); err != nil {
		t.Fatal(err)
	}
	return kek
}

func (f *fixture) newIssuer(kek []byte) *issuer.Issuer {
	f.t.Helper()
	iss, err := issuer.New(context.Background(), f.config(kek))
	if err != nil {
		f.t.Fatalf("issuer.New: %v", err)
	}
	return iss
}

func (f *fixture) config(kek []byte) issuer.Config {
	return issuer.Config{
		Store: f.st, KEK: kek, Env: testEnv, Audit: f.log, Now: f.clock.Now,
		Policy: func() *policy.Policy { return f.pol },
	}
}

// sync applies the store changes made so far to the revocation set, as the
// agent's watch loop does. bolt publishes an event before the write
// returns, so everything written before the call is applied.
func (f *fixture) sync() {
	f.t.Helper()
	for {
		select {
		case ev, ok := <-f.events:
			if !ok {
				f.t.Fatal("store watch ended: the watcher fell behind or the store closed")
			}
			if ev.Kind != store.EventRevocation {
				continue
			}
			if ev.Deleted {
				f.set.Remove(*ev.Revocation)
			} else {
				f.set.Add(*ev.Revocation)
			}
		default:
			return
		}
	}
}

func (f *fixture) issue(req policy.IssueRequest) issuer.Issued {
	f.t.Helper()
	out, err := f.iss.Issue(context.Background(), req, actor)
	if err != nil {
		f.t.Fatalf("Issue(%+v): %v", req, err)
	}
	return out
}

// verify verifies tok with the issuer's current key set at the clock's time.
func (f *fixture) verify(tok string) *policy.Token {
	f.t.Helper()
	v := policy.Verifier{Keys: f.iss.KeySet(), Policy: f.pol, Env: testEnv}
	pt, verr := v.Verify(tok, f.clock.Now())
	if verr != nil {
		f.t.Fatalf("verify token: %v", verr)
	}
	return pt
}

func (f *fixture) record(id string) store.TokenRecord {
	f.t.Helper()
	rec, err := f.st.Token(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return rec
}

func (f *fixture) tokenCount() int {
	f.t.Helper()
	recs, err := f.st.Tokens(context.Background(), store.TokenFilter{})
	if err != nil {
		f.t.Fatal(err)
	}
	return len(recs)
}

func (f *fixture) rules() []policy.Revocation {
	f.t.Helper()
	rules, err := f.st.Revocations(context.Background())
	if err != nil {
		f.t.Fatal(err)
	}
	return rules
}

func (f *fixture) audited(flt audit.Filter) []audit.Record {
	f.t.Helper()
	var out []audit.Record
	if err := audit.Read(f.auditDir, flt, func(r audit.Record) error {
		out = append(out, r)
		return nil
	}); err != nil {
		f.t.Fatal(err)
	}
	return out
}

// assertNotOnDisk fails if any of secrets appears in the bolt file or in
// any file of the audit log.
func (f *fixture) assertNotOnDisk(secrets ...string) {
	f.t.Helper()
	files := []string{f.dbPath}
	entries, err := os.ReadDir(f.auditDir)
	if err != nil {
		f.t.Fatal(err)
	}
	for _, e := range entries {
		files = append(files, filepath.Join(f.auditDir, e.Name()))
	}
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.t.Fatal(err)
		}
		if len(data) == 0 {
			f.t.Fatalf("%s is empty: nothing was written where the test looks", name)
		}
		for _, s := range secrets {
			if bytes.Contains(data, []byte(s)) {
				f.t.Errorf("%s holds a token secret (%.16s…)", filepath.Base(name), s)
			}
		}
	}
}

// signatureID is a token's wire identity computed apart from
// policy.WireHash: the first 8 bytes of its Ed25519 signature, big-endian.
func signatureID(t *testing.T, tok string) uint64 {
	t.Helper()
	sig, err := base64.RawURLEncoding.DecodeString(tok[strings.LastIndexByte(tok, '.')+1:])
	if err != nil || len(sig) != ed25519.SignatureSize {
		t.Fatalf("signature segment: %d bytes, %v", len(sig), err)
	}
	return binary.BigEndian.Uint64(sig)
}

func asRefusal(t *testing.T, err error) *policy.Refusal {
	t.Helper()
	var ie *policy.Refusal
	if !errors.As(err, &ie) {
		t.Fatalf("err = %v (%T), want *policy.Refusal", err, err)
	}
	return ie
}

func TestIssueStoresHashesNeverTheToken(t *testing.T) {
	tests := map[string]struct {
		req        policy.IssueRequest
		wantScopes []string
		wantTTL    time.Duration
	}{
		"class defaults": {
			req:        policy.IssueRequest{Subject: "orders-api", Class: "service"},
			wantScopes: []string{"orders:read", "orders:write", "inventory:read"},
			wantTTL:    time.Hour,
		},
		"narrowed scopes, tenant and ttl": {
			req:        policy.IssueRequest{Subject: "ci-runner", Class: "ci-deploy", Scopes: []string{"artifacts:read"}, Tenant: "acme", TTL: 3 * time.Hour},
			wantScopes: []string{"artifacts:read"},
			wantTTL:    3 * time.Hour,
		},
		"duplicate scopes kept once": {
			req:        policy.IssueRequest{Subject: "orders-api", Class: "service", Scopes: []string{"orders:read", "orders:read"}},
			wantScopes: []string{"orders:read"},
			wantTTL:    time.Hour,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, examplePolicy(t))
			out := f.issue(tc.req)
			tok := out.Token
			if !strings.HasPrefix(tok, policy.TokenPrefix) {
				t.Fatalf("token %.10q lacks the %s prefix", tok, policy.TokenPrefix)
			}
			pt := f.verify(tok)
			rec := f.record(pt.ID)
			want := store.TokenRecord{
				ID: pt.ID, Subject: tc.req.Subject, Class: tc.req.Class, Env: testEnv, Tenant: tc.req.Tenant,
				Scopes: tc.wantScopes, KeyID: pt.KeyID, IssuedAt: t0, ExpiresAt: t0.Add(tc.wantTTL),
				LeakHash: sha256.Sum256([]byte(tok)), WireHash: signatureID(t, tok), Status: store.TokenActive, Actor: actor,
			}
			for what, got := range map[string]store.TokenRecord{"stored": rec, "returned": out.Record} {
				if !recordsEqual(got, want) {
					t.Errorf("%s record:\n got %+v\nwant %+v", what, got, want)
				}
			}
			if byLeak, err := f.st.TokenByLeakHash(context.Background(), sha256.Sum256([]byte(tok))); err != nil || byLeak.ID != pt.ID {
				t.Errorf("TokenByLeakHash = %s, %v; want %s", byLeak.ID, err, pt.ID)
			}
			if pt.Subject != tc.req.Subject || pt.Class != tc.req.Class || pt.Tenant != tc.req.Tenant || !slices.Equal(pt.Scopes, tc.wantScopes) {
				t.Errorf("claims %+v do not match the request %+v", pt.Claims, tc.req)
			}
			recs := f.audited(audit.Filter{Action: audit.ActionTokenIssue, TokenID: pt.ID})
			if len(recs) != 1 || recs[0].Actor != actor || recs[0].Subject != tc.req.Subject || recs[0].Tenant != tc.req.Tenant {
				t.Errorf("token.issue records = %+v, want one by %s", recs, actor)
			}
			// The whole token, and its signature on its own, must be nowhere
			// on disk.
			f.assertNotOnDisk(tok, tok[strings.LastIndexByte(tok, '.')+1:])
		})
	}
}

// recordsEqual compares records with their times in UTC: a stored time
// comes back from JSON in another representation.
func recordsEqual(a, b store.TokenRecord) bool {
	utc := func(r store.TokenRecord) store.TokenRecord {
		r.IssuedAt, r.ExpiresAt = r.IssuedAt.UTC(), r.ExpiresAt.UTC()
		return r
	}
	return reflect.DeepEqual(utc(a), utc(b))
}

func TestIssueRefusedByPolicy(t *testing.T) {
	// Policy validation keeps a class's max_ttl at or below that of each of
	// its environments, so the class's is the one that binds.
	tests := map[string]struct {
		req     policy.IssueRequest
		wantMsg string // "" means the request is within policy
	}{
		"scope outside class": {
			req:     policy.IssueRequest{Subject: "orders-api", Class: "service", Scopes: []string{"orders:read", "deploy:write"}},
			wantMsg: `scope "deploy:write" is outside class service`,
		},
		"ttl above class max_ttl": {
			req:     policy.IssueRequest{Subject: "orders-api", Class: "service", TTL: 25 * time.Hour},
			wantMsg: "above the limit of 24h0m0s",
		},
		"ttl at class max_ttl": {
			req: policy.IssueRequest{Subject: "orders-api", Class: "service", TTL: 24 * time.Hour},
		},
		"ttl above class max_ttl, below environment's": {
			req:     policy.IssueRequest{Subject: "ci-runner", Class: "ci-deploy", Env: "prod", TTL: 13 * time.Hour},
			wantMsg: "above the limit of 12h0m0s for class ci-deploy in prod",
		},
		"ttl above equal class and environment max_ttl": {
			req:     policy.IssueRequest{Subject: "orders-api", Class: "service", Env: "prod", TTL: 24*time.Hour + time.Second},
			wantMsg: "above the limit of 24h0m0s for class service in prod",
		},
		"ttl at equal class and environment max_ttl": {
			req: policy.IssueRequest{Subject: "orders-api", Class: "service", Env: "prod", TTL: 24 * time.Hour},
		},
		"class not allowed in environment": {
			req:     policy.IssueRequest{Subject: "ci-runner", Class: "ci-deploy", Env: "dev"},
			wantMsg: "class ci-deploy may not be issued in dev",
		},
		"unknown class": {
			req:     policy.IssueRequest{Subject: "orders-api", Class: "superuser"},
			wantMsg: `unknown class "superuser"`,
		},
		"unknown environment": {
			req:     policy.IssueRequest{Subject: "orders-api", Class: "service", Env: "qa"},
			wantMsg: `unknown environment "qa"`,
		},
		"missing subject": {
			req:     policy.IssueRequest{Class: "service"},
			wantMsg: "subject is required",
		},
		"ttl below a second": {
			req:     policy.IssueRequest{Subject: "orders-api", Class: "service", TTL: time.Millisecond},
			wantMsg: "at least 1s",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, examplePolicy(t))
			out, err := f.iss.Issue(context.Background(), tc.req, actor)
			issued := f.audited(audit.Filter{Action: audit.ActionTokenIssue})
			if tc.wantMsg == "" {
				if err != nil {
					t.Fatalf("Issue: %v", err)
				}
				if f.tokenCount() != 1 || len(issued) != 1 {
					t.Errorf("after issuance: %d records, %d token.issue audit records; want 1 and 1", f.tokenCount(), len(issued))
				}
				return
			}
			ie := asRefusal(t, err)
			if !strings.Contains(ie.Msg, tc.wantMsg) {
				t.Errorf("refusal %q does not say %q", ie.Msg, tc.wantMsg)
			}
			if out.Token != "" {
				t.Error("a refused request returned a token")
			}
			if n := f.tokenCount(); n != 0 || len(issued) != 0 {
				t.Errorf("a refused request left %d records and %d token.issue audit records", n, len(issued))
			}
		})
	}
}

func TestRotate(t *testing.T) {
	tests := map[string]struct {
		class  string
		scopes []string
		grace  time.Duration // the class's rotation_grace
	}{
		"with rotation_grace":    {class: "ci-deploy", scopes: []string{"artifacts:read"}, grace: 15 * time.Minute},
		"without rotation_grace": {class: "service", scopes: []string{"orders:read", "inventory:read"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, examplePolicy(t))
			ctx := context.Background()
			pred := f.issue(policy.IssueRequest{Subject: "builder", Class: tc.class, Scopes: tc.scopes, Tenant: "acme"})
			predTok := f.verify(pred.Token)

			rotatedAt := t0.Add(20 * time.Minute)
			f.clock.Set(rotatedAt)
			succ, err := f.iss.Rotate(ctx, pred.Record.ID, actor)
			if err != nil {
				t.Fatalf("Rotate: %v", err)
			}
			f.sync()

			st := f.verify(succ.Token)
			if st.Rotated != pred.Record.ID {
				t.Errorf("successor rot claim = %q, want %q", st.Rotated, pred.Record.ID)
			}
			if st.ID == pred.Record.ID || st.Subject != "builder" || st.Class != tc.class || st.Tenant != "acme" ||
				!slices.Equal(st.Scopes, tc.scopes) || st.Env != testEnv {
				t.Errorf("successor claims %+v, want those of %+v with a new jti", st.Claims, predTok.Claims)
			}
			if st.IssuedAt != rotatedAt.Unix() {
				t.Errorf("successor iat = %d, want the rotation time %d", st.IssuedAt, rotatedAt.Unix())
			}
			srec := f.record(st.ID)
			if srec.Rotated != pred.Record.ID || srec.Status != store.TokenActive || srec.Successor != "" {
				t.Errorf("successor record: rotated=%q status=%s successor=%q", srec.Rotated, srec.Status, srec.Successor)
			}
			prec := f.record(pred.Record.ID)
			if prec.Status != store.TokenRotated || prec.Successor != st.ID {
				t.Errorf("predecessor record: status=%s successor=%q, want rotated, %q", prec.Status, prec.Successor, st.ID)
			}

			rules := f.rules()
			if len(rules) != 1 {
				t.Fatalf("rules = %+v, want one", rules)
			}
			r := rules[0]
			retireAt := rotatedAt.Add(tc.grace)
			if r.Kind != policy.RevokeToken || r.Target != pred.Record.ID || !r.EffectiveAt.Equal(retireAt) || r.Actor != actor || r.Reason == "" {
				t.Errorf("rule %+v, want a token rule on %s effective at %v by %s", r, pred.Record.ID, retireAt, actor)
			}
			if tc.grace > 0 && f.set.Revoked(predTok, retireAt.Add(-time.Second)) {
				t.Error("predecessor revoked before its grace ended")
			}
			if !f.set.Revoked(predTok, retireAt) {
				t.Error("predecessor not revoked once its grace ended")
			}
			if f.set.Revoked(st, retireAt.Add(time.Hour)) {
				t.Error("successor revoked")
			}

			rot := f.audited(audit.Filter{Action: audit.ActionTokenRotate})
			if len(rot) != 1 || rot[0].TokenID != pred.Record.ID || rot[0].Actor != actor || !strings.Contains(string(rot[0].Details), st.ID) {
				t.Errorf("token.rotate records = %+v, want one for %s naming %s", rot, pred.Record.ID, st.ID)
			}
			if iss := f.audited(audit.Filter{Action: audit.ActionTokenIssue, TokenID: st.ID}); len(iss) != 1 || iss[0].Actor != actor {
				t.Errorf("successor's token.issue records = %+v", iss)
			}
			f.assertNotOnDisk(pred.Token, succ.Token)
		})
	}
}

func TestRotateRefused(t *testing.T) {
	tests := map[string]struct {
		// setup returns the id to rotate and moves the clock as it needs.
		setup        func(f *fixture) string
		wantIssueErr string // substring of the *policy.Refusal
		wantNotFound bool
	}{
		"already rotated": {
			setup: func(f *fixture) string {
				id := f.issue(policy.IssueRequest{Subject: "builder", Class: "ci-deploy"}).Record.ID
				if _, err := f.iss.Rotate(context.Background(), id, actor); err != nil {
					f.t.Fatal(err)
				}
				return id
			},
			wantIssueErr: "already rotated",
		},
		"revoked": {
			setup: func(f *fixture) string {
				id := f.issue(policy.IssueRequest{Subject: "builder", Class: "ci-deploy"}).Record.ID
				if _, _, err := f.iss.Revoke(context.Background(), policy.Revocation{Kind: policy.RevokeToken, Target: id, Reason: "test", Actor: actor}); err != nil {
					f.t.Fatal(err)
				}
				return id
			},
			wantIssueErr: "is revoked",
		},
		"revoked by a subject rule": {
			setup: func(f *fixture) string {
				id := f.issue(policy.IssueRequest{Subject: "builder", Class: "ci-deploy"}).Record.ID
				f.clock.Set(t0.Add(time.Minute))
				if _, _, err := f.iss.Revoke(context.Background(), policy.Revocation{Kind: policy.RevokeSubject, Target: "builder", Reason: "test", Actor: actor}); err != nil {
					f.t.Fatal(err)
				}
				return id
			},
			wantIssueErr: "is revoked",
		},
		"revoked by a rule that took effect after it was made": {
			setup: func(f *fixture) string {
				id := f.issue(policy.IssueRequest{Subject: "builder", Class: "ci-deploy"}).Record.ID
				if _, _, err := f.iss.Revoke(context.Background(), policy.Revocation{
					Kind: policy.RevokeToken, Target: id, Reason: "migrate by then", Actor: actor, EffectiveAt: t0.Add(10 * time.Minute),
				}); err != nil {
					f.t.Fatal(err)
				}
				f.clock.Set(t0.Add(20 * time.Minute))
				return id
			},
			wantIssueErr: "is revoked",
		},
		"expired": {
			setup: func(f *fixture) string {
				id := f.issue(policy.IssueRequest{Subject: "builder", Class: "ci-deploy"}).Record.ID
				f.clock.Set(t0.Add(time.Hour + policy.MaxClockSkew)) // default_ttl 1h, plus the most exp_leeway any policy allows
				return id
			},
			wantIssueErr: "is expired",
		},
		"unknown": {
			setup:        func(f *fixture) string { return "nosuchtoken" },
			wantNotFound: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, examplePolicy(t))
			id := tc.setup(f)
			before := f.tokenCount()
			rulesBefore := len(f.rules())
			out, err := f.iss.Rotate(context.Background(), id, actor)
			switch {
			case tc.wantNotFound:
				if !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("err = %v, want store.ErrNotFound", err)
				}
			default:
				if ie := asRefusal(t, err); !strings.Contains(ie.Msg, tc.wantIssueErr) {
					t.Errorf("refusal %q does not say %q", ie.Msg, tc.wantIssueErr)
				}
			}
			if out.Token != "" {
				t.Error("a refused rotation returned a token")
			}
			if n := f.tokenCount() - before; n != 0 {
				t.Errorf("a refused rotation stored %d tokens", n)
			}
			if n := len(f.rules()) - rulesBefore; n != 0 {
				t.Errorf("a refused rotation stored %d rules", n)
			}
		})
	}
}

// The rotation scheduler and an operator may rotate the same token at
// once; only one successor may come of it.
func TestRotateConcurrentlyMakesOneSuccessor(t *testing.T) {
	f := newFixture(t, examplePolicy(t))
	id := f.issue(policy.IssueRequest{Subject: "builder", Class: "ci-deploy"}).Record.ID
	const n = 8
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		won     []string
		refused int
	)
	for range n {
		wg.Go(func() {
			out, err := f.iss.Rotate(context.Background(), id, actor)
			mu.Lock()
			defer mu.Unlock()
			var ie *policy.Refusal
			switch {
			case err == nil:
				won = append(won, out.Record.ID)
			case errors.As(err, &ie):
				refused++
			default:
				t.Errorf("Rotate: %v", err)
			}
		})
	}
	wg.Wait()
	if len(won) != 1 || refused != n-1 {
		t.Fatalf("%d rotations succeeded (%v), %d refused; want 1 and %d", len(won), won, refused, n-1)
	}
	if got := f.tokenCount(); got != 2 {
		t.Errorf("%d token records, want the predecessor and one successor", got)
	}
	if succ := f.record(id).Successor; succ != won[0] {
		t.Errorf("predecessor names successor %q, but %q was returned", succ, won[0])
	}
	if rules := f.rules(); len(rules) != 1 {
		t.Errorf("%d revocation rules, want 1", len(rules))
	}
}

// population is the tokens TestRevokeCoversLiveTokens revokes from: two
// subjects across two tenants, one token already revoked, all signed by a
// key since demoted to verifying.
type population struct {
	tokens map[string]*policy.Token // by name
	kid    string
}

func issuePopulation(f *fixture) population {
	p := population{tokens: map[string]*policy.Token{}}
	for _, spec := range []struct{ name, subject, tenant string }{
		{"alice-acme-1", "alice", "acme"},
		{"alice-acme-2", "alice", "acme"},
		{"alice-globex", "alice", "globex"}, // revoked below
		{"bob-acme", "bob", "acme"},
		{"bob-globex", "bob", "globex"},
		{"bob-none", "bob", ""},
	} {
		out := f.issue(policy.IssueRequest{Subject: spec.subject, Class: "service", Tenant: spec.tenant})
		p.tokens[spec.name] = f.verify(out.Token)
		p.kid = out.Record.KeyID
	}
	if _, n, err := f.iss.Revoke(context.Background(), policy.Revocation{
		Kind: policy.RevokeToken, Target: p.tokens["alice-globex"].ID, Reason: "offboarded", Actor: actor,
	}); err != nil || n != 1 {
		f.t.Fatalf("Revoke alice-globex: covered %d, %v", n, err)
	}
	// The active key cannot be revoked: it would sign revoked tokens.
	if _, err := f.iss.RotateKeysNow(context.Background(), actor); err != nil {
		f.t.Fatal(err)
	}
	return p
}

func TestRevokeCoversLiveTokens(t *testing.T) {
	tests := map[string]struct {
		kind   policy.RevocationKind
		target func(p population) string
		want   []string // the live tokens covered
	}{
		"token":                       {kind: policy.RevokeToken, target: named("alice-acme-1"), want: []string{"alice-acme-1"}},
		"already revoked token":       {kind: policy.RevokeToken, target: named("alice-globex")},
		"subject":                     {kind: policy.RevokeSubject, target: literal("alice"), want: []string{"alice-acme-1", "alice-acme-2"}},
		"other subject":               {kind: policy.RevokeSubject, target: literal("bob"), want: []string{"bob-acme", "bob-globex", "bob-none"}},
		"unknown subject":             {kind: policy.RevokeSubject, target: literal("carol")},
		"tenant":                      {kind: policy.RevokeTenant, target: literal("acme"), want: []string{"alice-acme-1", "alice-acme-2", "bob-acme"}},
		"tenant with a revoked token": {kind: policy.RevokeTenant, target: literal("globex"), want: []string{"bob-globex"}},
		"key": {
			kind: policy.RevokeKey, target: func(p population) string { return p.kid },
			want: []string{"alice-acme-1", "alice-acme-2", "bob-acme", "bob-globex", "bob-none"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, examplePolicy(t))
			pop := issuePopulation(f)
			at := t0.Add(time.Minute)
			f.clock.Set(at)
			rule, covered, err := f.iss.Revoke(context.Background(), policy.Revocation{
				Kind: tc.kind, Target: tc.target(pop), Reason: "test " + name, Actor: actor,
			})
			if err != nil {
				t.Fatalf("Revoke: %v", err)
			}
			if covered != len(tc.want) {
				t.Errorf("covered = %d, want %d (%v)", covered, len(tc.want), tc.want)
			}
			if rule.ID == "" || !rule.EffectiveAt.Equal(at) || !rule.CreatedAt.Equal(at) {
				t.Errorf("rule %+v: want an id, created and effective at %v", rule, at)
			}
			f.sync()
			for tokName, tok := range pop.tokens {
				wantRevoked := slices.Contains(tc.want, tokName) || tokName == "alice-globex"
				if got := f.set.Revoked(tok, at); got != wantRevoked {
					t.Errorf("%s: revoked = %v, want %v", tokName, got, wantRevoked)
				}
				rec := f.record(tok.ID)
				if wantStatus := map[bool]store.TokenStatus{true: store.TokenRevoked, false: store.TokenActive}[wantRevoked]; rec.Status != wantStatus {
					t.Errorf("%s: record status %s, want %s", tokName, rec.Status, wantStatus)
				}
			}
		})
	}
}

func named(name string) func(population) string {
	return func(p population) string { return p.tokens[name].ID }
}

func literal(s string) func(population) string { return func(population) string { return s } }

// A subject or tenant rule is a "not before": tokens issued after it (a
// role change, then fresh tokens) keep working.
func TestRevokeCoversOnlyEarlierTokens(t *testing.T) {
	tests := map[string]struct {
		kind   policy.RevocationKind
		target string
	}{
		"subject": {kind: policy.RevokeSubject, target: "alice"},
		"tenant":  {kind: policy.RevokeTenant, target: "acme"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, examplePolicy(t))
			req := policy.IssueRequest{Subject: "alice", Class: "service", Tenant: "acme"}
			before := f.verify(f.issue(req).Token)

			f.clock.Set(t0.Add(time.Minute))
			rule, covered, err := f.iss.Revoke(context.Background(), policy.Revocation{Kind: tc.kind, Target: tc.target, Reason: "role change", Actor: actor})
			if err != nil || covered != 1 {
				t.Fatalf("Revoke: covered %d, %v; want 1", covered, err)
			}
			if !rule.IssuedBefore.Equal(t0.Add(time.Minute)) {
				t.Errorf("issued_before = %v, want the time of the rule", rule.IssuedBefore)
			}
			if want := rule.IssuedBefore.Add(f.pol.MaxLifetime() + policy.MaxClockSkew); !rule.Expires.Equal(want) {
				t.Errorf("expires = %v, want issued_before + max lifetime + skew = %v", rule.Expires, want)
			}

			f.clock.Set(t0.Add(2 * time.Minute))
			after := f.verify(f.issue(req).Token)
			f.sync()
			now := f.clock.Now()
			if !f.set.Revoked(before, now) {
				t.Error("token issued before the rule is not revoked")
			}
			if f.set.Revoked(after, now) {
				t.Error("token issued after the rule is revoked")
			}
			if st := f.record(after.ID).Status; st != store.TokenActive {
				t.Errorf("later token's record is %s", st)
			}
			// A second rule now covers the later token, and only it: the
			// earlier one is already revoked.
			if _, covered, err := f.iss.Revoke(context.Background(), policy.Revocation{Kind: tc.kind, Target: tc.target, Reason: "again", Actor: actor}); err != nil || covered != 1 {
				t.Errorf("second Revoke: covered %d, %v; want 1", covered, err)
			}
		})
	}
}

// An action without an actor is refused before it changes anything: its
// audit record would be refused, leaving the change unaudited.
func TestActionsNeedAnActor(t *testing.T) {
	tests := map[string]func(f *fixture, id string) error{
		"issue": func(f *fixture, _ string) error {
			_, err := f.iss.Issue(context.Background(), policy.IssueRequest{Subject: "alice", Class: "service"}, "")
			return err
		},
		"rotate": func(f *fixture, id string) error {
			_, err := f.iss.Rotate(context.Background(), id, "")
			return err
		},
		"revoke": func(f *fixture, id string) error {
			_, _, err := f.iss.Revoke(context.Background(), policy.Revocation{Kind: policy.RevokeToken, Target: id, Reason: "leaked"})
			return err
		},
		"rotate keys": func(f *fixture, _ string) error {
			_, err := f.iss.RotateKeys(context.Background(), "")
			return err
		},
	}
	for name, act := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, examplePolicy(t))
			id := f.issue(policy.IssueRequest{Subject: "alice", Class: "ci-deploy"}).Record.ID
			keys, _ := f.st.Keys(context.Background())
			records := len(f.audited(audit.Filter{}))
			if err := act(f, id); err == nil || !strings.Contains(err.Error(), "actor") {
				t.Fatalf("err = %v, want a refusal naming the missing actor", err)
			}
			if n := f.tokenCount(); n != 1 {
				t.Errorf("%d token records, want 1", n)
			}
			if rec := f.record(id); rec.Status != store.TokenActive || rec.Successor != "" {
				t.Errorf("token record changed: %+v", rec)
			}
			if rules := f.rules(); len(rules) != 0 {
				t.Errorf("rules stored: %+v", rules)
			}
			if now, _ := f.st.Keys(context.Background()); len(now) != len(keys) {
				t.Errorf("%d keys, want %d", len(now), len(keys))
			}
			if n := len(f.audited(audit.Filter{})); n != records {
				t.Errorf("%d audit records, want %d", n, records)
			}
		})
	}
}

func TestRevokeRefused(t *testing.T) {
	tests := map[string]struct {
		rule         policy.Revocation
		wantIssueErr string
		wantNotFound bool
	}{
		"unknown key":   {rule: policy.Revocation{Kind: policy.RevokeKey, Target: "k_nosuchkey", Reason: "compromised"}, wantIssueErr: `no signing key "k_nosuchkey"`},
		"active key":    {rule: policy.Revocation{Kind: policy.RevokeKey, Target: "<active>", Reason: "compromised"}, wantIssueErr: "is the active signing key"},
		"unknown token": {rule: policy.Revocation{Kind: policy.RevokeToken, Target: "nosuchtoken", Reason: "leaked"}, wantNotFound: true},
		"no reason":     {rule: policy.Revocation{Kind: policy.RevokeSubject, Target: "alice"}, wantIssueErr: "needs a reason"},
		"no target":     {rule: policy.Revocation{Kind: policy.RevokeTenant, Reason: "offboarded"}, wantIssueErr: "needs a target"},
		"unknown kind":  {rule: policy.Revocation{Kind: "everything", Target: "x", Reason: "panic"}, wantIssueErr: `revocation kind "everything"`},
		"no actor":      {rule: policy.Revocation{Kind: policy.RevokeSubject, Target: "alice", Reason: "role change", Actor: "-"}, wantIssueErr: "needs an actor"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, examplePolicy(t))
			alice := f.issue(policy.IssueRequest{Subject: "alice", Class: "service"})
			r := tc.rule
			if r.Target == "<active>" {
				r.Target = alice.Record.KeyID
			}
			switch r.Actor {
			case "":
				r.Actor = actor
			case "-":
				r.Actor = ""
			}
			_, _, err := f.iss.Revoke(context.Background(), r)
			if tc.wantNotFound {
				if !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("err = %v, want store.ErrNotFound", err)
				}
			} else if ie := asRefusal(t, err); !strings.Contains(ie.Msg, tc.wantIssueErr) {
				t.Errorf("refusal %q does not say %q", ie.Msg, tc.wantIssueErr)
			}
			if rules := f.rules(); len(rules) != 0 {
				t.Errorf("a refused revocation stored %+v", rules)
			}
			if st := f.record(alice.Record.ID).Status; st != store.TokenActive {
				t.Errorf("a refused revocation marked a token %s", st)
			}
			if recs := f.audited(audit.Filter{Action: audit.ActionRevocationCreate}); len(recs) != 0 {
				t.Errorf("a refused revocation was audited: %+v", recs)
			}
		})
	}
}

func TestRotateKeys(t *testing.T) {
	f := newFixture(t, examplePolicy(t))
	ctx := context.Background()
	maxLife := f.pol.MaxLifetime()

	first := f.issue(policy.IssueRequest{Subject: "orders-api", Class: "service", TTL: 24 * time.Hour})
	k1 := first.Record.KeyID
	keyState := func(id string) store.KeyState {
		t.Helper()
		for _, k := range f.iss.Keys() {
			if k.ID == id {
				return k.State
			}
		}
		t.Fatalf("key %s is not stored", id)
		return ""
	}

	steps := []struct {
		name   string
		at     time.Time
		states func(newKey string) map[string]store.KeyState
	}{
		{
			name: "first rotation demotes the active key",
			at:   t0.Add(time.Hour),
			states: func(k2 string) map[string]store.KeyState {
				return map[string]store.KeyState{k1: store.KeyVerifying, k2: store.KeyActive}
			},
		},
		{
			name: "a verifying key younger than the max lifetime keeps verifying",
			at:   t0.Add(time.Hour + issuer.KeyLead + maxLife),
			states: func(k3 string) map[string]store.KeyState {
				return map[string]store.KeyState{k1: store.KeyVerifying, k3: store.KeyActive}
			},
		},
		{
			name: "a verifying key older than the max lifetime is retired",
			at:   t0.Add(time.Hour + 2*issuer.KeyLead + maxLife + policy.MaxClockSkew + time.Second),
			states: func(k4 string) map[string]store.KeyState {
				return map[string]store.KeyState{k1: store.KeyRetired, k4: store.KeyActive}
			},
		},
	}
	var issuedBy []string // token per key, in key order
	issuedBy = append(issuedBy, first.Token)
	prev := k1
	for n, step := range steps {
		f.clock.Set(step.at)
		nk, err := f.iss.RotateKeys(ctx, actor)
		if err != nil {
			t.Fatalf("%s: RotateKeys: %v", step.name, err)
		}
		if len(nk.Sealed) != 0 {
			t.Errorf("%s: RotateKeys returned the sealed private key", step.name)
		}
		// Published ahead: the new key verifies at once but signs nothing
		// until the lead time has passed; the previous key signs meanwhile.
		if nk.State != store.KeyPending || !nk.ActivateAt.Equal(step.at.Add(issuer.KeyLead)) {
			t.Errorf("%s: new key %s activates at %v, want pending until %v", step.name, nk.State, nk.ActivateAt, step.at.Add(issuer.KeyLead))
		}
		if got := keyState(nk.ID); got != store.KeyPending {
			t.Errorf("%s: new key is %s, want pending", step.name, got)
		}
		if !f.iss.KeySet().Has(nk.ID) {
			t.Errorf("%s: the pending key is not in the key set", step.name)
		}
		for _, at := range []time.Duration{0, issuer.KeyLead - time.Second} {
			f.clock.Set(step.at.Add(at))
			if out := f.issue(policy.IssueRequest{Subject: "orders-api", Class: "service"}); out.Record.KeyID != prev {
				t.Errorf("%s: token %v after the rotation signed by %s, want the previous key %s", step.name, at, out.Record.KeyID, prev)
			}
		}
		f.clock.Set(step.at.Add(issuer.KeyLead))
		prev = nk.ID
		for id, want := range step.states(nk.ID) {
			if got := keyState(id); got != want {
				t.Errorf("%s: key %s is %s, want %s", step.name, id, got, want)
			}
		}
		// A token now comes from the new key and verifies.
		out := f.issue(policy.IssueRequest{Subject: "orders-api", Class: "service"})
		if out.Record.KeyID != nk.ID {
			t.Errorf("%s: token signed by %s, want the new key %s", step.name, out.Record.KeyID, nk.ID)
		}
		f.verify(out.Token)
		issuedBy = append(issuedBy, out.Token)
		if n == 0 {
			// The first token is still within its lifetime: the demoted
			// key must keep verifying it.
			f.clock.Set(step.at.Add(issuer.KeyLead + time.Minute))
			if pt := f.verify(first.Token); pt.KeyID != k1 {
				t.Errorf("first token verified with %s", pt.KeyID)
			}
		}
	}

	// The retired key verifies nothing, so the first token is refused
	// for its key, whatever its age.
	ks := f.iss.KeySet()
	if ks.Has(k1) {
		t.Error("KeySet still holds the retired key")
	}
	for _, at := range []time.Time{t0.Add(time.Minute), f.clock.Now()} {
		v := policy.Verifier{Keys: ks, Policy: f.pol, Env: testEnv}
		if _, verr := v.Verify(first.Token, at); verr == nil || verr.Reason != policy.ReasonUnknownKey {
			t.Errorf("verify a retired key's token at %v: %v, want unknown_key", at, verr)
		}
	}
	// Tokens of the keys still verifying keep their signature valid.
	for _, tok := range issuedBy[1:] {
		if _, verr := ks.VerifySignature(tok); verr != nil {
			t.Errorf("token of a verifying key: %v", verr)
		}
	}
	keys, err := f.st.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.State == store.KeyRetired && len(k.Sealed) != 0 {
			t.Errorf("retired key %s keeps its sealed private key", k.ID)
		}
	}
	if recs := f.audited(audit.Filter{Action: audit.ActionKeyRotate}); len(recs) != 1+len(steps) {
		t.Errorf("%d key.rotate records, want %d (the first key and each rotation)", len(recs), 1+len(steps))
	} else {
		if recs[0].Actor != audit.ActorSystem {
			t.Errorf("first key's record actor = %q, want %q", recs[0].Actor, audit.ActorSystem)
		}
		for _, r := range recs[1:] {
			if r.Actor != actor {
				t.Errorf("key.rotate actor = %q, want %q", r.Actor, actor)
			}
		}
	}
}

func TestKeysAreSealed(t *testing.T) {
	f := newFixture(t, examplePolicy(t))
	ctx := context.Background()
	if _, err := f.iss.RotateKeys(ctx, actor); err != nil {
		t.Fatal(err)
	}
	keys, err := f.st.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 {
		t.Fatalf("%d keys stored, want 2", len(keys))
	}
	db, err := os.ReadFile(f.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		priv, err := store.Unseal(f.kek, k.ID, k.Sealed)
		if err != nil {
			t.Fatalf("key %s does not unseal under the KEK: %v", k.ID, err)
		}
		if !bytes.Equal(priv.Public().(ed25519.PublicKey), k.Public) {
			t.Errorf("key %s: sealed private key does not match the public key", k.ID)
		}
		seed := priv.Seed()
		if bytes.Contains(k.Sealed, seed) || bytes.Contains(k.Sealed, priv) {
			t.Errorf("key %s: the sealed record holds the raw private key", k.ID)
		}
		if bytes.Contains(db, seed) {
			t.Errorf("key %s: the store file holds the raw private key seed", k.ID)
		}
	}
	for _, k := range f.iss.Keys() {
		if len(k.Sealed) != 0 {
			t.Errorf("Keys() shows key %s's sealed private key", k.ID)
		}
	}

	t.Run("reopen with the same KEK", func(t *testing.T) {
		before := f.issue(policy.IssueRequest{Subject: "orders-api", Class: "service"})
		again := f.newIssuer(f.kek)
		out, err := again.Issue(ctx, policy.IssueRequest{Subject: "orders-api", Class: "service"}, actor)
		if err != nil {
			t.Fatal(err)
		}
		if out.Record.KeyID != before.Record.KeyID {
			t.Errorf("reopened issuer signs with %s, want the active key %s", out.Record.KeyID, before.Record.KeyID)
		}
	})
	t.Run("reopen with another KEK", func(t *testing.T) {
		_, err := issuer.New(ctx, f.config(newKEK(t)))
		if err == nil {
			t.Fatal("issuer.New accepted a KEK that did not seal the keys")
		}
		if !strings.Contains(err.Error(), "key-encryption key") {
			t.Errorf("error %q does not say the key-encryption key is wrong", err)
		}
		// Nothing was changed by the failed start: the stored keys are the
		// same two.
		if now, _ := f.st.Keys(ctx); len(now) != 2 {
			t.Errorf("%d keys stored after a refused start, want 2", len(now))
		}
	})
	t.Run("KEK of the wrong size", func(t *testing.T) {
		if _, err := issuer.New(ctx, f.config(f.kek[:16])); err == nil {
			t.Fatal("issuer.New accepted a 16-byte KEK")
		}
	})
}

func TestAuditRecordsEachAction(t *testing.T) {
	tests := map[string]struct {
		// act performs the action and returns the token id and subject
		// the record should name ("" for none).
		act         func(f *fixture) (tokenID, subject string)
		action      string
		wantDetails string
	}{
		"issue": {
			action: audit.ActionTokenIssue, wantDetails: `"class":"service"`,
			act: func(f *fixture) (string, string) {
				return f.issue(policy.IssueRequest{Subject: "alice", Class: "service"}).Record.ID, "alice"
			},
		},
		"rotate": {
			action: audit.ActionTokenRotate, wantDetails: `"successor"`,
			act: func(f *fixture) (string, string) {
				id := f.issue(policy.IssueRequest{Subject: "alice", Class: "ci-deploy"}).Record.ID
				if _, err := f.iss.Rotate(context.Background(), id, actor); err != nil {
					f.t.Fatal(err)
				}
				return id, "alice"
			},
		},
		"revoke a token": {
			action: audit.ActionTokenRevoke, wantDetails: `"covered":1`,
			act: func(f *fixture) (string, string) {
				id := f.issue(policy.IssueRequest{Subject: "alice", Class: "service"}).Record.ID
				if _, _, err := f.iss.Revoke(context.Background(), policy.Revocation{Kind: policy.RevokeToken, Target: id, Reason: "leaked", Actor: actor}); err != nil {
					f.t.Fatal(err)
				}
				return id, "alice"
			},
		},
		"revoke a subject": {
			action: audit.ActionRevocationCreate, wantDetails: `"kind":"subject"`,
			act: func(f *fixture) (string, string) {
				f.issue(policy.IssueRequest{Subject: "alice", Class: "service"})
				if _, _, err := f.iss.Revoke(context.Background(), policy.Revocation{Kind: policy.RevokeSubject, Target: "alice", Reason: "left", Actor: actor}); err != nil {
					f.t.Fatal(err)
				}
				return "", "alice"
			},
		},
		"rotate keys": {
			action: audit.ActionKeyRotate, wantDetails: `"kid"`,
			act: func(f *fixture) (string, string) {
				if _, err := f.iss.RotateKeys(context.Background(), actor); err != nil {
					f.t.Fatal(err)
				}
				return "", ""
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, examplePolicy(t))
			tokenID, subject := tc.act(f)
			var mine []audit.Record
			for _, r := range f.audited(audit.Filter{Action: tc.action}) {
				if r.Actor == actor {
					mine = append(mine, r)
				}
			}
			if len(mine) != 1 {
				t.Fatalf("%s records by %s: %+v, want one", tc.action, actor, mine)
			}
			r := mine[0]
			if r.TokenID != tokenID || r.Subject != subject {
				t.Errorf("record names token %q subject %q, want %q %q", r.TokenID, r.Subject, tokenID, subject)
			}
			if !strings.Contains(string(r.Details), tc.wantDetails) {
				t.Errorf("details %s lack %s", r.Details, tc.wantDetails)
			}
			if !r.Time.Equal(f.clock.Now()) {
				t.Errorf("record time %v, want the injected clock's %v", r.Time, f.clock.Now())
			}
			if _, err := audit.Verify(f.auditDir, audit.VerifyOptions{}); err != nil {
				t.Errorf("audit chain: %v", err)
			}
		})
	}
}

// TestRotationCannotOutliveARevocation is the attack of a holder whose
// token has a revocation scheduled (effective_at still to come) and gets it
// rotated before then, automatically or by asking: the successor, and its
// own successors, must be revoked when the revocation takes effect. Each
// kind of rule is tried; a key rule is the documented exception (the
// successor is signed by another key).
func TestRotationCannotOutliveARevocation(t *testing.T) {
	effective := t0.Add(3 * time.Hour)
	tests := map[string]struct {
		rule func(f *fixture, pred store.TokenRecord) policy.Revocation
		// wantSucc: the successors are revoked at effective_at.
		wantSucc bool
		// wantCarried: the successor got a rule of its own (a subject rule
		// whose issued_before has not come covers it by itself).
		wantCarried bool
	}{
		"by jti": {
			rule: func(f *fixture, pred store.TokenRecord) policy.Revocation {
				return policy.Revocation{Kind: policy.RevokeToken, Target: pred.ID}
			},
			wantSucc: true, wantCarried: true,
		},
		"by subject, issued_before defaulting to effective_at": {
			rule: func(f *fixture, pred store.TokenRecord) policy.Revocation {
				return policy.Revocation{Kind: policy.RevokeSubject, Target: "builder"}
			},
			wantSucc: true,
		},
		"by tenant, issued_before defaulting to effective_at": {
			rule: func(f *fixture, pred store.TokenRecord) policy.Revocation {
				return policy.Revocation{Kind: policy.RevokeTenant, Target: "acme"}
			},
			wantSucc: true,
		},
		"by subject, issued_before now (successors have a later iat)": {
			rule: func(f *fixture, pred store.TokenRecord) policy.Revocation {
				return policy.Revocation{Kind: policy.RevokeSubject, Target: "builder", IssuedBefore: f.clock.Now()}
			},
			wantSucc: true, wantCarried: true,
		},
		"by tenant, issued_before now (successors have a later iat)": {
			rule: func(f *fixture, pred store.TokenRecord) policy.Revocation {
				return policy.Revocation{Kind: policy.RevokeTenant, Target: "acme", IssuedBefore: f.clock.Now()}
			},
			wantSucc: true, wantCarried: true,
		},
		"by key: the successor is signed by the new key and lives on": {
			rule: func(f *fixture, pred store.TokenRecord) policy.Revocation {
				if _, err := f.iss.RotateKeysNow(context.Background(), actor); err != nil {
					f.t.Fatal(err)
				}
				return policy.Revocation{Kind: policy.RevokeKey, Target: pred.KeyID}
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, examplePolicy(t))
			ctx := context.Background()
			pred := f.issue(policy.IssueRequest{Subject: "builder", Class: "service", Scopes: []string{"orders:read"}, Tenant: "acme", TTL: 12 * time.Hour})
			predTok := f.verify(pred.Token)
			f.clock.Set(t0.Add(time.Minute))
			r := tc.rule(f, pred.Record)
			r.EffectiveAt, r.Reason, r.Actor = effective, "offboarding", actor
			if _, _, err := f.iss.Revoke(ctx, r); err != nil {
				t.Fatalf("Revoke: %v", err)
			}
			rulesBefore := len(f.rules())

			// Rotated twice before the rule takes effect.
			f.clock.Set(t0.Add(20 * time.Minute))
			succ, err := f.iss.Rotate(ctx, pred.Record.ID, audit.ActorSystem)
			if err != nil {
				t.Fatalf("Rotate: %v", err)
			}
			f.clock.Set(t0.Add(40 * time.Minute))
			grand, err := f.iss.Rotate(ctx, succ.Record.ID, actor)
			if err != nil {
				t.Fatalf("Rotate successor: %v", err)
			}
			f.sync()
			// The first successor was retired by the second rotation (no
			// rotation_grace); the last one is the token in use.
			last := f.verify(grand.Token)
			if f.set.Revoked(last, effective.Add(-time.Second)) {
				t.Error("the last successor is revoked before the rule's effective_at")
			}
			if got := f.set.Revoked(last, effective); got != tc.wantSucc {
				t.Errorf("the last successor revoked at effective_at: %v, want %v", got, tc.wantSucc)
			}
			if !f.set.Revoked(predTok, effective) {
				t.Error("the predecessor itself is not revoked at effective_at")
			}
			// Two retirement rules, plus one carried rule per rotation.
			wantRules := rulesBefore + 2
			if tc.wantCarried {
				wantRules += 2
			}
			if got := len(f.rules()); got != wantRules {
				t.Errorf("%d rules after two rotations, want %d", got, wantRules)
			}
			if tc.wantCarried {
				rot := f.audited(audit.Filter{Action: audit.ActionTokenRotate, TokenID: pred.Record.ID})
				if len(rot) != 1 || !strings.Contains(string(rot[0].Details), "revocations_carried") {
					t.Errorf("token.rotate record %+v does not name the carried revocation", rot)
				}
			}
		})
	}
}

// TestRevocationCoversExistingSuccessors: a token revoked after it was
// rotated (its successor already issued, the predecessor in its grace)
// takes its successors with it, now or at a future effective_at.
func TestRevocationCoversExistingSuccessors(t *testing.T) {
	for name, delay := range map[string]time.Duration{"now": 0, "at a future effective_at": 2 * time.Hour} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, examplePolicy(t))
			ctx := context.Background()
			pred := f.issue(policy.IssueRequest{Subject: "builder", Class: "service", Scopes: []string{"orders:read"}, TTL: 12 * time.Hour})
			f.clock.Set(t0.Add(20 * time.Minute))
			succ, err := f.iss.Rotate(ctx, pred.Record.ID, actor)
			if err != nil {
				t.Fatal(err)
			}
			f.clock.Set(t0.Add(30 * time.Minute))
			grand, err := f.iss.Rotate(ctx, succ.Record.ID, actor)
			if err != nil {
				t.Fatal(err)
			}
			other := f.issue(policy.IssueRequest{Subject: "builder", Class: "service", Scopes: []string{"orders:read"}})
			f.clock.Set(t0.Add(40 * time.Minute))
			at := f.clock.Now().Add(delay)
			_, covered, err := f.iss.Revoke(ctx, policy.Revocation{Kind: policy.RevokeToken, Target: pred.Record.ID, Reason: "leaked", Actor: actor, EffectiveAt: at})
			if err != nil {
				t.Fatal(err)
			}
			if covered != 3 {
				t.Errorf("covered %d, want 3 (the token and its two successors)", covered)
			}
			f.sync()
			for name, tok := range map[string]string{"successor": succ.Token, "its successor": grand.Token} {
				if !f.set.Revoked(f.verify(tok), at) {
					t.Errorf("%s not revoked with its predecessor", name)
				}
			}
			if f.set.Revoked(f.verify(other.Token), at.Add(time.Hour)) {
				t.Error("another token of the same subject was revoked")
			}
			if delay == 0 {
				if st := f.record(grand.Record.ID).Status; st != store.TokenRevoked {
					t.Errorf("successor record is %s, want revoked", st)
				}
			}
			revs := f.audited(audit.Filter{Action: audit.ActionTokenRevoke, TokenID: grand.Record.ID})
			if len(revs) != 1 || !strings.Contains(revs[0].Reason, "leaked") {
				t.Errorf("successor's token.revoke records %+v, want one carrying the reason", revs)
			}
		})
	}
}

// TestRotateDropsWithdrawnScopes: a scope withdrawn from the class since
// issuance is not passed on to the successor; a token left with none is not
// rotated (an empty scope list would ask for every scope of the class).
func TestRotateDropsWithdrawnScopes(t *testing.T) {
	f := newFixture(t, examplePolicy(t))
	ctx := context.Background()
	both := f.issue(policy.IssueRequest{Subject: "svc", Class: "service", Scopes: []string{"orders:read", "orders:write"}})
	writer := f.issue(policy.IssueRequest{Subject: "svc", Class: "service", Scopes: []string{"orders:write"}})
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "policy.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	narrowed := strings.Replace(string(data), "scopes: [orders:read, orders:write, inventory:read]", "scopes: [orders:read, inventory:read]", 1)
	if f.pol, err = policy.Load("narrowed.yaml", []byte(narrowed)); err != nil {
		t.Fatal(err)
	}
	succ, err := f.iss.Rotate(ctx, both.Record.ID, actor)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.verify(succ.Token).Scope; got != "orders:read" {
		t.Errorf("successor scope claim %q, want orders:read", got)
	}
	_, err = f.iss.Rotate(ctx, writer.Record.ID, actor)
	if ie := asRefusal(t, err); !strings.Contains(ie.Msg, "no scope") {
		t.Errorf("refusal %q", ie.Msg)
	}
}

// keyStore is the fixture's store with PutKeys under the test's control:
// it can fail, or hold the write until released.
type keyStore struct {
	store.Store
	fail    error
	entered chan struct{} // closed when PutKeys starts, when not nil
	release chan struct{} // PutKeys waits for it, when not nil
}

func (s *keyStore) PutKeys(ctx context.Context, keys ...store.Key) error {
	if s.entered != nil {
		close(s.entered)
		<-s.release
	}
	if s.fail != nil {
		return s.fail
	}
	return s.Store.PutKeys(ctx, keys...)
}

func activeKeys(t *testing.T, st store.Store) []string {
	t.Helper()
	keys, err := st.Keys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range keys {
		if k.State == store.KeyActive {
			out = append(out, k.ID)
		}
	}
	return out
}

// TestKeyRotationNeverLeavesTheStoreWithoutAnActiveKey attacks a rotation
// that demoted the old key before writing the new one: a failed write left
// the store with no active key, and every node stopped issuing. The new key
// and the demotion are one write now: when it fails nothing changed.
func TestKeyRotationNeverLeavesTheStoreWithoutAnActiveKey(t *testing.T) {
	f := newFixture(t, examplePolicy(t))
	before := activeKeys(t, f.st)
	if len(before) != 1 {
		t.Fatalf("active keys before: %v", before)
	}
	cfg := f.config(f.kek)
	cfg.Store = &keyStore{Store: f.st, fail: errors.New("disk full")}
	iss, err := issuer.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := iss.RotateKeys(context.Background(), audit.ActorSystem); err == nil {
		t.Fatal("rotation with a failing store succeeded")
	}
	if after := activeKeys(t, f.st); len(after) != 1 || after[0] != before[0] {
		t.Fatalf("active keys after a failed rotation: %v, want %v", after, before)
	}
	if _, err := iss.Issue(context.Background(), policy.IssueRequest{Subject: "svc", Class: "service"}, audit.ActorSystem); err != nil {
		t.Fatalf("issuing after a failed rotation: %v", err)
	}
	// A rotation published ahead leaves the old key active until the
	// new one signs; an emergency rotation leaves exactly one active key,
	// the new one.
	if _, err := f.iss.RotateKeys(context.Background(), audit.ActorSystem); err != nil {
		t.Fatal(err)
	}
	if after := activeKeys(t, f.st); len(after) != 1 || after[0] != before[0] {
		t.Fatalf("active keys after a rotation published ahead: %v, want %v", after, before)
	}
	k, err := f.iss.RotateKeysNow(context.Background(), audit.ActorSystem)
	if err != nil {
		t.Fatal(err)
	}
	if after := activeKeys(t, f.st); len(after) != 1 || after[0] != k.ID {
		t.Fatalf("active keys after rotation: %v, want [%s]", after, k.ID)
	}
}

// TestKeyLeadCoversJWKSCache: a verifier that cached the JWK Set for as
// long as its Cache-Control allows must already hold a rotated-in key
// when it starts signing.
func TestKeyLeadCoversJWKSCache(t *testing.T) {
	if issuer.KeyLead <= wellknown.MaxAge {
		t.Fatalf("KeyLead %v does not exceed the JWK Set max-age %v", issuer.KeyLead, wellknown.MaxAge)
	}
}

// TestRotationPublishesAhead attacks the window a rotation opens: tokens
// signed by a key that verifiers holding a cached JWK Set do not know yet.
// The new key is in the JWK Set at once, signs only after KeyLead, a second
// rotation cannot cut the lead short, and the pending key cannot be revoked
// (it would sign revoked tokens); --now is the emergency way out.
func TestRotationPublishesAhead(t *testing.T) {
	f := newFixture(t, examplePolicy(t))
	ctx := context.Background()
	old := f.issue(policy.IssueRequest{Subject: "svc", Class: "service"}).Record.KeyID
	at := f.clock.Now()
	nk, err := f.iss.RotateKeys(ctx, actor)
	if err != nil {
		t.Fatal(err)
	}
	inSet := func(kid string) bool {
		for _, k := range wellknown.Set(f.iss.Keys()).Keys {
			if k.KeyID == kid {
				return true
			}
		}
		return false
	}
	if !inSet(nk.ID) || !inSet(old) {
		t.Fatalf("JWK Set right after the rotation lacks %s or %s", nk.ID, old)
	}
	if _, err := f.iss.RotateKeys(ctx, actor); err == nil {
		t.Error("a second rotation during the lead time was accepted")
	}
	var refusal *policy.Refusal
	if _, _, err := f.iss.Revoke(ctx, policy.Revocation{Kind: policy.RevokeKey, Target: nk.ID, Reason: "test", Actor: actor}); !errors.As(err, &refusal) {
		t.Errorf("revoking the pending key: %v, want a refusal", err)
	}
	f.clock.Set(at.Add(issuer.KeyLead - time.Nanosecond))
	if kid := f.issue(policy.IssueRequest{Subject: "svc", Class: "service"}).Record.KeyID; kid != old {
		t.Fatalf("token before the lead time signed by %s, want %s", kid, old)
	}
	f.clock.Set(at.Add(issuer.KeyLead))
	if kid := f.issue(policy.IssueRequest{Subject: "svc", Class: "service"}).Record.KeyID; kid != nk.ID {
		t.Fatalf("token at the activation time signed by %s, want %s", kid, nk.ID)
	}
	// The activation needs no store write: the stored records still say
	// pending, and an issuer started fresh from them signs with the new key.
	iss2, err := issuer.New(ctx, f.config(f.kek))
	if err != nil {
		t.Fatal(err)
	}
	out, err := iss2.Issue(ctx, policy.IssueRequest{Subject: "svc", Class: "service"}, actor)
	if err != nil || out.Record.KeyID != nk.ID {
		t.Fatalf("a fresh issuer signs with %s (%v), want %s", out.Record.KeyID, err, nk.ID)
	}
	// The next rotation writes the states back.
	f.clock.Set(at.Add(issuer.KeyLead + time.Minute))
	if _, err := f.iss.RotateKeys(ctx, actor); err != nil {
		t.Fatal(err)
	}
	keys, err := f.st.Keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		want := map[string]store.KeyState{old: store.KeyVerifying, nk.ID: store.KeyActive}[k.ID]
		if want != "" && k.State != want {
			t.Errorf("stored key %s is %s, want %s", k.ID, k.State, want)
		}
		if k.ID == old && !k.RetiredAt.Equal(at.Add(issuer.KeyLead).UTC()) {
			t.Errorf("old key retired at %v, want when the new one started signing %v", k.RetiredAt, at.Add(issuer.KeyLead))
		}
	}
	// Emergency: signs at once, over a pending rotation.
	now, err := f.iss.RotateKeysNow(ctx, actor)
	if err != nil {
		t.Fatal(err)
	}
	if kid := f.issue(policy.IssueRequest{Subject: "svc", Class: "service"}).Record.KeyID; kid != now.ID {
		t.Fatalf("token after an emergency rotation signed by %s, want %s", kid, now.ID)
	}
	for _, k := range f.iss.Keys() {
		if k.ID != now.ID && (k.State == store.KeyActive || k.State == store.KeyPending) {
			t.Errorf("key %s is still %s after an emergency rotation", k.ID, k.State)
		}
	}
}

// TestKeyRotationDoesNotHoldUpIssuing: while a rotation waits on the store,
// tokens are still issued (with the key in force), instead of every
// issuance queueing behind the rotation's I/O.
func TestKeyRotationDoesNotHoldUpIssuing(t *testing.T) {
	f := newFixture(t, examplePolicy(t))
	ks := &keyStore{Store: f.st, entered: make(chan struct{}), release: make(chan struct{})}
	cfg := f.config(f.kek)
	cfg.Store = ks
	iss, err := issuer.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	rotated := make(chan error, 1)
	go func() {
		_, err := iss.RotateKeys(context.Background(), audit.ActorSystem)
		rotated <- err
	}()
	<-ks.entered // the rotation is inside its store write
	issued := make(chan error, 1)
	go func() {
		_, err := iss.Issue(context.Background(), policy.IssueRequest{Subject: "svc", Class: "service"}, audit.ActorSystem)
		issued <- err
	}()
	select {
	case err := <-issued:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("issuing waited for the key rotation's store write")
	}
	close(ks.release)
	if err := <-rotated; err != nil {
		t.Fatal(err)
	}
}
