package admin_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/testclock"

	"github.com/tokenwarden/tokenwarden/agent/admin"
	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/issuer"
	"github.com/tokenwarden/tokenwarden/agent/revocation"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/store/bolt"
	"github.com/tokenwarden/tokenwarden/policy"
)

// t0 is when every test's clock starts: whole seconds, so a token minted at
// t0 has iat t0.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

const testEnv = "staging"

// server is the admin API over real parts: a bolt store, an audit log, an
// issuer, a decider and the revocation set, kept current from the store's
// Watch as the agent keeps them.
type server struct {
	t        *testing.T
	clock    *testclock.Clock
	pol      *policy.Policy
	st       *bolt.Store
	auditDir string
	log      *audit.Log
	iss      *issuer.Issuer
	set      *revocation.Set
	decider  *policy.Decider
	srv      *httptest.Server
	api      *admin.API

	syncMu sync.Mutex
	events <-chan store.Event

	readyMu  sync.Mutex
	notReady error

	// admin is the token the tests call the API with (the agent's
	// admin.token); adminID is its jti, the actor of what the tests do.
	admin   string
	adminID string

	// capture, when set, sees every response call gets.
	capture func(method, path string, r response)
}

func newServer(t *testing.T) *server {
	t.Helper()
	s := &server{t: t, clock: testclock.New(t0), set: revocation.NewSet()}
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "policy.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if s.pol, err = policy.Load("policy.example.yaml", data); err != nil {
		t.Fatal(err)
	}
	if s.st, err = bolt.Open(filepath.Join(t.TempDir(), bolt.FileName)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.st.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if s.events, err = s.st.Watch(ctx); err != nil {
		t.Fatal(err)
	}
	s.auditDir = t.TempDir()
	if s.log, err = audit.Open(audit.Config{Dir: s.auditDir, Now: s.clock.Now}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.log.Close() })
	kek := make([]byte, store.KEKSize)
	rand.Read(kek)
	s.iss, err = issuer.New(ctx, issuer.Config{
		Store: s.st, KEK: kek, Env: testEnv, Audit: s.log, Now: s.clock.Now,
		Policy: func() *policy.Policy { return s.pol },
	})
	if err != nil {
		t.Fatal(err)
	}
	s.decider = policy.NewDecider(policy.DeciderConfig{Env: testEnv, Policy: s.pol, Keys: s.iss.KeySet(), Revocations: s.set})
	api, err := admin.New(admin.Config{
		Issuer: s.iss, Store: s.st, Audit: s.log, AuditDir: s.auditDir, Decider: s.decider,
		Revocations: s.set, Ready: s.ready, Now: s.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.api = api
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.sync()
		api.ServeHTTP(w, r)
	}))
	t.Cleanup(s.srv.Close)

	// As the agent does on first start: an admin token, issued by the system.
	out, err := s.iss.Issue(ctx, policy.IssueRequest{Subject: "tokenwarden-admin", Class: "admin", Scopes: []string{admin.AdminScope}}, audit.ActorSystem)
	if err != nil {
		t.Fatal(err)
	}
	s.admin, s.adminID = out.Token, out.Record.ID
	return s
}

func (s *server) ready() error {
	s.readyMu.Lock()
	defer s.readyMu.Unlock()
	return s.notReady
}

func (s *server) setReady(err error) {
	s.readyMu.Lock()
	defer s.readyMu.Unlock()
	s.notReady = err
}

// sync applies the store changes committed so far, as the agent's watch
// loop does: rules into the revocation set, key changes into the decider.
// bolt publishes an event before the write returns, so a request sees
// every write that finished before it.
func (s *server) sync() {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				panic("store watch ended: the watcher fell behind or the store closed")
			}
			switch ev.Kind {
			case store.EventRevocation:
				if ev.Deleted {
					s.set.Remove(*ev.Revocation)
				} else {
					s.set.Add(*ev.Revocation)
				}
			case store.EventKey:
				if err := s.iss.Reload(context.Background()); err != nil {
					panic(err)
				}
				s.decider.SetKeys(s.iss.KeySet())
			}
		default:
			return
		}
	}
}

