package secretscan_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/revoke"
	"github.com/tokenwarden/tokenwarden/agent/secretscan"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// github plays GitHub: its own P-256 key pair, published in the key
// document format, signing bodies the way GitHub does.
type github struct {
	id   string
	priv *ecdsa.PrivateKey
}

func newGitHub(t testing.TB, id string) github {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return github{id: id, priv: priv}
}

func (g github) keyDoc(t testing.TB) []byte {
	der, err := x509.MarshalPKIXPublicKey(&g.priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := json.Marshal(map[string]any{"public_keys": []map[string]any{{
		"key_identifier": g.id, "key": string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), "is_current": true,
	}}})
	return doc
}

func (g github) sign(t testing.TB, body []byte) string {
	d := sha256.Sum256(body)
	sig, err := ecdsa.SignASN1(rand.Reader, g.priv, d[:])
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(sig)
}

// leaks records revocations as the issuer would make them, once per token.
type leaks struct {
	mu      sync.Mutex
	revoked map[[32]byte]int
	known   map[[32]byte]string
	fail    bool
}

func (l *leaks) RevokeLeak(_ context.Context, h [32]byte, source, actor string) (revoke.Leak, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail {
		return revoke.Leak{}, errors.New("store down")
	}
	id, ok := l.known[h]
	if !ok {
		return revoke.Leak{}, store.ErrNotFound
	}
	if actor != secretscan.Actor || !strings.HasPrefix(source, "GitHub https://") {
		return revoke.Leak{}, errors.New("bad actor or source")
	}
	l.revoked[h]++
	if l.revoked[h] > 1 {
		return revoke.Leak{Token: store.TokenRecord{ID: id}, Already: true}, nil
	}
	return revoke.Leak{Token: store.TokenRecord{ID: id}, Result: revoke.Result{Rule: policy.Revocation{ID: "rule-" + id}}}, nil
}

type auditLog struct {
	mu   sync.Mutex
	recs []audit.Record
}

func (a *auditLog) Append(r audit.Record) (audit.Record, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.recs = append(a.recs, r)
	return r, nil
}

type fixture struct {
	logs      *strings.Builder
	gh        github
	h         *secretscan.Handler
	leaks     *leaks
	audit     *auditLog
	genuine   string // a real token of ours
	genuineID string
	t         *testing.T
	foreign   string // same shape, another key
}

