package policy_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/tokenwarden/tokenwarden/agent/revocation"
	"github.com/tokenwarden/tokenwarden/policy"
)

var (
	clientEd = ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	clientEC = func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	}()
	thiefEd = ed25519.NewKeyFromSeed(bytes32(9))
)

func bytes32(b byte) []byte {
	s := make([]byte, 32)
	for i := range s {
		s[i] = b
	}
	return s
}

func publicJWK(t testing.TB, k crypto.Signer) map[string]any {
	t.Helper()
	b, err := jose.JSONWebKey{Key: k.Public()}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func jktOf(t testing.TB, k crypto.Signer) string {
	t.Helper()
	b, _ := json.Marshal(publicJWK(t, k))
	jkt, err := policy.JWKThumbprint(b)
	if err != nil {
		t.Fatal(err)
	}
	return jkt
}

// craft signs header and claims with key as a compact JWS, however wrong
// they are: how an attacker builds a proof.
func craft(t testing.TB, key crypto.Signer, header, claims map[string]any) string {
	t.Helper()
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	input := b64.EncodeToString(h) + "." + b64.EncodeToString(c)
	var sig []byte
	switch k := key.(type) {
	case ed25519.PrivateKey:
		sig = ed25519.Sign(k, []byte(input))
	case *ecdsa.PrivateKey:
		sum := sha256.Sum256([]byte(input))
		r, s, err := ecdsa.Sign(rand.Reader, k, sum[:])
		if err != nil {
			t.Fatal(err)
		}
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
	}
	return input + "." + b64.EncodeToString(sig)
}

const dpopURL = "https://orders/orders/1"

// proofParts are a valid proof's header and claims for token, by key.
func proofParts(t testing.TB, key crypto.Signer, token string, jti string) (map[string]any, map[string]any) {
	alg := "EdDSA"
	if _, ok := key.(*ecdsa.PrivateKey); ok {
		alg = "ES256"
	}
	return map[string]any{"typ": "dpop+jwt", "alg": alg, "jwk": publicJWK(t, key)},
		map[string]any{"jti": jti, "htm": "GET", "htu": dpopURL, "iat": testNow.Unix(), "ath": policy.AccessTokenHash(token)}
}

// TestDPoPProofRules has one crafted proof per check of RFC 9449 section
// 4.3 that applies to a resource server (the nonce check does not: this
// server issues no nonces), each refused with its reason; and the valid
// proofs, ES256 and EdDSA, accepted.
func TestDPoPProofRules(t *testing.T) {
	const token = "tw_the.access.token"
	req := policy.ProofRequest{Method: "GET", Scheme: "https", Host: "orders", Path: "/orders/1?page=2", Token: token}
	privJSON, err := jose.JSONWebKey{Key: clientEC}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var ecJWKWithD map[string]any
	if err := json.Unmarshal(privJSON, &ecJWKWithD); err != nil || ecJWKWithD["d"] == nil {
		t.Fatalf("private JWK %s: %v", privJSON, err)
	}
	tests := map[string]struct {
		key    crypto.Signer
		edit   func(h, c map[string]any)
		raw    string // a proof string instead of a crafted one
		jkt    crypto.Signer
		reason policy.Reason
	}{
		"valid EdDSA":                  {key: clientEd, reason: ""},
		"valid ES256":                  {key: clientEC, jkt: clientEC, reason: ""},
		"htu with query and fragment":  {key: clientEd, edit: func(h, c map[string]any) { c["htu"] = dpopURL + "?x=1#f" }},
		"htu normalised (case, port)":  {key: clientEd, edit: func(h, c map[string]any) { c["htu"] = "HTTPS://Orders:443/orders/1" }},
		"1: two proofs (joined)":       {raw: "RAW,RAW", reason: policy.ReasonDPoPInvalid},
		"1: no proof":                  {raw: "-", reason: policy.ReasonDPoPInvalid},
		"2: not a JWT":                 {raw: "not-a-jwt", reason: policy.ReasonDPoPInvalid},
		"2: two segments":              {raw: "eyJhbGciOiJFZERTQSJ9.e30", reason: policy.ReasonDPoPInvalid},
		"2: trailing data in header":   {raw: "TRAILING", reason: policy.ReasonDPoPInvalid},
		"3: no typ":                    {key: clientEd, edit: func(h, c map[string]any) { delete(h, "typ") }, reason: policy.ReasonDPoPInvalid},
		"3: no alg":                    {key: clientEd, edit: func(h, c map[string]any) { delete(h, "alg") }, reason: policy.ReasonDPoPInvalid},
		"3: no jwk":                    {key: clientEd, edit: func(h, c map[string]any) { delete(h, "jwk") }, reason: policy.ReasonDPoPInvalid},
		"3: no jti":                    {key: clientEd, edit: func(h, c map[string]any) { delete(c, "jti") }, reason: policy.ReasonDPoPInvalid},
		"3: no htm":                    {key: clientEd, edit: func(h, c map[string]any) { delete(c, "htm") }, reason: policy.ReasonDPoPInvalid},
		"3: no htu":                    {key: clientEd, edit: func(h, c map[string]any) { delete(c, "htu") }, reason: policy.ReasonDPoPInvalid},
		"3: no iat":                    {key: clientEd, edit: func(h, c map[string]any) { delete(c, "iat") }, reason: policy.ReasonDPoPInvalid},
		"3: iat not a number":          {key: clientEd, edit: func(h, c map[string]any) { c["iat"] = "now" }, reason: policy.ReasonDPoPInvalid},
		"3: jti too long":              {key: clientEd, edit: func(h, c map[string]any) { c["jti"] = strings.Repeat("j", 129) }, reason: policy.ReasonDPoPInvalid},
		"4: typ JWT":                   {key: clientEd, edit: func(h, c map[string]any) { h["typ"] = "JWT" }, reason: policy.ReasonDPoPInvalid},
		"5: alg none":                  {key: clientEd, edit: func(h, c map[string]any) { h["alg"] = "none" }, reason: policy.ReasonDPoPInvalid},
		"5: alg HS256":                 {key: clientEd, edit: func(h, c map[string]any) { h["alg"] = "HS256" }, reason: policy.ReasonDPoPInvalid},
		"5: alg RS256":                 {key: clientEd, edit: func(h, c map[string]any) { h["alg"] = "RS256" }, reason: policy.ReasonDPoPInvalid},
		"5: alg ES256 with an Ed key":  {key: clientEd, edit: func(h, c map[string]any) { h["alg"] = "ES256" }, reason: policy.ReasonDPoPInvalid},
		"5: symmetric jwk":             {key: clientEd, edit: func(h, c map[string]any) { h["jwk"] = map[string]any{"kty": "oct", "k": "c2VjcmV0"} }, reason: policy.ReasonDPoPInvalid},
		"6: signed by another key":     {key: thiefEd, edit: func(h, c map[string]any) { h["jwk"] = publicJWK(t, clientEd) }, reason: policy.ReasonDPoPInvalid},
		"7: jwk is a private key":      {key: clientEC, jkt: clientEC, edit: func(h, c map[string]any) { h["jwk"] = ecJWKWithD }, reason: policy.ReasonDPoPInvalid},
		"8: htm another method":        {key: clientEd, edit: func(h, c map[string]any) { c["htm"] = "POST" }, reason: policy.ReasonDPoPInvalid},
		"8: htm lower case":            {key: clientEd, edit: func(h, c map[string]any) { c["htm"] = "get" }, reason: policy.ReasonDPoPInvalid},
		"9: htu another path":          {key: clientEd, edit: func(h, c map[string]any) { c["htu"] = "https://orders/orders/2" }, reason: policy.ReasonDPoPInvalid},
		"9: htu another host":          {key: clientEd, edit: func(h, c map[string]any) { c["htu"] = "https://evil/orders/1" }, reason: policy.ReasonDPoPInvalid},
		"9: htu another scheme":        {key: clientEd, edit: func(h, c map[string]any) { c["htu"] = "http://orders/orders/1" }, reason: policy.ReasonDPoPInvalid},
		"9: htu another port":          {key: clientEd, edit: func(h, c map[string]any) { c["htu"] = "https://orders:8443/orders/1" }, reason: policy.ReasonDPoPInvalid},
		"9: htu relative":              {key: clientEd, edit: func(h, c map[string]any) { c["htu"] = "/orders/1" }, reason: policy.ReasonDPoPInvalid},
		"9: htu with user info":        {key: clientEd, edit: func(h, c map[string]any) { c["htu"] = "https://u@orders/orders/1" }, reason: policy.ReasonDPoPInvalid},
		"11: iat too old":              {key: clientEd, edit: func(h, c map[string]any) { c["iat"] = testNow.Add(-61 * time.Second).Unix() }, reason: policy.ReasonDPoPInvalid},
		"11: iat in the future":        {key: clientEd, edit: func(h, c map[string]any) { c["iat"] = testNow.Add(61 * time.Second).Unix() }, reason: policy.ReasonDPoPInvalid},
		"12: no ath":                   {key: clientEd, edit: func(h, c map[string]any) { delete(c, "ath") }, reason: policy.ReasonDPoPInvalid},
		"12: ath of another token":     {key: clientEd, edit: func(h, c map[string]any) { c["ath"] = policy.AccessTokenHash("tw_other") }, reason: policy.ReasonDPoPInvalid},
		"13: valid proof, another key": {key: thiefEd, reason: policy.ReasonSenderMismatch},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			proof := tt.raw
			if proof == "" || strings.Contains(proof, "RAW") || proof == "TRAILING" {
				k := tt.key
				if k == nil {
					k = clientEd
				}
				h, c := proofParts(t, k, token, policy.NewTokenID())
				if tt.edit != nil {
					tt.edit(h, c)
				}
				valid := craft(t, k, h, c)
				switch proof {
				case "":
					proof = valid
				case "TRAILING":
					hb, _ := json.Marshal(h)
					proof = b64.EncodeToString(append(hb, '}')) + valid[strings.IndexByte(valid, '.'):]
				default:
					proof = strings.ReplaceAll(proof, "RAW", valid)
				}
			} else if proof == "-" {
				proof = ""
			}
			jkt := tt.jkt
			if jkt == nil {
				jkt = clientEd
			}
			c := policy.NewDPoPChecker(0, 0)
			if got := c.Check(proof, jktOf(t, jkt), req, testNow); got != tt.reason {
				t.Fatalf("Check = %q, want %q", got, tt.reason)
			}
			if tt.reason == "" {
				if got := c.Check(proof, jktOf(t, jkt), req, testNow.Add(time.Second)); got != policy.ReasonDPoPReplayed {
					t.Fatalf("replayed: Check = %q, want dpop_replayed", got)
				}
			}
		})
	}
}