// issue issues a token directly (not through the API) as the admin.
func (s *server) issue(req policy.IssueRequest) issuer.Issued {
	s.t.Helper()
	out, err := s.iss.Issue(context.Background(), req, s.adminID)
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

func (s *server) verify(tok string) *policy.Token {
	s.t.Helper()
	s.sync()
	v := policy.Verifier{Keys: s.decider.Keys(), Policy: s.pol, Env: testEnv}
	pt, verr := v.Verify(tok, s.clock.Now())
	if verr != nil {
		s.t.Fatalf("verify: %v", verr)
	}
	return pt
}

func (s *server) record(id string) store.TokenRecord {
	s.t.Helper()
	rec, err := s.st.Token(context.Background(), id)
	if err != nil {
		s.t.Fatal(err)
	}
	return rec
}

func (s *server) audited(f audit.Filter) []audit.Record {
	s.t.Helper()
	var out []audit.Record
	if err := audit.Read(s.auditDir, f, func(r audit.Record) error {
		out = append(out, r)
		return nil
	}); err != nil {
		s.t.Fatal(err)
	}
	return out
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// decode decodes the body into v, refusing fields v does not have.
func (r response) decode(t *testing.T, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// errorCode is the "error" of a JSON error body; it fails the test if the
// body is not one.
func (r response) errorCode(t *testing.T) string {
	t.Helper()
	var e struct{ Error, Message string }
	r.decode(t, &e)
	if e.Error == "" || e.Message == "" {
		t.Errorf("error body %s lacks error or message", r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error Content-Type = %q", ct)
	}
	return e.Error
}

// tokenPattern finds a compact JWS, with or without the tw_ prefix.
var tokenPattern = regexp.MustCompile(`eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+`)

// checkNoTokens fails if body holds a token other than allowed (which may
// appear once).
func checkNoTokens(t *testing.T, what string, body []byte, allowed string) {
	t.Helper()
	seen := 0
	for _, m := range tokenPattern.FindAll(body, -1) {
		if allowed != "" && strings.TrimPrefix(allowed, policy.TokenPrefix) == string(m) {
			seen++
			continue
		}
		t.Errorf("%s holds a token string (%.20s…)", what, m)
	}
	if seen > 1 {
		t.Errorf("%s holds the new token %d times", what, seen)
	}
}

// call sends a request with token as the bearer ("" for none). body is
// sent as is when a string, as JSON otherwise. Every response is checked
// for token strings: only a token just issued or rotated may be in one.
func (s *server) call(method, path, token string, body any) response {
	s.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			s.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, s.srv.URL+path, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := s.srv.Client().Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	r := response{status: resp.StatusCode, header: resp.Header, body: b}
	var allowed string
	if method == http.MethodPost && r.status == http.StatusCreated && (path == "/v1/tokens" || path == "/v1/admin/tokens" || strings.HasPrefix(path, "/v1/tokens/") && strings.HasSuffix(path, "/rotate")) {
		var out struct{ Token string }
		json.Unmarshal(b, &out)
		if out.Token == "" {
			s.t.Errorf("%s %s: 201 without a token", method, path)
		}
		allowed = out.Token
	}
	checkNoTokens(s.t, method+" "+path, b, allowed)
	if s.capture != nil {
		s.capture(method, path, r)
	}
	return r
}

// as calls the API as the admin.
func (s *server) as(method, path string, body any) response {
	s.t.Helper()
	return s.call(method, path, s.admin, body)
}

func wantStatus(t *testing.T, r response, status int) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
}

func TestAuthentication(t *testing.T) {
	tests := map[string]struct {
		// token returns the Authorization header to send ("" for none).
		header        func(s *server) string
		at            time.Duration // time after t0 of the request
		wantStatus    int
		wantCode      string
		wantChallenge string
	}{
		"admin token": {
			header:     bearer(func(s *server) string { return s.admin }),
			wantStatus: http.StatusOK,
		},
		"scheme is case-insensitive": {
			header:     func(s *server) string { return "bearer " + s.admin },
			wantStatus: http.StatusOK,
		},
		"missing": {
			header:     func(*server) string { return "" },
			wantStatus: http.StatusUnauthorized, wantCode: "missing_token", wantChallenge: `Bearer realm="tokenwarden"`,
		},
		"another scheme": {
			header:     func(s *server) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte("admin:"+s.admin)) },
			wantStatus: http.StatusUnauthorized, wantCode: "missing_token", wantChallenge: `Bearer realm="tokenwarden"`,
		},
		"malformed": {
			header:     bearer(func(*server) string { return "tw_not.a.token" }),
			wantStatus: http.StatusUnauthorized, wantCode: "malformed_token", wantChallenge: `error="invalid_token"`,
		},
		"bad signature": {
			header: bearer(func(s *server) string {
				// The admin token's claims and kid, signed by another key.
				pt := s.verify(s.admin)
				other, err := policy.NewSigningKey()
				if err != nil {
					s.t.Fatal(err)
				}
				forged, err := policy.Mint(policy.SigningKey{ID: pt.KeyID, Private: other.Private}, pt.Claims)
				if err != nil {
					s.t.Fatal(err)
				}
				return forged
			}),
			wantStatus: http.StatusUnauthorized, wantCode: "bad_signature", wantChallenge: `error="invalid_token"`,
		},
		"unknown key": {
			header: bearer(func(s *server) string {
				other, err := policy.NewSigningKey()
				if err != nil {
					s.t.Fatal(err)
				}
				forged, err := policy.Mint(other, s.verify(s.admin).Claims)
				if err != nil {
					s.t.Fatal(err)
				}
				return forged
			}),
			wantStatus: http.StatusUnauthorized, wantCode: "unknown_key", wantChallenge: `error="invalid_token"`,
		},
		"expired": {
			header:     bearer(func(s *server) string { return s.admin }),
			at:         24 * time.Hour, // the admin class's default_ttl: refused the second it expires (exp_leeway 0)
			wantStatus: http.StatusUnauthorized, wantCode: "expired", wantChallenge: `error="invalid_token"`,
		},
		"last second before exp": {
			header:     bearer(func(s *server) string { return s.admin }),
			at:         24*time.Hour - time.Second,
			wantStatus: http.StatusOK,
		},
		"not yet valid": {
			header: bearer(func(s *server) string {
				s.clock.Set(t0.Add(time.Hour))
				defer s.clock.Set(t0)
				return s.issue(policy.IssueRequest{Subject: "tokenwarden-admin", Class: "admin"}).Token
			}),
			wantStatus: http.StatusUnauthorized, wantCode: "not_yet_valid", wantChallenge: `error="invalid_token"`,
		},
		"revoked": {
			header: bearer(func(s *server) string {
				if _, _, err := s.iss.Revoke(context.Background(), policy.Revocation{Kind: policy.RevokeToken, Target: s.adminID, Reason: "leaked", Actor: s.adminID}); err != nil {
					s.t.Fatal(err)
				}
				return s.admin
			}),
			wantStatus: http.StatusUnauthorized, wantCode: "revoked", wantChallenge: `error="invalid_token"`,
		},
		"revoked by subject": {
			header: bearer(func(s *server) string {
				s.clock.Set(t0.Add(time.Minute))
				if _, _, err := s.iss.Revoke(context.Background(), policy.Revocation{Kind: policy.RevokeSubject, Target: "tokenwarden-admin", Reason: "rotated out", Actor: s.adminID}); err != nil {
					s.t.Fatal(err)
				}
				return s.admin
			}),
			at:         time.Minute,
			wantStatus: http.StatusUnauthorized, wantCode: "revoked", wantChallenge: `error="invalid_token"`,
		},
		"without the admin scope": {
			header: bearer(func(s *server) string {
				return s.issue(policy.IssueRequest{Subject: "orders-api", Class: "service"}).Token
			}),
			wantStatus: http.StatusForbidden, wantCode: "insufficient_scope", wantChallenge: `error="insufficient_scope"`,
		},
		"minted for another environment": {
			header: bearer(func(s *server) string {
				return s.issue(policy.IssueRequest{Subject: "tokenwarden-admin", Class: "admin", Env: "prod"}).Token
			}),
			wantStatus: http.StatusForbidden, wantCode: "wrong_environment", wantChallenge: `error="insufficient_scope"`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := newServer(t)
			h := tc.header(s)
			s.clock.Set(t0.Add(tc.at))
			req, err := http.NewRequest(http.MethodGet, s.srv.URL+"/v1/keys", nil)
			if err != nil {
				t.Fatal(err)
			}
			if h != "" {
				req.Header.Set("Authorization", h)
			}
			resp, err := s.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			r := response{status: resp.StatusCode, header: resp.Header, body: body}
			checkNoTokens(t, "response", body, "")
			wantStatus(t, r, tc.wantStatus)
			challenge := r.header.Get("WWW-Authenticate")
			if tc.wantCode == "" {
				if challenge != "" {
					t.Errorf("WWW-Authenticate %q on success", challenge)
				}
				return
			}
			if code := r.errorCode(t); code != tc.wantCode {
				t.Errorf("error %q, want %q", code, tc.wantCode)
			}
			if !strings.Contains(challenge, tc.wantChallenge) || !strings.HasPrefix(challenge, "Bearer ") {
				t.Errorf("WWW-Authenticate %q, want it to hold %q", challenge, tc.wantChallenge)
			}
		})
	}
}

func bearer(tok func(s *server) string) func(s *server) string {
	return func(s *server) string { return "Bearer " + tok(s) }
}

// Every /v1/ endpoint refuses a caller without a token.
func TestEveryEndpointNeedsAuthentication(t *testing.T) {
	s := newServer(t)
	for _, ep := range []string{
		"POST /v1/tokens", "GET /v1/tokens", "GET /v1/tokens/x", "POST /v1/tokens/x/revoke",
		"POST /v1/tokens/x/rotate", "POST /v1/revocations", "GET /v1/revocations", "POST /v1/leaks",
		"GET /v1/keys", "POST /v1/keys/rotate", "GET /v1/audit", "GET /v1/audit/stream", "GET /v1/audit/verify",
	} {
		method, path, _ := strings.Cut(ep, " ")
		r := s.call(method, path, "", `{}`)
		if r.status != http.StatusUnauthorized || r.header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: status %d, WWW-Authenticate %q; want 401 with a challenge", ep, r.status, r.header.Get("WWW-Authenticate"))
		}
	}
	if n := len(s.audited(audit.Filter{Action: audit.ActionTokenIssue})); n != 1 {
		t.Errorf("%d tokens issued, want only the admin token", n)
	}
}

// issuedView is the JSON of an IssueResponse (or a RotateResponse).
type issuedView struct {
	Token string `json:"token"`
	tokenView
	Warning string `json:"warning"`
}