func newFixture(t *testing.T) *fixture {
	p, err := policy.Load("p.yaml", []byte("version: 1\nissuer: tw.test\nenvironments:\n  prod: { max_ttl: 24h }\nclasses:\n  service:\n    scopes: [a:b]\n    default_ttl: 1h\n    max_ttl: 2h\n    environments: [prod]\nservices:\n  s:\n    hosts: [s]\n    routes:\n      - { path: /, scopes: [a:b] }\n"))
	if err != nil {
		t.Fatal(err)
	}
	mint := func() (string, policy.SigningKey) {
		k, _ := policy.NewSigningKey()
		c, err := p.Issue(policy.IssueRequest{Subject: "svc", Class: "service", Env: "prod"}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		tok, err := policy.Mint(k, c)
		if err != nil {
			t.Fatal(err)
		}
		return tok, k
	}
	f := &fixture{logs: &strings.Builder{}, t: t, gh: newGitHub(t, "gh-key-1"), leaks: &leaks{revoked: map[[32]byte]int{}, known: map[[32]byte]string{}}, audit: &auditLog{}}
	var key policy.SigningKey
	f.genuine, key = mint()
	f.foreign, _ = mint()
	keys, err := secretscan.ParseKeys(f.gh.keyDoc(t))
	if err != nil {
		t.Fatal(err)
	}
	set := policy.NewKeySet(map[string]ed25519.PublicKey{key.ID: key.Private.Public().(ed25519.PublicKey)})
	tok, verr := set.VerifySignature(f.genuine)
	if verr != nil {
		t.Fatal(verr)
	}
	f.genuineID = tok.ID
	f.leaks.known[policy.LeakHash(f.genuine)] = tok.ID
	src, err := secretscan.NewKeySource(keys, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	f.h, err = secretscan.New(secretscan.Config{
		Keys: src, Tokens: func() *policy.KeySet { return set }, Leaks: f.leaks, Audit: f.audit,
		Logger: slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func alerts(tokens ...string) []byte {
	var a []secretscan.Alert
	for _, t := range tokens {
		a = append(a, secretscan.Alert{Token: t, Type: "tokenwarden_token", URL: "https://github.com/o/r/blob/abc/config.yml", Source: "content"})
	}
	b, _ := json.Marshal(a)
	return b
}

func (f *fixture) send(body []byte, header http.Header) *httptest.ResponseRecorder {
	req := httptest.NewRequest("POST", secretscan.Path, strings.NewReader(string(body)))
	req.Header = header
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, req)
	return rec
}

func (f *fixture) signed(body []byte) http.Header {
	return http.Header{
		"Content-Type":             {"application/json"},
		secretscan.KeyIDHeader:     {f.gh.id},
		secretscan.SignatureHeader: {f.gh.sign(f.t, body)},
	}
}

// TestGenuineAndFalsePositives: GitHub reports our token, a foreign
// token of the same shape and a random string; only ours is revoked, the
// feedback labels each, and a replay changes nothing.
func TestGenuineAndFalsePositives(t *testing.T) {
	f := newFixture(t)
	body := alerts(f.genuine, f.foreign, "tw_aaaa.bbbb.cccc", "ghp_notours")
	for round := range 2 { // the second is a replay
		rec := f.send(body, f.signed(body))
		if rec.Code != http.StatusOK {
			t.Fatalf("round %d: %d %s", round, rec.Code, rec.Body)
		}
		var fb []secretscan.Feedback
		if err := json.Unmarshal(rec.Body.Bytes(), &fb); err != nil {
			t.Fatal(err)
		}
		want := []string{secretscan.TruePositive, secretscan.FalsePositive, secretscan.FalsePositive, secretscan.FalsePositive}
		for n, w := range want {
			if fb[n].Label != w || fb[n].TokenType != "tokenwarden_token" {
				t.Errorf("round %d: feedback[%d] = %+v, want %s", round, n, fb[n], w)
			}
		}
	}
	if n := f.leaks.revoked[policy.LeakHash(f.genuine)]; n != 2 {
		t.Errorf("RevokeLeak called %d times for the genuine token, want once per report", n)
	}
	if len(f.leaks.revoked) != 1 {
		t.Errorf("revoked %d distinct hashes, want only the genuine one", len(f.leaks.revoked))
	}
	f.audit.mu.Lock()
	defer f.audit.mu.Unlock()
	if len(f.audit.recs) != 2 {
		t.Fatalf("%d audit records, want one per report", len(f.audit.recs))
	}
	for _, r := range f.audit.recs {
		b, _ := json.Marshal(r)
		if strings.Contains(string(b), f.genuine[len(f.genuine)-16:]) || strings.Contains(string(b), "tw_") {
			t.Errorf("audit holds a token string: %s", b)
		}
		if !strings.Contains(string(r.Details), `"token_id":"`+f.genuineID+`"`) || !strings.Contains(string(r.Details), "github.com/o/r") {
			t.Errorf("audit lacks the token id or url: %s", r.Details)
		}
	}
	if !strings.Contains(string(f.audit.recs[1].Details), `"already_revoked":true`) {
		t.Errorf("replay not recorded as already revoked: %s", f.audit.recs[1].Details)
	}
}

// TestForgedAndHostileReports: nothing unsigned, mis-signed, oversize or
// malformed revokes anything.
func TestForgedAndHostileReports(t *testing.T) {
	f := newFixture(t)
	other := newGitHub(t, "gh-key-1") // same id, other key: an impostor
	body := alerts(f.genuine)
	tampered := []byte(strings.Replace(string(body), "config.yml", "config.ymX", 1))
	huge := []byte("[" + strings.Repeat(`{"token":"x"},`, secretscan.MaxBodyBytes/14) + `{"token":"x"}]`)
	tooMany := []byte("[" + strings.Repeat(`{},`, secretscan.MaxAlerts) + "{}]")
	hdr := func(b []byte, mod func(http.Header)) http.Header {
		h := f.signed(b)
		if mod != nil {
			mod(h)
		}
		return h
	}
	tests := map[string]struct {
		body   []byte
		header http.Header
		want   int
	}{
		"tampered body":        {tampered, hdr(body, nil), 401},
		"wrong key id":         {body, hdr(body, func(h http.Header) { h.Set(secretscan.KeyIDHeader, "gh-key-2") }), 401},
		"empty key id":         {body, hdr(body, func(h http.Header) { h.Set(secretscan.KeyIDHeader, "") }), 401},
		"impostor key":         {body, hdr(body, func(h http.Header) { h.Set(secretscan.SignatureHeader, other.sign(t, body)) }), 401},
		"no signature":         {body, hdr(body, func(h http.Header) { h.Del(secretscan.SignatureHeader) }), 401},
		"signature not base64": {body, hdr(body, func(h http.Header) { h.Set(secretscan.SignatureHeader, "!!!") }), 401},
		"signature url base64": {body, hdr(body, func(h http.Header) {
			// ECDSA signs at random: about one signature in twenty has
			// no '+' or '/', and its URL encoding is itself. Sign again
			// until the encodings differ.
			sig := h.Get(secretscan.SignatureHeader)
			for !strings.ContainsAny(sig, "+/") {
				sig = f.gh.sign(t, body)
			}
			h.Set(secretscan.SignatureHeader, strings.NewReplacer("+", "-", "/", "_").Replace(sig))
		}), 401},
		"two signatures":        {body, hdr(body, func(h http.Header) { h.Add(secretscan.SignatureHeader, h.Get(secretscan.SignatureHeader)) }), 401},
		"two key ids":           {body, hdr(body, func(h http.Header) { h.Add(secretscan.KeyIDHeader, "gh-key-1") }), 401},
		"wrong content type":    {body, hdr(body, func(h http.Header) { h.Set("Content-Type", "text/plain") }), 415},
		"no content type":       {body, hdr(body, func(h http.Header) { h.Del("Content-Type") }), 415},
		"oversize body":         {huge, hdr(huge, nil), 413},
		"signed object":         {[]byte(`{"token":"x"}`), hdr([]byte(`{"token":"x"}`), nil), 400},
		"signed null":           {[]byte(`null`), hdr([]byte(`null`), nil), 400},
		"signed trailing data":  {append(body, []byte("[]")...), hdr(append(body, []byte("[]")...), nil), 400},
		"signed bad utf8/json":  {[]byte("[\xff]"), hdr([]byte("[\xff]"), nil), 400},
		"signed too many":       {tooMany, hdr(tooMany, nil), 400},
		"signed wrong types":    {[]byte(`[{"token":1}]`), hdr([]byte(`[{"token":1}]`), nil), 400},
		"signed over, then cut": {body[:len(body)-1], hdr(body, nil), 401},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			rec := f.send(tt.body, tt.header)
			if rec.Code != tt.want {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.want, rec.Body)
			}
		})
	}
	req := httptest.NewRequest("GET", secretscan.Path, nil)
	rec := httptest.NewRecorder()
	f.h.ServeHTTP(rec, req)
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d", rec.Code)
	}
	if !strings.Contains(f.logs.String(), "signature") || strings.Contains(f.logs.String(), "tw_") {
		t.Errorf("refusals not logged, or logged with token material:\n%s", f.logs)
	}
	if len(f.leaks.revoked) != 0 || len(f.audit.recs) != 0 {
		t.Errorf("hostile reports revoked %d tokens, audited %d reports", len(f.leaks.revoked), len(f.audit.recs))
	}
}