// A full replay cache refuses new proofs rather than forget old ones
// still in their window, and makes room as they age out.
func TestDPoPReplayCacheBounded(t *testing.T) {
	const token = "tw_t"
	req := policy.ProofRequest{Method: "GET", Scheme: "https", Host: "orders", Path: "/orders/1", Token: token}
	c := policy.NewDPoPChecker(time.Minute, 2)
	jkt := jktOf(t, clientEd)
	for i := 0; i < 2; i++ {
		p, err := policy.MakeDPoPProof(clientEd, "GET", dpopURL, token, testNow)
		if err != nil {
			t.Fatal(err)
		}
		if r := c.Check(p, jkt, req, testNow); r != "" {
			t.Fatalf("proof %d: %s", i, r)
		}
	}
	p, _ := policy.MakeDPoPProof(clientEd, "GET", dpopURL, token, testNow)
	if r := c.Check(p, jkt, req, testNow); r != policy.ReasonDPoPReplayed {
		t.Fatalf("full cache: %q, want dpop_replayed", r)
	}
	later := testNow.Add(3 * time.Minute)
	p, _ = policy.MakeDPoPProof(clientEd, "GET", dpopURL, token, later)
	if r := c.Check(p, jkt, req, later); r != "" {
		t.Fatalf("after the window: %q", r)
	}
}