func TestIssue(t *testing.T) {
	tests := map[string]struct {
		body       any
		wantStatus int
		wantCode   string // for errors
		wantScopes []string
	}{
		"within policy": {
			body:       map[string]any{"subject": "orders-api", "class": "service", "scopes": []string{"orders:read"}, "ttl": "2h", "tenant": "acme"},
			wantStatus: http.StatusCreated, wantScopes: []string{"orders:read"},
		},
		"class defaults": {
			body:       map[string]any{"subject": "ci-runner", "class": "ci-deploy"},
			wantStatus: http.StatusCreated, wantScopes: []string{"deploy:write", "artifacts:read"},
		},
		"scope outside class": {
			body:       map[string]any{"subject": "orders-api", "class": "service", "scopes": []string{"tokenwarden:admin"}},
			wantStatus: http.StatusBadRequest, wantCode: "refused_by_policy",
		},
		"ttl above policy": {
			body:       map[string]any{"subject": "ci-runner", "class": "ci-deploy", "ttl": "13h"},
			wantStatus: http.StatusBadRequest, wantCode: "refused_by_policy",
		},
		"unknown class": {
			body:       map[string]any{"subject": "orders-api", "class": "root"},
			wantStatus: http.StatusBadRequest, wantCode: "refused_by_policy",
		},
		"no subject": {
			body:       map[string]any{"class": "service"},
			wantStatus: http.StatusBadRequest, wantCode: "refused_by_policy",
		},
		"ttl not a duration": {
			body:       map[string]any{"subject": "orders-api", "class": "service", "ttl": "a day"},
			wantStatus: http.StatusBadRequest, wantCode: "bad_request",
		},
		"unknown field": {
			body:       map[string]any{"subject": "orders-api", "class": "service", "env": "dev"},
			wantStatus: http.StatusBadRequest, wantCode: "bad_request",
		},
		"empty body": {
			body:       "",
			wantStatus: http.StatusBadRequest, wantCode: "bad_request",
		},
		"not JSON": {
			body:       "subject=orders-api&class=service",
			wantStatus: http.StatusBadRequest, wantCode: "bad_request",
		},
		"two objects": {
			body:       `{"subject":"a","class":"service"} {"subject":"b","class":"service"}`,
			wantStatus: http.StatusBadRequest, wantCode: "bad_request",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := newServer(t)
			r := s.as(http.MethodPost, "/v1/tokens", tc.body)
			wantStatus(t, r, tc.wantStatus)
			issues := s.audited(audit.Filter{Action: audit.ActionTokenIssue})
			if tc.wantCode != "" {
				if code := r.errorCode(t); code != tc.wantCode {
					t.Errorf("error %q, want %q", code, tc.wantCode)
				}
				if len(issues) != 1 {
					t.Errorf("%d token.issue records, want only the admin token's", len(issues))
				}
				return
			}
			var out issuedView
			r.decode(t, &out)
			pt := s.verify(out.Token)
			if pt.ID != out.ID || !slices.Equal(pt.Scopes, tc.wantScopes) || out.Actor != s.adminID {
				t.Errorf("issued %+v (claims %+v), want scopes %v, actor %s", out.tokenView, pt.Claims, tc.wantScopes, s.adminID)
			}
			if rec := s.record(pt.ID); rec.LeakHash != sha256.Sum256([]byte(out.Token)) {
				t.Error("stored leak hash is not the token's sha256")
			}
			if last := issues[len(issues)-1]; last.TokenID != pt.ID || last.Actor != s.adminID {
				t.Errorf("token.issue record %+v, want token %s by %s", last, pt.ID, s.adminID)
			}
			if cc := r.header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control %q on a response with a token, want no-store", cc)
			}
		})
	}
}

func TestIssueBodyLimit(t *testing.T) {
	tests := map[string]struct {
		size     int
		wantCode int
	}{
		"just under 64 KiB": {size: 64<<10 - 100, wantCode: http.StatusBadRequest}, // refused by policy: subject too long
		"over 64 KiB":       {size: 64<<10 + 1},
		"1 MiB":             {size: 1 << 20},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := newServer(t)
			body := `{"class":"service","subject":"` + strings.Repeat("a", tc.size-len(`{"class":"service","subject":""}`)) + `"}`
			if len(body) != tc.size {
				t.Fatalf("body is %d bytes, want %d", len(body), tc.size)
			}
			r := s.as(http.MethodPost, "/v1/tokens", body)
			if r.status < 400 || r.status > 499 {
				t.Fatalf("status %d, want 4xx: %s", r.status, r.body)
			}
			code := r.errorCode(t)
			if tc.size > 64<<10 && (r.status != http.StatusRequestEntityTooLarge || code != "body_too_large") {
				t.Errorf("status %d %q, want 413 body_too_large", r.status, code)
			}
			if tc.wantCode != 0 && r.status != tc.wantCode {
				t.Errorf("status %d, want %d", r.status, tc.wantCode)
			}
			if recs, _ := s.st.Tokens(context.Background(), store.TokenFilter{}); len(recs) != 1 {
				t.Errorf("%d tokens stored, want only the admin token", len(recs))
			}
		})
	}
}

// tokenList is the JSON of GET /v1/tokens.
type tokenList struct {
	Tokens        []tokenView `json:"items"`
	NextPageToken string      `json:"next_page_token"`
}

type tokenView struct {
	store.TokenRecord
	LeakHash string `json:"leak_hash"`
	WireHash string `json:"wire_hash"`
	State    string `json:"state"`
}

func TestListTokens(t *testing.T) {
	s := newServer(t)
	named := map[string]issuer.Issued{"admin": {Token: s.admin, Record: s.record(s.adminID)}}
	for _, spec := range []struct {
		name string
		req  policy.IssueRequest
	}{
		{"alice-acme", policy.IssueRequest{Subject: "alice", Class: "service", Tenant: "acme"}},
		{"alice-globex", policy.IssueRequest{Subject: "alice", Class: "service", Tenant: "globex"}},
		{"alice-short", policy.IssueRequest{Subject: "alice", Class: "service", TTL: time.Minute}},
		{"bob-acme", policy.IssueRequest{Subject: "bob", Class: "ci-deploy", Tenant: "acme"}},
		{"bob-revoked", policy.IssueRequest{Subject: "bob", Class: "service", Tenant: "acme"}},
	} {
		named[spec.name] = s.issue(spec.req)
	}
	wantStatus(t, s.as(http.MethodPost, "/v1/tokens/"+named["bob-revoked"].Record.ID+"/revoke", map[string]string{"reason": "test"}), http.StatusCreated)
	s.clock.Set(t0.Add(10 * time.Minute)) // alice-short has expired

	tests := map[string]struct {
		query string
		want  []string
	}{
		"all":                {query: "", want: []string{"admin", "alice-acme", "alice-globex", "alice-short", "bob-acme", "bob-revoked"}},
		"subject":            {query: "?subject=alice", want: []string{"alice-acme", "alice-globex", "alice-short"}},
		"tenant":             {query: "?tenant=acme", want: []string{"alice-acme", "bob-acme", "bob-revoked"}},
		"live":               {query: "?live=true", want: []string{"admin", "alice-acme", "alice-globex", "bob-acme"}},
		"subject and live":   {query: "?subject=bob&live=true", want: []string{"bob-acme"}},
		"subject and tenant": {query: "?subject=alice&tenant=globex", want: []string{"alice-globex"}},
		"class":              {query: "?class=ci-deploy", want: []string{"bob-acme"}},
		"key":                {query: "?kid=" + named["admin"].Record.KeyID + "&subject=bob", want: []string{"bob-acme", "bob-revoked"}},
		"no match":           {query: "?subject=carol"},
	}
	wantState := map[string]string{"alice-short": "expired", "bob-revoked": "revoked"}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := s.as(http.MethodGet, "/v1/tokens"+tc.query, nil)
			wantStatus(t, r, http.StatusOK)
			var list tokenList
			r.decode(t, &list)
			var got []string
			for _, v := range list.Tokens {
				var which string
				for n, iss := range named {
					if iss.Record.ID == v.ID {
						which = n
					}
				}
				got = append(got, which)
				tok := named[which].Token
				if v.LeakHash != fmt.Sprintf("%x", sha256.Sum256([]byte(tok))) || v.WireHash != fmt.Sprintf("%016x", policy.WireHash(tok)) {
					t.Errorf("%s: leak_hash %s wire_hash %s are not the token's", which, v.LeakHash, v.WireHash)
				}
				state := cmpOr(wantState[which], "active")
				if v.State != state {
					t.Errorf("%s: state %q, want %q", which, v.State, state)
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("listed %v, want %v", got, tc.want)
			}
		})
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func TestShowToken(t *testing.T) {
	s := newServer(t)
	tok := s.issue(policy.IssueRequest{Subject: "alice", Class: "service", Tenant: "acme"})
	tests := map[string]struct {
		id         string
		wantStatus int
	}{
		"known":   {id: tok.Record.ID, wantStatus: http.StatusOK},
		"unknown": {id: "aaaaaaaaaaaaaaaaaaaaaaaaaa", wantStatus: http.StatusNotFound},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := s.as(http.MethodGet, "/v1/tokens/"+tc.id, nil)
			wantStatus(t, r, tc.wantStatus)
			if tc.wantStatus != http.StatusOK {
				if code := r.errorCode(t); code != "not_found" {
					t.Errorf("error %q, want not_found", code)
				}
				return
			}
			var v tokenView
			r.decode(t, &v)
			if v.ID != tok.Record.ID || v.Subject != "alice" || v.Tenant != "acme" || v.State != "active" || v.Actor != s.adminID {
				t.Errorf("view %+v", v)
			}
		})
	}
}

