package introspect_test

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/introspect"
	"github.com/tokenwarden/tokenwarden/agent/revocation"
	"github.com/tokenwarden/tokenwarden/policy"
)

const testPolicy = `version: 1
issuer: tokenwarden.test
environments:
  dev: { max_ttl: 24h }
  prod: { max_ttl: 24h }
classes:
  service:
    scopes: [orders:read]
    default_ttl: 1h
    max_ttl: 12h
    environments: [dev, prod]
  introspector:
    scopes: [tokenwarden:introspect]
    default_ttl: 1h
    max_ttl: 12h
    environments: [dev, prod]
services:
  orders:
    hosts: [orders]
    routes:
      - { methods: [GET], path: "/orders/**", scopes: [orders:read] }
  tokenwarden:
    hosts: [tokenwarden]
    routes:
      - { methods: [POST], path: /oauth2/introspect, scopes: [tokenwarden:introspect] }
`

// recorder is an audit sink that remembers what it was given, or fails.
type recorder struct {
	mu   sync.Mutex
	recs []audit.Record
	fail bool
}

func (r *recorder) Append(rec audit.Record) (audit.Record, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		return rec, errors.New("disk full")
	}
	r.recs = append(r.recs, rec)
	return rec, nil
}

type fixture struct {
	logs    *syncBuffer
	h       *introspect.Handler
	audit   *recorder
	revoked *revocation.Set
	now     time.Time
	mint    func(class, env string, scopes ...string) (string, string)
	caller  string
}