func TestDPoPIssueAndDecide(t *testing.T) {
	data := strings.Replace(loadPolicyText(t), "  sandbox:", "  client:\n    scopes: [orders:read]\n    default_ttl: 1h\n    max_ttl: 12h\n    environments: [prod]\n    binding: dpop\n  sandbox:", 1)
	p, err := policy.Load("dpop.yaml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	jkt := jktOf(t, clientEd)
	if _, err := p.Issue(policy.IssueRequest{Subject: "c", Class: "client", Env: "prod"}, testNow); err == nil {
		t.Fatal("a dpop class issued a token without a key")
	}
	if _, err := p.Issue(policy.IssueRequest{Subject: "c", Class: "client", Env: "prod", BindJKT: "short"}, testNow); err == nil {
		t.Fatal("a malformed jkt was accepted")
	}
	if _, err := p.Issue(policy.IssueRequest{Subject: "c", Class: "service", Env: "prod", BindJKT: jkt}, testNow); err == nil {
		t.Fatal("a bearer class took a key binding")
	}
	c, err := p.Issue(policy.IssueRequest{Subject: "c", Class: "client", Env: "prod", BindJKT: jkt}, testNow)
	if err != nil || c.Cnf == nil || c.Cnf.JKT != jkt {
		t.Fatalf("Issue = %+v, %v", c.Cnf, err)
	}
	token := mint(t, testKey, c)
	bearerTok := mint(t, testKey, claims())
	cache, _ := revocation.NewCache(64)
	d := policy.NewDecider(policy.DeciderConfig{Env: "prod", Policy: p, Keys: keySet(testKey), Cache: cache, Revocations: revocation.NewSet()})
	proof := func(key crypto.Signer, method, url, tok string) string {
		pr, err := policy.MakeDPoPProof(key, method, url, tok, testNow)
		if err != nil {
			t.Fatal(err)
		}
		return pr
	}
	legit := proof(clientEd, "GET", dpopURL, token)
	tests := []struct {
		name   string
		req    policy.Request
		reason policy.Reason
	}{
		{"the key holder", dpopReq(token, proof(clientEd, "GET", dpopURL, token)), policy.ReasonAllowed},
		{"the key holder again, fresh proof", dpopReq(token, legit), policy.ReasonAllowed},
		{"replayed proof", dpopReq(token, legit), policy.ReasonDPoPReplayed},
		{"stolen token, no key: own proof", dpopReq(token, proof(thiefEd, "GET", dpopURL, token)), policy.ReasonSenderMismatch},
		{"stolen token as a bearer token", get(token, "/orders/1"), policy.ReasonDPoPInvalid},
		{"stolen token, no proof", dpopReq(token, ""), policy.ReasonDPoPInvalid},
		{"proof for another URL", dpopReq(token, proof(clientEd, "GET", "https://orders/orders/2", token)), policy.ReasonDPoPInvalid},
		{"proof for another method", dpopReq(token, proof(clientEd, "DELETE", dpopURL, token)), policy.ReasonDPoPInvalid},
		{"stale proof", dpopReq(token, craftAt(t, token, testNow.Add(-2*time.Minute))), policy.ReasonDPoPInvalid},
		{"bearer token with the DPoP scheme", dpopReq(bearerTok, proof(clientEd, "GET", dpopURL, bearerTok)), policy.ReasonDPoPInvalid},
		{"bearer token as bearer", get(bearerTok, "/orders/1"), policy.ReasonAllowed},
	}
	for _, tt := range tests {
		if dec := d.Decide(tt.req, testNow); dec.Reason != tt.reason {
			t.Errorf("%s: Decide = %s, want %s", tt.name, dec.Reason, tt.reason)
		}
	}
}

func craftAt(t *testing.T, token string, at time.Time) string {
	pr, err := policy.MakeDPoPProof(clientEd, "GET", dpopURL, token, at)
	if err != nil {
		t.Fatal(err)
	}
	return pr
}

func dpopReq(token, proof string) policy.Request {
	r := get(token, "/orders/1")
	r.DPoP, r.Proof, r.Scheme = true, proof, "https"
	return r
}

func loadPolicyText(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// FuzzDPoPProof: the proof parser never panics, and what it accepts is a
// proof whose signature verified under its own key, with every claim the
// RFC requires.
func FuzzDPoPProof(f *testing.F) {
	for _, k := range []crypto.Signer{clientEd, clientEC} {
		p, err := policy.MakeDPoPProof(k, "GET", dpopURL, "tw_token", testNow)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p)
	}
	f.Add("eyJ0eXAiOiJkcG9wK2p3dCJ9.e30.")
	f.Add("..")
	f.Add("a.b.c,d.e.f")
	f.Fuzz(func(t *testing.T, proof string) {
		p, why := policy.ParseDPoPProof(proof)
		if (p == nil) == (why == "") {
			t.Fatalf("ParseDPoPProof(%q) = %v, %q", proof, p, why)
		}
		if p != nil && (p.JTI == "" || p.HTM == "" || p.HTU == "" || p.IAT <= 0 || policy.ValidJKT(p.JKT) != "") {
			t.Fatalf("accepted an incomplete proof: %+v", p)
		}
	})
}