// revokeResponse is the JSON of a created revocation.
type revokeResponse struct {
	Revocation policy.Revocation `json:"revocation"`
	Covered    int               `json:"covered"`
	Existed    bool              `json:"existed"`
}

func TestRevokeToken(t *testing.T) {
	tests := map[string]struct {
		target      func(s *server, live issuer.Issued) string
		body        any
		wantStatus  int
		wantCode    string
		wantCovered int
	}{
		"live token": {
			target: liveID, body: map[string]string{"reason": "leaked in CI logs"},
			wantStatus: http.StatusCreated, wantCovered: 1,
		},
		"already revoked": {
			target: func(s *server, live issuer.Issued) string {
				wantStatus(s.t, s.as(http.MethodPost, "/v1/tokens/"+live.Record.ID+"/revoke", map[string]string{"reason": "first"}), http.StatusCreated)
				return live.Record.ID
			},
			// Idempotent: the same rule twice is one rule.
			body:       map[string]string{"reason": "again"},
			wantStatus: http.StatusOK, wantCovered: 0,
		},
		"with a future effective_at": {
			target: liveID, body: map[string]any{"reason": "migrate first", "effective_at": t0.Add(time.Hour)},
			wantStatus: http.StatusCreated, wantCovered: 1,
		},
		"no reason": {
			target: liveID, body: map[string]string{},
			wantStatus: http.StatusBadRequest, wantCode: "bad_request",
		},
		"blank reason": {
			target: liveID, body: map[string]string{"reason": "  "},
			wantStatus: http.StatusBadRequest, wantCode: "bad_request",
		},
		"unknown field": {
			target: liveID, body: map[string]string{"reason": "x", "why": "y"},
			wantStatus: http.StatusBadRequest, wantCode: "bad_request",
		},
		"unknown token": {
			target: func(*server, issuer.Issued) string { return "aaaaaaaaaaaaaaaaaaaaaaaaaa" }, body: map[string]string{"reason": "x"},
			wantStatus: http.StatusNotFound, wantCode: "not_found",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := newServer(t)
			live := s.issue(policy.IssueRequest{Subject: "alice", Class: "service"})
			pt := s.verify(live.Token)
			id := tc.target(s, live)
			rulesBefore, _ := s.st.Revocations(context.Background())
			r := s.as(http.MethodPost, "/v1/tokens/"+id+"/revoke", tc.body)
			wantStatus(t, r, tc.wantStatus)
			s.sync()
			if tc.wantCode != "" {
				if code := r.errorCode(t); code != tc.wantCode {
					t.Errorf("error %q, want %q", code, tc.wantCode)
				}
				if rules, _ := s.st.Revocations(context.Background()); len(rules) != len(rulesBefore) {
					t.Errorf("a refused request stored a rule")
				}
				if s.set.Revoked(pt, s.clock.Now()) {
					t.Error("a refused request revoked the token")
				}
				return
			}
			var out revokeResponse
			r.decode(t, &out)
			if out.Covered != tc.wantCovered {
				t.Errorf("covered %d, want %d", out.Covered, tc.wantCovered)
			}
			rule := out.Revocation
			if rule.Kind != policy.RevokeToken || rule.Target != id || rule.Actor != s.adminID || (rule.ID == "") != out.Existed {
				t.Errorf("rule %+v (existed %v)", rule, out.Existed)
			}
			if revoked := s.set.Revoked(pt, s.clock.Now()); revoked != rule.EffectiveAt.Equal(t0) {
				t.Errorf("revoked now = %v, rule effective at %v", revoked, rule.EffectiveAt)
			}
			if !s.set.Revoked(pt, rule.EffectiveAt) {
				t.Error("token not revoked once the rule is in effect")
			}
			recs := s.audited(audit.Filter{Action: audit.ActionTokenRevoke, TokenID: id})
			if len(recs) == 0 || recs[len(recs)-1].Actor != s.adminID || recs[len(recs)-1].Reason == "" {
				t.Errorf("token.revoke records %+v", recs)
			}
		})
	}
}

func liveID(_ *server, live issuer.Issued) string { return live.Record.ID }

func TestRotateToken(t *testing.T) {
	s := newServer(t)
	pred := s.issue(policy.IssueRequest{Subject: "ci-runner", Class: "ci-deploy", Scopes: []string{"artifacts:read"}, Tenant: "acme"})

	s.clock.Set(t0.Add(time.Minute))
	r := s.as(http.MethodPost, "/v1/tokens/"+pred.Record.ID+"/rotate", nil)
	wantStatus(t, r, http.StatusCreated)
	var out issuedView
	r.decode(t, &out)
	succ := s.verify(out.Token)
	if succ.Rotated != pred.Record.ID || succ.Subject != "ci-runner" || succ.Tenant != "acme" || !slices.Equal(succ.Scopes, []string{"artifacts:read"}) {
		t.Errorf("successor claims %+v", succ.Claims)
	}
	if out.Warning != "" {
		t.Errorf("warning %q with no sinks", out.Warning)
	}
	if rec := s.record(pred.Record.ID); rec.Status != store.TokenRotated || rec.Successor != succ.ID {
		t.Errorf("predecessor %+v", rec)
	}
	predTok := s.verify(pred.Token)
	s.sync()
	grace := 15 * time.Minute // ci-deploy's rotation_grace
	if s.set.Revoked(predTok, s.clock.Now().Add(grace-time.Second)) || !s.set.Revoked(predTok, s.clock.Now().Add(grace)) {
		t.Error("predecessor not retired exactly when its grace ends")
	}

	tests := map[string]struct {
		id         string
		wantStatus int
		wantCode   string
	}{
		"already rotated": {id: pred.Record.ID, wantStatus: http.StatusBadRequest, wantCode: "refused_by_policy"},
		"unknown":         {id: "aaaaaaaaaaaaaaaaaaaaaaaaaa", wantStatus: http.StatusNotFound, wantCode: "not_found"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := s.as(http.MethodPost, "/v1/tokens/"+tc.id+"/rotate", nil)
			wantStatus(t, r, tc.wantStatus)
			if code := r.errorCode(t); code != tc.wantCode {
				t.Errorf("error %q, want %q", code, tc.wantCode)
			}
		})
	}
	t.Run("revoked", func(t *testing.T) {
		wantStatus(t, s.as(http.MethodPost, "/v1/tokens/"+succ.ID+"/revoke", map[string]string{"reason": "test"}), http.StatusCreated)
		r := s.as(http.MethodPost, "/v1/tokens/"+succ.ID+"/rotate", nil)
		wantStatus(t, r, http.StatusBadRequest)
		if code := r.errorCode(t); code != "refused_by_policy" {
			t.Errorf("error %q", code)
		}
	})
	if n := len(s.audited(audit.Filter{Action: audit.ActionTokenRotate, TokenID: pred.Record.ID})); n != 1 {
		t.Errorf("%d token.rotate records, want 1", n)
	}
}