func newFixture(t *testing.T, burst int) *fixture {
	t.Helper()
	p, err := policy.Load("p.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	key, err := policy.NewSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{logs: &syncBuffer{}, audit: &recorder{}, revoked: revocation.NewSet(), now: time.Unix(1_800_000_000, 0)}
	f.mint = func(class, env string, scopes ...string) (string, string) {
		c, err := p.Issue(policy.IssueRequest{Subject: "svc-" + class, Class: class, Env: env, Scopes: scopes}, f.now)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := policy.Mint(key, c)
		if err != nil {
			t.Fatal(err)
		}
		return tok, c.ID
	}
	d := policy.NewDecider(policy.DeciderConfig{
		Env: "prod", Policy: p, Keys: policy.NewKeySet(map[string]ed25519.PublicKey{key.ID: key.Private.Public().(ed25519.PublicKey)}), Revocations: f.revoked,
	})
	f.h, err = introspect.New(introspect.Config{
		Decider: d, Revocations: f.revoked, Audit: f.audit, Burst: burst, Rate: 1e-9,
		Now: func() time.Time { return f.now }, Logger: slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	f.caller, _ = f.mint("introspector", "prod")
	return f
}

func (f *fixture) post(auth, contentType, body string) (*httptest.ResponseRecorder, map[string]any) {
	req := httptest.NewRequest("POST", introspect.Path, strings.NewReader(body))
	if auth != "" {
		req.Header.Set("Authorization", "Bearer "+auth)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, req)
	var out map[string]any
	json.Unmarshal(rec.Body.Bytes(), &out)
	return rec, out
}

const form = "application/x-www-form-urlencoded"

// syncBuffer collects log output.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// noTokenLogged fails when a log line holds token material.
func noTokenLogged(t *testing.T, f *fixture, tokens ...string) {
	t.Helper()
	logs := f.logs.String()
	for _, tok := range tokens {
		if len(tok) > 24 && strings.Contains(logs, tok[len(tok)-24:]) {
			t.Errorf("a token reached the log:\n%s", logs)
		}
	}
	if strings.Contains(logs, "tw_") {
		t.Errorf("token prefix in the log:\n%s", logs)
	}
}

// TestActiveAndInactive: an allowed token gets its claims; every way of
// not being allowed gets exactly {"active":false}, whatever the reason,
// while the audit log keeps the reason.
func TestActiveAndInactive(t *testing.T) {
	f := newFixture(t, 1000)
	good, goodID := f.mint("service", "prod")
	revoked, revokedID := f.mint("service", "prod")
	f.revoked.Add(policy.Revocation{ID: "r1", Kind: policy.RevokeToken, Target: revokedID, EffectiveAt: f.now.Add(-time.Second), Reason: "test"})
	wrongEnv, _ := f.mint("service", "dev")
	otherKey := func() string {
		k, _ := policy.NewSigningKey()
		p, _ := policy.Load("p.yaml", []byte(testPolicy))
		c, _ := p.Issue(policy.IssueRequest{Subject: "x", Class: "service", Env: "prod"}, f.now)
		tok, _ := policy.Mint(k, c)
		return tok
	}()
	expired, _ := f.mint("service", "prod")

	rec, out := f.post(f.caller, form, "token="+url.QueryEscape(good))
	if rec.Code != http.StatusOK || out["active"] != true || out["jti"] != goodID || out["sub"] != "svc-service" ||
		out["scope"] != "orders:read" || out["env"] != "prod" || out["client_id"] != "svc-service" || out["token_type"] != "Bearer" {
		t.Fatalf("active token: %d %v", rec.Code, out)
	}
	if rec.Header().Get("Cache-Control") != "no-store" {
		t.Error("introspection answer is cacheable")
	}
	inactive := map[string]string{
		"revoked":       revoked,
		"wrong env":     wrongEnv,
		"unknown key":   otherKey,
		"malformed":     "tw_not.a.token",
		"no prefix":     strings.TrimPrefix(good, "tw_"),
		"tampered":      good[:len(good)-4] + "AAAA",
		"not a token":   "hello",
		"huge garbage":  strings.Repeat("A", policy.MaxTokenBytes+1),
		"trailing junk": good + "x",
	}
	for name, tok := range inactive {
		rec, _ := f.post(f.caller, form, "token="+url.QueryEscape(tok))
		if rec.Code != http.StatusOK || strings.TrimSpace(rec.Body.String()) != `{"active":false}` {
			t.Errorf("%s: %d %s, want exactly {\"active\":false}", name, rec.Code, rec.Body)
		}
	}
	f.now = f.now.Add(13 * time.Hour) // past max_ttl
	if rec, _ := f.post(f.caller, form, "token=x"); rec.Code != http.StatusUnauthorized {
		t.Errorf("expired caller: %d", rec.Code)
	}
	freshCaller, _ := f.mint("introspector", "prod")
	if rec, _ := f.post(freshCaller, form, "token="+url.QueryEscape(expired)); strings.TrimSpace(rec.Body.String()) != `{"active":false}` {
		t.Errorf("expired token: %d %s", rec.Code, rec.Body)
	}

	noTokenLogged(t, f, good, revoked, wrongEnv, otherKey, f.caller)
	f.audit.mu.Lock()
	defer f.audit.mu.Unlock()
	if len(f.audit.recs) != 2+len(inactive) {
		t.Fatalf("%d audit records, want %d", len(f.audit.recs), 2+len(inactive))
	}
	reasons := map[string]bool{}
	for _, r := range f.audit.recs {
		if r.Action != "token.introspect" || r.Actor == "" {
			t.Errorf("audit record %+v", r)
		}
		reasons[r.Reason] = true
		if b, _ := json.Marshal(r); strings.Contains(string(b), good[len(good)-20:]) || strings.Contains(string(b), "tw_") {
			t.Errorf("audit record holds a token string: %s", b)
		}
		if r.Reason == string(policy.ReasonRevoked) && r.TokenID != revokedID {
			t.Errorf("revoked introspection not named by jti: %+v", r)
		}
	}
	if !reasons[""] || !reasons[string(policy.ReasonRevoked)] {
		t.Errorf("audit reasons %v: want the active answer and revoked", reasons)
	}
}

// TestHostileRequests: every malformed request is refused before its
// token is looked at, with no token material in the answer.
func TestHostileRequests(t *testing.T) {
	f := newFixture(t, 1000)
	good, _ := f.mint("service", "prod")
	service := good
	tests := map[string]struct {
		auth, contentType, body string
		method, query           string
		want                    int
	}{
		"no auth":              {contentType: form, body: "token=x", want: 401},
		"caller lacks scope":   {auth: service, contentType: form, body: "token=x", want: 403},
		"caller garbage":       {auth: "tw_x.y.z", contentType: form, body: "token=x", want: 401},
		"json body":            {auth: f.caller, contentType: "application/json", body: `{"token":"x"}`, want: 415},
		"no content type":      {auth: f.caller, body: "token=x", want: 415},
		"bad media type":       {auth: f.caller, contentType: "application/x-www-form-urlencoded; charset=latin1", body: "token=x", want: 415},
		"multipart":            {auth: f.caller, contentType: "multipart/form-data; boundary=x", body: "--x--", want: 415},
		"malformed media type": {auth: f.caller, contentType: "application/x-www-form-urlencoded;;=", body: "token=x", want: 415},
		"duplicate token":      {auth: f.caller, contentType: form, body: "token=a&token=b", want: 400},
		"duplicate hint":       {auth: f.caller, contentType: form, body: "token=a&token_type_hint=x&token_type_hint=y", want: 400},
		"empty token":          {auth: f.caller, contentType: form, body: "token=", want: 400},
		"missing token":        {auth: f.caller, contentType: form, body: "tokens=a", want: 400},
		"bad percent encoding": {auth: f.caller, contentType: form, body: "token=%zz", want: 400},
		"semicolon separator":  {auth: f.caller, contentType: form, body: "token=a;token=b", want: 400},
		"huge body":            {auth: f.caller, contentType: form, body: "token=" + strings.Repeat("A", introspect.MaxBodyBytes), want: 413},
		"token in URL":         {auth: f.caller, contentType: form, body: "", query: "token=" + url.QueryEscape(good), want: 400},
		"GET":                  {auth: f.caller, method: "GET", want: 405},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = "POST"
			}
			target := introspect.Path
			if tt.query != "" {
				target += "?" + tt.query
			}
			req := httptest.NewRequest(method, target, strings.NewReader(tt.body))
			if tt.auth != "" {
				req.Header.Set("Authorization", "Bearer "+tt.auth)
			}
			if tt.contentType != "" {
				req.Header.Set("Content-Type", tt.contentType)
			}
			rec := httptest.NewRecorder()
			f.h.ServeHTTP(rec, req)
			if rec.Code != tt.want {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.want, rec.Body)
			}
			if strings.Contains(rec.Body.String(), `"active"`) || strings.Contains(rec.Body.String(), "tw_") {
				t.Errorf("refusal carries token material: %s", rec.Body)
			}
		})
	}
	// Two Authorization headers: refused, whichever one a proxy would pick.
	req := httptest.NewRequest("POST", introspect.Path, strings.NewReader("token=x"))
	req.Header.Add("Authorization", "Bearer "+f.caller)
	req.Header.Add("Authorization", "Bearer "+service)
	req.Header.Set("Content-Type", form)
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, req)
	if rec.Code != http.StatusUnauthorized {
		t.Errorf("two Authorization headers: %d", rec.Code)
	}
	f.audit.mu.Lock()
	defer f.audit.mu.Unlock()
	if len(f.audit.recs) != 0 {
		t.Errorf("refused requests were answered and audited: %d records", len(f.audit.recs))
	}
}