// TestRevocationFailureAsksForARetry: a genuine token that could not be
// revoked answers 500 so GitHub sends the report again.
func TestRevocationFailureAsksForARetry(t *testing.T) {
	f := newFixture(t)
	f.leaks.fail = true
	body := alerts(f.genuine)
	if rec := f.send(body, f.signed(body)); rec.Code != http.StatusInternalServerError || strings.Contains(rec.Body.String(), "tw_") {
		t.Errorf("%d %s", rec.Code, rec.Body)
	}
	if logs := f.logs.String(); !strings.Contains(logs, "not fully handled") || strings.Contains(logs, "tw_") || strings.Contains(logs, f.genuine[len(f.genuine)-24:]) {
		t.Errorf("failure log missing or holds token material:\n%s", logs)
	}
}

// TestParseKeysRefuses: key documents GitHub would not serve.
func TestParseKeysRefuses(t *testing.T) {
	gh := newGitHub(t, "k")
	rsaLike := `{"public_keys":[{"key_identifier":"k","key":"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"}]}`
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&p384.PublicKey)
	p384doc, _ := json.Marshal(map[string]any{"public_keys": []map[string]any{{"key_identifier": "k", "key": string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}}})
	var doc map[string][]map[string]any
	json.Unmarshal(gh.keyDoc(t), &doc)
	doc["public_keys"] = append(doc["public_keys"], doc["public_keys"][0])
	dup, _ := json.Marshal(doc)
	for name, in := range map[string]string{
		"empty":         `{}`,
		"no keys":       `{"public_keys":[]}`,
		"not json":      `public_keys`,
		"bad pem":       rsaLike,
		"P-384":         string(p384doc),
		"duplicate id":  string(dup),
		"empty id":      strings.Replace(string(gh.keyDoc(t)), `"key_identifier":"k"`, `"key_identifier":""`, 1),
		"trailing junk": strings.Replace(string(gh.keyDoc(t)), `-----END PUBLIC KEY-----\n`, `-----END PUBLIC KEY-----\nxx`, 1),
	} {
		if _, err := secretscan.ParseKeys([]byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := secretscan.ParseKeys(gh.keyDoc(t)); err != nil {
		t.Errorf("GitHub's format refused: %v", err)
	}
}

// FuzzParseAlerts: the alert parser never panics and never accepts more
// than MaxAlerts or anything but an array.
func FuzzParseAlerts(f *testing.F) {
	f.Add(alerts("tw_a.b.c"))
	f.Add([]byte(`[]`))
	f.Add([]byte(`null`))
	f.Add([]byte(`[{"token":"x","type":"t","url":"u","source":"s","extra":1}]`))
	f.Add([]byte(`[{}] []`))
	f.Add([]byte("[\xff]"))
	f.Fuzz(func(t *testing.T, body []byte) {
		a, err := secretscan.ParseAlerts(body)
		if err == nil && (a == nil || len(a) > secretscan.MaxAlerts) {
			t.Fatalf("accepted %d alerts (nil %v)", len(a), a == nil)
		}
	})
}

// FuzzVerify: no header value or body makes signature verification panic
// or accept what GitHub's key did not sign.
func FuzzVerify(f *testing.F) {
	gh := newGitHub(f, "k")
	keys, err := secretscan.ParseKeys(gh.keyDoc(f))
	if err != nil {
		f.Fatal(err)
	}
	signedBody := []byte(`[{"token":"tw_x"}]`)
	sig := gh.sign(f, signedBody)
	f.Add("k", sig, signedBody)
	f.Add("k", "", []byte(`[]`))
	f.Add("", "MEUCIQ==", []byte(`[]`))
	f.Fuzz(func(t *testing.T, keyID, s string, body []byte) {
		if keys.Verify(keyID, s, body) == nil && (keyID != "k" || string(body) != string(signedBody)) {
			t.Fatalf("accepted a signature over %q by key %q", body, keyID)
		}
	})
}

// FuzzParseKeys: the key document parser never panics, and every key it
// accepts is P-256.
func FuzzParseKeys(f *testing.F) {
	f.Add(newGitHub(f, "k").keyDoc(f))
	f.Add([]byte(`{"public_keys":[]}`))
	f.Add([]byte(`{"public_keys":[{"key_identifier":"k","key":"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"}]}`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		keys, err := secretscan.ParseKeys(doc)
		if err != nil {
			return
		}
		for id, k := range keys {
			if id == "" || k.Curve != elliptic.P256() {
				t.Fatalf("accepted key %q on %v", id, k.Curve)
			}
		}
	})
}