func TestCreateRevocation(t *testing.T) {
	tests := map[string]struct {
		body func(s *server) any
		// revoked lists the named tokens revoked afterwards.
		revoked     []string
		wantStatus  int
		wantCode    string
		wantCovered int
	}{
		"subject": {
			body: func(*server) any {
				return map[string]string{"kind": "subject", "target": "alice", "reason": "left the team"}
			},
			revoked:    []string{"alice-acme", "alice-globex"},
			wantStatus: http.StatusCreated, wantCovered: 2,
		},
		"tenant": {
			body: func(*server) any {
				return map[string]string{"kind": "tenant", "target": "acme", "reason": "contract ended"}
			},
			revoked:    []string{"alice-acme", "bob-acme"},
			wantStatus: http.StatusCreated, wantCovered: 2,
		},
		"key": {
			body: func(s *server) any {
				// Only a key that no longer signs can be revoked: a
				// compromised key is rotated out at once.
				if _, err := s.iss.RotateKeysNow(context.Background(), s.adminID); err != nil {
					s.t.Fatal(err)
				}
				// It signed the caller's own admin token: force.
				return map[string]any{"kind": "key", "target": s.record(s.adminID).KeyID, "reason": "compromised", "force": true}
			},
			revoked:    []string{"admin", "alice-acme", "alice-globex", "bob-acme", "bob-globex"},
			wantStatus: http.StatusCreated, wantCovered: 5,
		},
		"token": {
			body: func(s *server) any {
				return map[string]string{"kind": "token", "target": "bob-globex", "reason": "leaked"}
			},
			revoked:    []string{"bob-globex"},
			wantStatus: http.StatusCreated, wantCovered: 1,
		},
		"unknown key": {
			body: func(*server) any {
				return map[string]string{"kind": "key", "target": "k_nosuchkey", "reason": "compromised"}
			},
			wantStatus: http.StatusBadRequest, wantCode: "refused_by_policy",
		},
		"active key": {
			body: func(s *server) any {
				return map[string]string{"kind": "key", "target": s.record(s.adminID).KeyID, "reason": "compromised"}
			},
			wantStatus: http.StatusBadRequest, wantCode: "refused_by_policy",
		},
		"unknown kind": {
			body:       func(*server) any { return map[string]string{"kind": "everyone", "target": "x", "reason": "panic"} },
			wantStatus: http.StatusBadRequest, wantCode: "refused_by_policy",
		},
		"no target": {
			body:       func(*server) any { return map[string]string{"kind": "subject", "reason": "left"} },
			wantStatus: http.StatusBadRequest, wantCode: "refused_by_policy",
		},
		"no reason": {
			body:       func(*server) any { return map[string]string{"kind": "subject", "target": "alice"} },
			wantStatus: http.StatusBadRequest, wantCode: "bad_request",
		},
		"unknown token": {
			body:       func(*server) any { return map[string]string{"kind": "token", "target": "nosuchtoken", "reason": "x"} },
			wantStatus: http.StatusNotFound, wantCode: "not_found",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := newServer(t)
			tokens := map[string]*policy.Token{"admin": s.verify(s.admin)}
			for _, spec := range []struct{ name, subject, tenant string }{
				{"alice-acme", "alice", "acme"}, {"alice-globex", "alice", "globex"},
				{"bob-acme", "bob", "acme"}, {"bob-globex", "bob", "globex"},
			} {
				tokens[spec.name] = s.verify(s.issue(policy.IssueRequest{Subject: spec.subject, Class: "service", Tenant: spec.tenant}).Token)
			}
			// A revoked token is not covered again.
			gone := s.issue(policy.IssueRequest{Subject: "alice", Class: "service", Tenant: "acme"})
			wantStatus(t, s.as(http.MethodPost, "/v1/tokens/"+gone.Record.ID+"/revoke", map[string]string{"reason": "earlier"}), http.StatusCreated)
			s.clock.Set(t0.Add(time.Minute))

			body := tc.body(s)
			if m, ok := body.(map[string]string); ok && m["kind"] == "token" && tokens[m["target"]] != nil {
				m["target"] = tokens[m["target"]].ID
			}
			r := s.as(http.MethodPost, "/v1/revocations", body)
			wantStatus(t, r, tc.wantStatus)
			s.sync()
			if tc.wantCode != "" {
				if code := r.errorCode(t); code != tc.wantCode {
					t.Errorf("error %q, want %q", code, tc.wantCode)
				}
			} else {
				var out revokeResponse
				r.decode(t, &out)
				if out.Covered != tc.wantCovered {
					t.Errorf("covered %d, want %d", out.Covered, tc.wantCovered)
				}
				if out.Revocation.Actor != s.adminID || !out.Revocation.EffectiveAt.Equal(s.clock.Now()) {
					t.Errorf("rule %+v", out.Revocation)
				}
			}
			for n, tok := range tokens {
				if want := slices.Contains(tc.revoked, n); s.set.Revoked(tok, s.clock.Now()) != want {
					t.Errorf("%s: revoked = %v, want %v", n, !want, want)
				}
			}
			// The API enforces what it just did: revoking the admin's own
			// key locks the admin out.
			after := s.as(http.MethodGet, "/v1/revocations", nil)
			if slices.Contains(tc.revoked, "admin") {
				wantStatus(t, after, http.StatusUnauthorized)
				return
			}
			wantStatus(t, after, http.StatusOK)
			var list struct {
				Revocations   []policy.Revocation `json:"items"`
				NextPageToken string              `json:"next_page_token"`
			}
			after.decode(t, &list)
			if want := 1 + map[bool]int{true: 0, false: 1}[tc.wantCode != ""]; len(list.Revocations) != want {
				t.Errorf("%d rules listed, want %d", len(list.Revocations), want)
			}
		})
	}
}