// TestRateLimitPerCaller: a caller over its burst gets 429; another caller
// is unaffected.
func TestRateLimitPerCaller(t *testing.T) {
	f := newFixture(t, 3)
	other, _ := f.mint("introspector", "prod")
	for i := range 3 {
		if rec, _ := f.post(f.caller, form, "token=x"); rec.Code != http.StatusOK {
			t.Fatalf("request %d: %d", i, rec.Code)
		}
	}
	rec, _ := f.post(f.caller, form, "token=x")
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("over the burst: %d %v", rec.Code, rec.Header())
	}
	if rec, _ := f.post(other, form, "token=x"); rec.Code != http.StatusOK {
		t.Errorf("another caller limited too: %d", rec.Code)
	}
}

// TestUnauditedAnswerIsNotGiven: an answer the audit log cannot record is
// refused.
func TestUnauditedAnswerIsNotGiven(t *testing.T) {
	f := newFixture(t, 10)
	good, _ := f.mint("service", "prod")
	f.audit.fail = true
	rec, _ := f.post(f.caller, form, "token="+url.QueryEscape(good))
	if rec.Code != http.StatusInternalServerError || strings.Contains(rec.Body.String(), "active") {
		t.Errorf("unaudited answer: %d %s", rec.Code, rec.Body)
	}
	if !strings.Contains(f.logs.String(), "not audited") {
		t.Errorf("the failure was not logged: %s", f.logs)
	}
	noTokenLogged(t, f, good, f.caller)
}

// FuzzParseRequest: no input makes the form parser panic, accept a
// request without exactly one non-empty token, or exceed its bound.
func FuzzParseRequest(f *testing.F) {
	for _, s := range [][2]string{
		{form, "token=tw_a.b.c"},
		{form, "token=a&token=b"},
		{form + "; charset=UTF-8", "token=a&token_type_hint=access_token"},
		{form, "token=%zz"},
		{form, "token=a;b"},
		{"application/json", `{"token":"a"}`},
		{"", ""},
		{form, "token=" + strings.Repeat("%41", 100)},
	} {
		f.Add(s[0], []byte(s[1]))
	}
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		tok, err := introspect.ParseRequest(contentType, body)
		if err != nil {
			if tok != "" || err.Status < 400 || err.Status > 499 {
				t.Fatalf("refusal with token %q or status %d", tok, err.Status)
			}
			return
		}
		if tok == "" || len(body) > introspect.MaxBodyBytes {
			t.Fatalf("accepted %q from a %d-byte body", tok, len(body))
		}
		form, perr := url.ParseQuery(string(body))
		if perr != nil || len(form["token"]) != 1 || form["token"][0] != tok {
			t.Fatalf("accepted token %q from %q", tok, body)
		}
	})
}