func TestReportLeak(t *testing.T) {
	tests := map[string]struct {
		body       func(leaked string) any
		wantStatus int
		wantCode   string
	}{
		"sha256 of a real token": {
			body: func(leaked string) any {
				h := sha256.Sum256([]byte(leaked))
				return map[string]string{"sha256": hex.EncodeToString(h[:]), "source": "github.com/acme/app/commit/abc"}
			},
			wantStatus: http.StatusCreated,
		},
		"upper-case hex": {
			body: func(leaked string) any {
				h := sha256.Sum256([]byte(leaked))
				return map[string]string{"sha256": strings.ToUpper(hex.EncodeToString(h[:]))}
			},
			wantStatus: http.StatusCreated,
		},
		"unknown hash": {
			body: func(string) any {
				h := sha256.Sum256([]byte("tw_not-a-token-we-issued"))
				return map[string]string{"sha256": hex.EncodeToString(h[:])}
			},
			wantStatus: http.StatusNotFound, wantCode: "not_found",
		},
		"bad hex": {
			body:       func(string) any { return map[string]string{"sha256": strings.Repeat("zz", 32)} },
			wantStatus: http.StatusBadRequest, wantCode: "bad_request",
		},
		"short hash": {
			body:       func(string) any { return map[string]string{"sha256": "abcd"} },
			wantStatus: http.StatusBadRequest, wantCode: "bad_request",
		},
		"source too long": {
			body: func(leaked string) any {
				h := sha256.Sum256([]byte(leaked))
				return map[string]string{"sha256": hex.EncodeToString(h[:]), "source": strings.Repeat("x", 513)}
			},
			wantStatus: http.StatusBadRequest, wantCode: "bad_request",
		},
		"the token itself": {
			// A scanner must send the hash; the token is not accepted.
			body:       func(leaked string) any { return map[string]string{"sha256": leaked} },
			wantStatus: http.StatusBadRequest, wantCode: "bad_request",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := newServer(t)
			leaked := s.issue(policy.IssueRequest{Subject: "alice", Class: "service"})
			pt := s.verify(leaked.Token)
			r := s.as(http.MethodPost, "/v1/leaks", tc.body(leaked.Token))
			wantStatus(t, r, tc.wantStatus)
			s.sync()
			if tc.wantCode != "" {
				if code := r.errorCode(t); code != tc.wantCode {
					t.Errorf("error %q, want %q", code, tc.wantCode)
				}
				if s.set.Revoked(pt, s.clock.Now()) {
					t.Error("token revoked")
				}
				return
			}
			var out struct {
				TokenID    string            `json:"token_id"`
				Subject    string            `json:"subject"`
				Revocation policy.Revocation `json:"revocation"`
			}
			r.decode(t, &out)
			if out.TokenID != pt.ID || out.Subject != "alice" || out.Revocation.Target != pt.ID || !strings.HasPrefix(out.Revocation.Reason, "leak") {
				t.Errorf("leak response %+v", out)
			}
			if !s.set.Revoked(pt, s.clock.Now()) {
				t.Error("leaked token not revoked")
			}
			if st := s.record(pt.ID).Status; st != store.TokenRevoked {
				t.Errorf("leaked token's record is %s", st)
			}
			if recs := s.audited(audit.Filter{Action: audit.ActionTokenRevoke, TokenID: pt.ID}); len(recs) != 1 || !strings.HasPrefix(recs[0].Reason, "leak") || recs[0].Actor != s.adminID {
				t.Errorf("token.revoke records %+v", recs)
			}
		})
	}
}

func TestKeys(t *testing.T) {
	s := newServer(t)
	first := s.record(s.adminID).KeyID

	r := s.as(http.MethodPost, "/v1/keys/rotate", nil)
	wantStatus(t, r, http.StatusCreated)
	var nk struct {
		ID     string         `json:"id"`
		Public []byte         `json:"public"`
		State  store.KeyState `json:"state"`
	}
	json.Unmarshal(r.body, &nk)
	if nk.ID == "" || nk.ID == first || nk.State != store.KeyPending || len(nk.Public) == 0 {
		t.Errorf("rotated key %s", r.body)
	}

	var list struct {
		Keys []map[string]any `json:"items"`
	}
	listStates := func() map[string]any {
		r = s.as(http.MethodGet, "/v1/keys", nil)
		wantStatus(t, r, http.StatusOK)
		json.Unmarshal(r.body, &list)
		states := map[string]any{}
		for _, k := range list.Keys {
			states[k["id"].(string)] = k["state"]
			if _, ok := k["sealed"]; ok {
				t.Errorf("key %v is listed with its sealed private key", k["id"])
			}
		}
		return states
	}
	// Published ahead: the old key signs until the lead time has passed.
	if states := listStates(); states[first] != string(store.KeyActive) || states[nk.ID] != string(store.KeyPending) || len(states) != 2 {
		t.Errorf("key states %v, want %s active and %s pending", states, first, nk.ID)
	}
	r = s.as(http.MethodPost, "/v1/tokens", map[string]any{"subject": "early-admin", "class": "admin"})
	wantStatus(t, r, http.StatusCreated)
	var early issuedView
	r.decode(t, &early)
	if early.KeyID != first {
		t.Errorf("token within the lead time signed by %s, want %s", early.KeyID, first)
	}
	s.clock.Add(issuer.KeyLead)
	if states := listStates(); states[first] != string(store.KeyVerifying) || states[nk.ID] != string(store.KeyActive) || len(states) != 2 {
		t.Errorf("key states %v, want %s verifying and %s active", states, first, nk.ID)
	}
	stored, err := s.st.Keys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range stored {
		if len(k.Sealed) == 0 {
			continue
		}
		for _, enc := range []string{base64.StdEncoding.EncodeToString(k.Sealed), hex.EncodeToString(k.Sealed)} {
			if strings.Contains(string(r.body), enc) {
				t.Errorf("GET /v1/keys shows key %s's sealed private key", k.ID)
			}
		}
	}

	// The admin token, signed by the demoted key, still works; a token from
	// the new key works once the agent has picked the key up from the store.
	r = s.as(http.MethodPost, "/v1/tokens", map[string]any{"subject": "second-admin", "class": "admin"})
	wantStatus(t, r, http.StatusCreated)
	var out issuedView
	r.decode(t, &out)
	if out.KeyID != nk.ID {
		t.Errorf("new token signed by %s, want %s", out.KeyID, nk.ID)
	}
	wantStatus(t, s.call(http.MethodGet, "/v1/keys", out.Token, nil), http.StatusOK)

	if recs := s.audited(audit.Filter{Action: audit.ActionKeyRotate}); len(recs) != 2 || recs[1].Actor != s.adminID {
		t.Errorf("key.rotate records %+v, want the first key's and one by %s", recs, s.adminID)
	}

	// The emergency rotation signs at once.
	r = s.as(http.MethodPost, "/v1/keys/rotate?now=true", nil)
	wantStatus(t, r, http.StatusCreated)
	json.Unmarshal(r.body, &nk)
	if nk.State != store.KeyActive {
		t.Errorf("emergency rotation made a %s key, want active", nk.State)
	}
	if states := listStates(); states[nk.ID] != string(store.KeyActive) || states[first] != string(store.KeyVerifying) {
		t.Errorf("key states after an emergency rotation %v", states)
	}
}

type auditList struct {
	Records       []audit.Record `json:"items"`
	NextPageToken string         `json:"next_page_token"`
}

func TestAuditTail(t *testing.T) {
	s := newServer(t)
	var ids []string
	for i := range 3 {
		ids = append(ids, s.issue(policy.IssueRequest{Subject: fmt.Sprintf("svc-%d", i), Class: "service"}).Record.ID)
	}
	wantStatus(t, s.as(http.MethodPost, "/v1/tokens/"+ids[0]+"/revoke", map[string]string{"reason": "test"}), http.StatusCreated)

	tests := map[string]struct {
		query      string
		wantStatus int
		want       []string // action:token of each record
	}{
		"last two issues": {
			query: "?limit=2&action=token.issue", wantStatus: http.StatusOK,
			want: []string{"token.issue:" + ids[1], "token.issue:" + ids[2]},
		},
		"revocations": {
			query: "?action=token.revoke", wantStatus: http.StatusOK,
			want: []string{"token.revoke:" + ids[0]},
		},
		"one token": {
			query: "?token=" + ids[0], wantStatus: http.StatusOK,
			want: []string{"token.issue:" + ids[0], "token.revoke:" + ids[0]},
		},
		"action prefix": {
			query: "?limit=3&action=token.", wantStatus: http.StatusOK,
			want: []string{"token.issue:" + ids[1], "token.issue:" + ids[2], "token.revoke:" + ids[0]},
		},
		"default n": {
			query: "?action=key.rotate", wantStatus: http.StatusOK, want: []string{"key.rotate:"},
		},
		"limit zero":         {query: "?limit=0", wantStatus: http.StatusBadRequest},
		"limit too large":    {query: "?limit=1001", wantStatus: http.StatusBadRequest},
		"limit not a number": {query: "?limit=all", wantStatus: http.StatusBadRequest},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := s.as(http.MethodGet, "/v1/audit"+tc.query, nil)
			wantStatus(t, r, tc.wantStatus)
			if tc.wantStatus != http.StatusOK {
				if code := r.errorCode(t); code != "bad_request" {
					t.Errorf("error %q", code)
				}
				return
			}
			var list auditList
			r.decode(t, &list)
			var got []string
			for _, rec := range list.Records {
				got = append(got, rec.Action+":"+rec.TokenID)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("records %v, want %v", got, tc.want)
			}
		})
	}
}

// stream is a GET /v1/audit/stream in progress.
type stream struct {
	lines  chan audit.Record
	cancel context.CancelFunc
}

func (s *server) openStream(query string) *stream {
	s.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.srv.URL+"/v1/audit/stream"+query, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+s.admin)
	resp, err := s.srv.Client().Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		s.t.Fatalf("stream: status %d: %s", resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		s.t.Errorf("stream Content-Type %q", ct)
	}
	st := &stream{lines: make(chan audit.Record, 64), cancel: cancel}
	t := s.t
	go func() {
		defer resp.Body.Close()
		defer close(st.lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line := sc.Bytes()
			if len(bytes.TrimSpace(line)) == 0 {
				continue // heartbeat
			}
			checkNoTokens(t, "audit stream", line, "")
			var rec audit.Record
			if err := json.Unmarshal(line, &rec); err != nil {
				t.Errorf("stream line %q: %v", line, err)
				return
			}
			select {
			case st.lines <- rec:
			case <-ctx.Done():
				return
			}
		}
	}()
	// Closing the stream ends the handler, so the server can shut down.
	s.t.Cleanup(cancel)
	return st
}

// next returns the next streamed record, failing after a second.
func (st *stream) next(t *testing.T) audit.Record {
	t.Helper()
	select {
	case rec, ok := <-st.lines:
		if !ok {
			t.Fatal("stream ended")
		}
		return rec
	case <-time.After(time.Second):
		t.Fatal("no stream record within a second")
	}
	return audit.Record{}
}

// quiet fails if a record arrives within d.
func (st *stream) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case rec, ok := <-st.lines:
		if ok {
			t.Errorf("unexpected stream record %+v", rec)
		}
	case <-time.After(d):
	}
}

func TestAuditStream(t *testing.T) {
	tests := map[string]struct {
		query string
		// act runs once the stream is open.
		act        func(s *server) (tokenID string)
		wantAction string
		// thenRequest: the admin.request record of the act follows.
		thenRequest bool
	}{
		"every action": {
			query: "?n=0",
			act: func(s *server) string {
				r := s.as(http.MethodPost, "/v1/tokens", map[string]any{"subject": "orders-api", "class": "service"})
				var out issuedView
				json.Unmarshal(r.body, &out)
				return out.ID
			},
			wantAction:  audit.ActionTokenIssue,
			thenRequest: true,
		},
		"filtered by action": {
			query: "?n=0&action=token.revoke",
			act: func(s *server) string {
				id := s.issue(policy.IssueRequest{Subject: "orders-api", Class: "service"}).Record.ID
				s.as(http.MethodPost, "/v1/tokens/"+id+"/revoke", map[string]string{"reason": "test"})
				return id
			},
			wantAction: audit.ActionTokenRevoke,
		},
		"without n": {
			query: "?action=token.issue",
			act: func(s *server) string {
				return s.issue(policy.IssueRequest{Subject: "orders-api", Class: "service"}).Record.ID
			},
			wantAction: audit.ActionTokenIssue,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := newServer(t)
			st := s.openStream(tc.query)
			id := tc.act(s)
			rec := st.next(t)
			if rec.Action != tc.wantAction || rec.TokenID != id {
				t.Errorf("first streamed record %s %s, want %s %s", rec.Action, rec.TokenID, tc.wantAction, id)
			}
			if rec.Action == audit.ActionTokenIssue || rec.Action == audit.ActionTokenRevoke {
				if rec.Actor != s.adminID {
					t.Errorf("streamed record actor %q, want %q", rec.Actor, s.adminID)
				}
			}
			if tc.thenRequest {
				if rec := st.next(t); rec.Action != admin.ActionRequest || rec.Actor != s.adminID || rec.Subject != "tokenwarden-admin" {
					t.Errorf("then streamed %s by %s (%s), want %s by the admin token", rec.Action, rec.Actor, rec.Subject, admin.ActionRequest)
				}
			}
			st.quiet(t, 100*time.Millisecond)
		})
	}

	t.Run("backlog then live", func(t *testing.T) {
		s := newServer(t)
		ids := []string{s.adminID}
		for range 2 {
			ids = append(ids, s.issue(policy.IssueRequest{Subject: "orders-api", Class: "service"}).Record.ID)
		}
		st := s.openStream("?n=2&action=token.issue")
		ids = append(ids, s.issue(policy.IssueRequest{Subject: "orders-api", Class: "service"}).Record.ID)
		var got []string
		var seqs []uint64
		for range 3 {
			rec := st.next(t)
			got = append(got, rec.TokenID)
			seqs = append(seqs, rec.Seq)
		}
		if !slices.Equal(got, ids[1:]) {
			t.Errorf("streamed %v, want the last two then the new one %v", got, ids[1:])
		}
		if !slices.IsSorted(seqs) || len(slices.Compact(slices.Clone(seqs))) != 3 {
			t.Errorf("seqs %v: want increasing, each once", seqs)
		}
		st.quiet(t, 100*time.Millisecond)
	})

	t.Run("bad n", func(t *testing.T) {
		s := newServer(t)
		for _, q := range []string{"?n=-1", "?n=x", "?n=10001"} {
			r := s.as(http.MethodGet, "/v1/audit/stream"+q, nil)
			wantStatus(t, r, http.StatusBadRequest)
		}
	})
}

func TestHealth(t *testing.T) {
	s := newServer(t)
	s.setReady(errors.New("loading revocations"))
	tests := []struct {
		name       string
		path       string
		ready      bool
		wantStatus int
	}{
		{"healthz while starting", "/healthz", false, http.StatusOK},
		{"readyz while starting", "/readyz", false, http.StatusServiceUnavailable},
		{"healthz when ready", "/healthz", true, http.StatusOK},
		{"readyz when ready", "/readyz", true, http.StatusOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.ready {
				s.setReady(nil)
			}
			// No token: health checks come from the kubelet.
			r := s.call(http.MethodGet, tc.path, "", nil)
			wantStatus(t, r, tc.wantStatus)
			if tc.wantStatus == http.StatusServiceUnavailable && !strings.Contains(string(r.body), "loading revocations") {
				t.Errorf("readyz body %q does not say why", r.body)
			}
		})
	}
}

// A record keeps its status when a rule takes effect after it was made (a
// rotation grace ends, a future effective_at comes); the API still shows
// the token as revoked and leaves it out of the live ones.
func TestTokenStateFollowsRulesInForce(t *testing.T) {
	tests := map[string]struct {
		// setup returns the token to look at and when its rule takes effect.
		setup func(s *server) (id string, effective time.Time)
		// before is the state shown until the rule takes effect.
		before string
	}{
		"rotated, grace over": {
			setup: func(s *server) (string, time.Time) {
				id := s.issue(policy.IssueRequest{Subject: "ci-runner", Class: "ci-deploy"}).Record.ID
				wantStatus(s.t, s.as(http.MethodPost, "/v1/tokens/"+id+"/rotate", nil), http.StatusCreated)
				return id, t0.Add(15 * time.Minute)
			},
			before: "rotated",
		},
		"revoked with a future effective_at": {
			setup: func(s *server) (string, time.Time) {
				id := s.issue(policy.IssueRequest{Subject: "ci-runner", Class: "ci-deploy"}).Record.ID
				at := t0.Add(10 * time.Minute)
				wantStatus(s.t, s.as(http.MethodPost, "/v1/tokens/"+id+"/revoke", map[string]any{"reason": "migrate first", "effective_at": at}), http.StatusCreated)
				return id, at
			},
			before: "active",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := newServer(t)
			id, effective := tc.setup(s)
			for _, at := range []time.Time{effective.Add(-time.Second), effective} {
				s.clock.Set(at)
				want := tc.before
				if !at.Before(effective) {
					want = "revoked"
				}
				r := s.as(http.MethodGet, "/v1/tokens/"+id, nil)
				wantStatus(t, r, http.StatusOK)
				var v tokenView
				r.decode(t, &v)
				if v.State != want {
					t.Errorf("at %v: state %q, want %q", at, v.State, want)
				}
				r = s.as(http.MethodGet, "/v1/tokens?live=true&subject=ci-runner", nil)
				var list tokenList
				r.decode(t, &list)
				listed := slices.ContainsFunc(list.Tokens, func(v tokenView) bool { return v.ID == id })
				if listed != (want != "revoked") {
					t.Errorf("at %v: listed as live = %v, state %s", at, listed, want)
				}
			}
		})
	}
}

func TestNewValidatesConfig(t *testing.T) {
	s := newServer(t)
	full := admin.Config{
		Issuer: s.iss, Store: s.st, Audit: s.log, AuditDir: s.auditDir, Decider: s.decider, Revocations: s.set,
	}
	tests := map[string]func(c *admin.Config){
		"complete":       nil,
		"no issuer":      func(c *admin.Config) { c.Issuer = nil },
		"no store":       func(c *admin.Config) { c.Store = nil },
		"no audit log":   func(c *admin.Config) { c.Audit = nil },
		"no audit dir":   func(c *admin.Config) { c.AuditDir = "" },
		"no decider":     func(c *admin.Config) { c.Decider = nil },
		"no revocations": func(c *admin.Config) { c.Revocations = nil },
	}
	for name, edit := range tests {
		t.Run(name, func(t *testing.T) {
			cfg := full
			if edit != nil {
				edit(&cfg)
			}
			_, err := admin.New(cfg)
			if (err == nil) != (edit == nil) {
				t.Errorf("New: %v", err)
			}
		})
	}
}

// TestRevocationAuditEvasion is the evasion attack on the admin API: a
// revocation whose reason (or a leak report whose source) holds a token
// string, and a revocation while the audit log cannot write. Each is
// enforced, answered 201 (never 500 for an action that took effect), and,
// where the log can write, audited with the token redacted.
func TestRevocationAuditEvasion(t *testing.T) {
	tests := map[string]struct {
		revoke     func(s *server, victim issuer.Issued) response
		logBroken  bool
		wantReason string // in the audit record; "" when it cannot be written
	}{
		"a token in the reason": {
			revoke: func(s *server, v issuer.Issued) response {
				return s.as(http.MethodPost, "/v1/tokens/"+v.Record.ID+"/revoke", map[string]string{"reason": "leaked: " + v.Token})
			},
			wantReason: "leaked: [redacted token]",
		},
		"a token in a rule's reason": {
			revoke: func(s *server, v issuer.Issued) response {
				return s.as(http.MethodPost, "/v1/revocations", map[string]string{"kind": "subject", "target": v.Record.Subject, "reason": v.Token + " in CI logs"})
			},
			wantReason: "[redacted token] in CI logs",
		},
		"a token in a leak report's source": {
			revoke: func(s *server, v issuer.Issued) response {
				sum := sha256.Sum256([]byte(v.Token))
				return s.as(http.MethodPost, "/v1/leaks", map[string]string{"sha256": hex.EncodeToString(sum[:]), "source": "paste " + v.Token[:120]})
			},
			wantReason: "leak: found in paste [redacted token]",
		},
		"the audit log cannot write": {
			revoke: func(s *server, v issuer.Issued) response {
				return s.as(http.MethodPost, "/v1/tokens/"+v.Record.ID+"/revoke", map[string]string{"reason": "compromised"})
			},
			logBroken: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := newServer(t)
			victim := s.issue(policy.IssueRequest{Subject: "orders-api", Class: "service"})
			if tc.logBroken {
				s.log.Close() // every Append now fails, as on a full disk
			}
			wantStatus(t, tc.revoke(s, victim), http.StatusCreated)
			s.sync()
			if !s.set.Revoked(s.verify(victim.Token), s.clock.Now()) {
				t.Fatal("the revocation is not enforced")
			}
			if tc.logBroken {
				if st := s.log.Stats(); st.AppendsFailed == 0 {
					t.Errorf("the unaudited revocation was not counted: %+v", st)
				}
				return
			}
			raw, err := os.ReadFile(filepath.Join(s.auditDir, "audit.log"))
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(raw, []byte("tw_eyJ")) {
				t.Fatal("a token string reached the audit log")
			}
			var reasons []string
			audit.Read(s.auditDir, audit.Filter{Action: "revocation.create"}, func(r audit.Record) error { reasons = append(reasons, r.Reason); return nil })
			audit.Read(s.auditDir, audit.Filter{Action: "token.revoke"}, func(r audit.Record) error { reasons = append(reasons, r.Reason); return nil })
			if !slices.Contains(reasons, tc.wantReason) {
				t.Errorf("revocation records' reasons = %q, want %q among them", reasons, tc.wantReason)
			}
		})
	}
}

// TestAuditVerify: the running agent verifies its own log against the head
// recorded in the store, and reports a log cut behind that head.
func TestAuditVerify(t *testing.T) {
	s := newServer(t)
	s.issue(policy.IssueRequest{Subject: "orders-api", Class: "service"})
	var resp admin.AuditVerifyResponse
	r := s.as(http.MethodGet, "/v1/audit/verify", nil)
	wantStatus(t, r, http.StatusOK)
	if err := json.Unmarshal(r.body, &resp); err != nil {
		t.Fatal(err)
	}
	if !resp.OK || resp.Report.Records == 0 || !strings.Contains(resp.Summary, "no head recorded in the store was checked") {
		t.Fatalf("verify of an intact log = %+v", resp)
	}
	// The store says the chain went further than the log does: a cut tail.
	head := store.AuditHead{Node: "", Seq: resp.Report.LastSeq + 5, Hash: strings.Repeat("0", 64), File: "audit.log", Time: t0}
	if err := s.st.PutAuditHead(context.Background(), head); err == nil {
		t.Fatal("PutAuditHead accepted an empty node")
	}
	head.Node = "node-a"
	if err := s.st.PutAuditHead(context.Background(), head); err != nil {
		t.Fatal(err)
	}
	api, err := admin.New(admin.Config{
		Issuer: s.iss, Store: s.st, Audit: s.log, AuditDir: s.auditDir, NodeName: "node-a", Decider: s.decider,
		Revocations: s.set, Now: s.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, "/v1/audit/verify", nil)
	req.Header.Set("Authorization", "Bearer "+s.admin)
	rec := httptest.NewRecorder()
	api.ServeHTTP(rec, req)
	resp = admin.AuditVerifyResponse{}
	if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil || rec.Code != http.StatusOK {
		t.Fatalf("status %d, %v: %s", rec.Code, err, rec.Body)
	}
	if resp.OK || !strings.Contains(resp.Error, "the tail was cut, or the log deleted") {
		t.Errorf("verify of a cut log = %+v", resp)
	}
}
