package policy_test

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/policy"
)

func prodVerifier(tb testing.TB) *policy.Verifier {
	return &policy.Verifier{Keys: keySet(testKey), Policy: loadPolicy(tb, "testdata/policy.yaml"), Env: "prod"}
}

func segments(tok string) (header, body, sig string) {
	parts := strings.Split(strings.TrimPrefix(tok, policy.TokenPrefix), ".")
	return parts[0], parts[1], parts[2]
}

// signSegments signs already-encoded segments as they are.
func signSegments(key policy.SigningKey, header, body string) string {
	input := header + "." + body
	return policy.TokenPrefix + input + "." + b64.EncodeToString(ed25519.Sign(key.Private, []byte(input)))
}

// nonCanonical sets padding bits in the last character of an unpadded
// base64url segment: it decodes to the same bytes under a lax decoder.
func nonCanonical(seg string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	if len(seg)%4 == 0 {
		panic("no padding bits in " + seg)
	}
	last := strings.IndexByte(alphabet, seg[len(seg)-1])
	return seg[:len(seg)-1] + string(alphabet[last|1])
}

// claimsMap is claims() as a JSON object, for claims Mint would not write.
func claimsMap(tb testing.TB, edit func(m map[string]any)) []byte {
	var m map[string]any
	if err := json.Unmarshal(claimsJSON(tb, claims()), &m); err != nil {
		tb.Fatal(err)
	}
	edit(m)
	return claimsJSON(tb, m)
}

func withClaims(edit func(c *policy.Claims)) policy.Claims {
	c := claims()
	edit(&c)
	return c
}

func TestMintVerifyRoundTrip(t *testing.T) {
	v := prodVerifier(t)
	c := withClaims(func(c *policy.Claims) {
		c.Scope, c.Tenant, c.Rotated = "orders:read orders:write", "acme", "bbbbbbbbbbbbbbbbbbbbbbbbbb"
	})
	tok := mint(t, testKey, c)
	if !strings.HasPrefix(tok, policy.TokenPrefix) || strings.Count(tok, ".") != 2 {
		t.Fatalf("token %q is not tw_ + compact JWS", tok)
	}
	var h map[string]string
	hdr, _, _ := segments(tok)
	raw, _ := b64.DecodeString(hdr)
	if err := json.Unmarshal(raw, &h); err != nil || h["alg"] != "EdDSA" || h["kid"] != testKey.ID {
		t.Errorf("header = %s, want alg EdDSA and kid %s", raw, testKey.ID)
	}
	got, verr := v.Verify(tok, testNow)
	if verr != nil {
		t.Fatalf("Verify: %v", verr)
	}
	want := &policy.Token{Claims: c, KeyID: testKey.ID, Scopes: []string{"orders:read", "orders:write"}, WireHash: policy.WireHash(tok)}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Verify = %+v, want %+v", got, want)
	}
	if !got.HasScope("orders:write") || got.HasScope("orders") || got.HasScope("") {
		t.Errorf("HasScope wrong for %v", got.Scopes)
	}
	if !got.ExpiresAt().Equal(testNow.Add(time.Hour)) {
		t.Errorf("ExpiresAt = %v", got.ExpiresAt())
	}
	// Ed25519 is deterministic: the same claims give the same token.
	if again := mint(t, testKey, c); again != tok {
		t.Errorf("Mint is not deterministic")
	}
}

func TestMintRefuses(t *testing.T) {
	tests := map[string]struct {
		key    policy.SigningKey
		claims policy.Claims
	}{
		"no key id":    {policy.SigningKey{Private: testKey.Private}, claims()},
		"no key":       {policy.SigningKey{ID: "k"}, claims()},
		"short key":    {policy.SigningKey{ID: "k", Private: testKey.Private[:10]}, claims()},
		"no jti":       {testKey, withClaims(func(c *policy.Claims) { c.ID = "" })},
		"no exp":       {testKey, withClaims(func(c *policy.Claims) { c.Expires = 0 })},
		"zero claims":  {testKey, policy.Claims{}},
		"zero key set": {policy.SigningKey{}, claims()},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if tok, err := policy.Mint(tt.key, tt.claims); err == nil {
				t.Errorf("Mint = %q, want an error", tok)
			}
		})
	}
}

// TestVerifySecurity is the table of crafted tokens: each must be refused
// with exactly this reason.
func TestVerifySecurity(t *testing.T) {
	pol := loadPolicy(t, "testdata/policy.yaml")
	good := mint(t, testKey, claims())
	hdr, body, sig := segments(good)
	c := claimsJSON(t, claims())
	edHeader := headerJSON("EdDSA", testKey.ID)
	hmacSig := func(input string) string {
		m := hmac.New(sha256.New, public(testKey))
		m.Write([]byte(input))
		return b64.EncodeToString(m.Sum(nil))
	}
	hsInput := b64.EncodeToString(headerJSON("HS256", testKey.ID)) + "." + body
	rsInput := b64.EncodeToString(headerJSON("RS256", testKey.ID)) + "." + body
	tamperedBody := b64.EncodeToString(claimsJSON(t, withClaims(func(c *policy.Claims) { c.Scope = "orders:read orders:write" })))
	paddedHeader := b64.EncodeToString(append([]byte(" "), edHeader...)) // 43 bytes: has padding bits
	bigSubject := withClaims(func(c *policy.Claims) { c.Subject = strings.Repeat("s", policy.MaxTokenBytes) })

	tests := map[string]struct {
		token string
		keys  *policy.KeySet // nil: testKey only
		env   string         // "": prod
		want  policy.Reason
	}{
		// alg is pinned to EdDSA.
		"alg none, no signature":                      {token: policy.TokenPrefix + b64.EncodeToString([]byte(`{"alg":"none"}`)) + "." + body + ".", want: policy.ReasonBadSignature},
		"alg none, kid and signature":                 {token: signRaw(testKey, headerJSON("none", testKey.ID), c), want: policy.ReasonBadSignature},
		"alg HS256 keyed with the Ed25519 public key": {token: policy.TokenPrefix + hsInput + "." + hmacSig(hsInput), want: policy.ReasonBadSignature},
		"alg RS256":                           {token: policy.TokenPrefix + rsInput + "." + b64.EncodeToString(make([]byte, 256)), want: policy.ReasonBadSignature},
		"alg RS256 with an Ed25519 signature": {token: signRaw(testKey, headerJSON("RS256", testKey.ID), c), want: policy.ReasonBadSignature},
		"alg eddsa in lower case":             {token: signRaw(testKey, headerJSON("eddsa", testKey.ID), c), want: policy.ReasonBadSignature},
		"alg missing":                         {token: signRaw(testKey, []byte(`{"kid":"k_test"}`), c), want: policy.ReasonBadSignature},
		// Keys.
		"unknown kid":                         {token: mint(t, otherKey, claims()), want: policy.ReasonUnknownKey},
		"kid missing":                         {token: signRaw(testKey, []byte(`{"alg":"EdDSA"}`), c), want: policy.ReasonUnknownKey},
		"signature from a retired key":        {token: mint(t, otherKey, claims()), keys: keySet(testKey), want: policy.ReasonUnknownKey},
		"no keys at all":                      {token: good, keys: policy.NewKeySet(nil), want: policy.ReasonUnknownKey},
		"kid names another trusted key":       {token: signRaw(otherKey, edHeader, c), keys: keySet(testKey, otherKey), want: policy.ReasonBadSignature},
		"tampered claims, original signature": {token: policy.TokenPrefix + hdr + "." + tamperedBody + "." + sig, want: policy.ReasonBadSignature},
		"tampered header, original signature": {token: policy.TokenPrefix + b64.EncodeToString(headerJSON("EdDSA", otherKey.ID)) + "." + body + "." + sig, keys: keySet(testKey, otherKey), want: policy.ReasonBadSignature},
		"signature of another token": {token: policy.TokenPrefix + hdr + "." + body + "." + func() string {
			_, _, s := segments(mint(t, testKey, withClaims(func(c *policy.Claims) { c.ID = "bbbbbbbbbbbbbbbbbbbbbbbbbb" })))
			return s
		}(), want: policy.ReasonBadSignature},
		"signature of 32 bytes": {token: policy.TokenPrefix + hdr + "." + body + "." + b64.EncodeToString(make([]byte, 32)), want: policy.ReasonMalformedToken},
		// Claims, each signed by the trusted key.
		"missing exp":    {token: signRaw(testKey, edHeader, claimsMap(t, func(m map[string]any) { delete(m, "exp") })), want: policy.ReasonMalformedToken},
		"missing iat":    {token: signRaw(testKey, edHeader, claimsMap(t, func(m map[string]any) { delete(m, "iat") })), want: policy.ReasonMalformedToken},
		"missing jti":    {token: signRaw(testKey, edHeader, claimsMap(t, func(m map[string]any) { delete(m, "jti") })), want: policy.ReasonMalformedToken},
		"missing sub":    {token: signRaw(testKey, edHeader, claimsMap(t, func(m map[string]any) { delete(m, "sub") })), want: policy.ReasonMalformedToken},
		"exp before iat": {token: mint(t, testKey, withClaims(func(c *policy.Claims) { c.Expires = c.IssuedAt - 1 })), want: policy.ReasonMalformedToken},
		"exp a string":   {token: signRaw(testKey, edHeader, claimsMap(t, func(m map[string]any) { m["exp"] = "tomorrow" })), want: policy.ReasonMalformedToken},
		"past exp": {token: mint(t, testKey, withClaims(func(c *policy.Claims) {
			c.IssuedAt, c.NotBefore, c.Expires = c.IssuedAt-7200, c.IssuedAt-7200, c.IssuedAt-30
		})), want: policy.ReasonExpired},
		"future nbf":                           {token: mint(t, testKey, withClaims(func(c *policy.Claims) { c.NotBefore = c.IssuedAt + 31 })), want: policy.ReasonNotYetValid},
		"future iat":                           {token: mint(t, testKey, withClaims(func(c *policy.Claims) { c.IssuedAt += 31; c.Expires += 31 })), want: policy.ReasonNotYetValid},
		"lifetime above class max_ttl":         {token: mint(t, testKey, withClaims(func(c *policy.Claims) { c.Expires = c.IssuedAt + 12*3600 + 1 })), want: policy.ReasonLifetimeExceedsPolicy},
		"lifetime above env max_ttl":           {token: mint(t, testKey, withClaims(func(c *policy.Claims) { c.Class, c.Scope, c.Expires = "admin", "admin:all", c.IssuedAt+24*3600+1 })), want: policy.ReasonLifetimeExceedsPolicy},
		"lifetime in the far future":           {token: mint(t, testKey, withClaims(func(c *policy.Claims) { c.Expires = math.MaxInt64 - 3600 })), want: policy.ReasonLifetimeExceedsPolicy},
		"lifetime overflowing with iat < 0":    {token: mint(t, testKey, withClaims(func(c *policy.Claims) { c.IssuedAt, c.NotBefore = math.MinInt64+1, 0 })), want: policy.ReasonMalformedToken},
		"wrong env":                            {token: mint(t, testKey, withClaims(func(c *policy.Claims) { c.Env = "dev" })), want: policy.ReasonWrongEnvironment},
		"right token, verifier of another env": {token: good, env: "dev", want: policy.ReasonWrongEnvironment},
		"class not allowed in env":             {token: mint(t, testKey, withClaims(func(c *policy.Claims) { c.Class = "sandbox" })), want: policy.ReasonWrongEnvironment},
		"unknown class":                        {token: mint(t, testKey, withClaims(func(c *policy.Claims) { c.Class = "root" })), want: policy.ReasonUnknownClass},
		"wrong issuer":                         {token: mint(t, testKey, withClaims(func(c *policy.Claims) { c.Issuer = "evil.example" })), want: policy.ReasonMalformedToken},
		"claims JSON, then another object":     {token: signRaw(testKey, edHeader, append(c[:len(c):len(c)], []byte(` {}`)...)), want: policy.ReasonMalformedToken},
		"claims JSON, then a brace":            {token: signRaw(testKey, edHeader, append(c[:len(c):len(c)], '}')), want: policy.ReasonMalformedToken},
		"claims JSON, then a bracket":          {token: signRaw(testKey, edHeader, append(c[:len(c):len(c)], ']')), want: policy.ReasonMalformedToken},
		"claims JSON, then text":               {token: signRaw(testKey, edHeader, append(c[:len(c):len(c)], 'x')), want: policy.ReasonMalformedToken},
		"claims JSON null":                     {token: signRaw(testKey, edHeader, []byte(`null`)), want: policy.ReasonMalformedToken},
		"claims JSON array":                    {token: signRaw(testKey, edHeader, []byte(`[]`)), want: policy.ReasonMalformedToken},
		"header JSON, then a brace":            {token: signRaw(testKey, append(edHeader[:len(edHeader):len(edHeader)], '}'), c), want: policy.ReasonMalformedToken},
		"header not JSON":                      {token: signRaw(testKey, []byte(`alg=EdDSA`), c), want: policy.ReasonMalformedToken},
		// The string form.
		"empty token":                                {token: "", want: policy.ReasonMalformedToken},
		"prefix only":                                {token: policy.TokenPrefix, want: policy.ReasonMalformedToken},
		"dots only":                                  {token: policy.TokenPrefix + "..", want: policy.ReasonMalformedToken},
		"missing tw_ prefix":                         {token: strings.TrimPrefix(good, policy.TokenPrefix), want: policy.ReasonMalformedToken},
		"upper-case prefix":                          {token: "TW_" + strings.TrimPrefix(good, policy.TokenPrefix), want: policy.ReasonMalformedToken},
		"Bearer kept in the token":                   {token: "Bearer " + good, want: policy.ReasonMalformedToken},
		"over 8 KiB":                                 {token: signRaw(testKey, edHeader, claimsJSON(t, bigSubject)), want: policy.ReasonMalformedToken},
		"two segments":                               {token: policy.TokenPrefix + hdr + "." + body, want: policy.ReasonMalformedToken},
		"extra segment":                              {token: good + "." + sig, want: policy.ReasonMalformedToken},
		"extra empty segment":                        {token: good + ".", want: policy.ReasonMalformedToken},
		"trailing byte after the signature":          {token: good + "A", want: policy.ReasonMalformedToken},
		"trailing bytes after the signature":         {token: good + "AAAA", want: policy.ReasonMalformedToken},
		"trailing padding":                           {token: good + "==", want: policy.ReasonMalformedToken},
		"trailing newline":                           {token: good + "\n", want: policy.ReasonMalformedToken},
		"trailing CRLF":                              {token: good + "\r\n", want: policy.ReasonMalformedToken},
		"trailing space":                             {token: good + " ", want: policy.ReasonMalformedToken},
		"trailing NUL":                               {token: good + "\x00", want: policy.ReasonMalformedToken},
		"newline inside the signature":               {token: good[:len(good)-10] + "\n" + good[len(good)-10:], want: policy.ReasonMalformedToken},
		"standard base64 alphabet":                   {token: policy.TokenPrefix + hdr + "." + body + "." + strings.NewReplacer("-", "+", "_", "/").Replace(sig) + "+/", want: policy.ReasonMalformedToken},
		"bad base64 in the header":                   {token: policy.TokenPrefix + "e!" + hdr[2:] + "." + body + "." + sig, want: policy.ReasonMalformedToken},
		"bad base64 in the claims":                   {token: policy.TokenPrefix + hdr + "." + "e!" + body[2:] + "." + sig, want: policy.ReasonMalformedToken},
		"bad base64 in the signature":                {token: policy.TokenPrefix + hdr + "." + body + "." + "!" + sig[1:], want: policy.ReasonMalformedToken},
		"bad base64 length in the header, signed":    {token: signSegments(testKey, hdr+"A", body), want: policy.ReasonMalformedToken},
		"bad base64 length in the claims, signed":    {token: signSegments(testKey, hdr, body+"A"), want: policy.ReasonMalformedToken},
		"non-canonical base64 in the header, signed": {token: signSegments(testKey, nonCanonical(paddedHeader), body), want: policy.ReasonMalformedToken},
		"non-canonical base64 in the claims, signed": {token: signSegments(testKey, hdr, nonCanonical(b64.EncodeToString(append(c[:len(c):len(c)], ' ', ' ')))), want: policy.ReasonMalformedToken},
		"non-canonical base64 in the signature":      {token: policy.TokenPrefix + hdr + "." + body + "." + nonCanonical(sig), want: policy.ReasonMalformedToken},
	}
	if len(tests["over 8 KiB"].token) <= policy.MaxTokenBytes {
		t.Fatal("the over-8-KiB case is too small")
	}
	if signSegments(testKey, paddedHeader, body) == "" || len(paddedHeader)%4 == 0 {
		t.Fatal("paddedHeader has no padding bits")
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			v := &policy.Verifier{Keys: keySet(testKey), Policy: pol, Env: "prod"}
			if tt.keys != nil {
				v.Keys = tt.keys
			}
			if tt.env != "" {
				v.Env = tt.env
			}
			tok, verr := v.Verify(tt.token, testNow)
			if verr == nil {
				t.Fatalf("Verify accepted %q: %+v", tt.token, tok)
			}
			if tok != nil {
				t.Errorf("Verify returned a token with error %v", verr)
			}
			if verr.Reason != tt.want {
				t.Errorf("Verify reason = %s (%s), want %s", verr.Reason, verr.Detail, tt.want)
			}
			if verr.Detail == "" || !strings.HasPrefix(verr.Error(), string(tt.want)+": ") {
				t.Errorf("error %q lacks reason or detail", verr.Error())
			}
		})
	}
	// The same good token passes, so each case fails for its own fault.
	if _, verr := prodVerifier(t).Verify(good, testNow); verr != nil {
		t.Fatalf("good token refused: %v", verr)
	}
	if _, verr := (&policy.Verifier{Keys: keySet(testKey), Env: "prod"}).Verify(good, testNow); verr == nil || verr.Reason != policy.ReasonInternalError {
		t.Errorf("Verify without a policy = %v, want internal_error", verr)
	}
}

// TestVerifyTimes checks the validity window under the default clock_skew
// (5s, nbf and iat) and exp_leeway (0: a token is refused the second it
// expires, and one second after), and under a policy that widens both. It
// attacks the old fixed 30 s skew, under which a 1-second token lived 31 s.
func TestVerifyTimes(t *testing.T) {
	tok := mint(t, testKey, claims()) // iat = nbf = testNow, exp = testNow + 1h
	data, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	widened, err := policy.Load("widened.yaml", append(data, "clock_skew: 30s\nexp_leeway: 10s\n"...))
	if err != nil {
		t.Fatal(err)
	}
	if p := loadPolicy(t, "testdata/policy.yaml"); p.ClockSkew() != policy.DefaultClockSkew || p.ExpLeeway() != 0 || policy.DefaultClockSkew != 5*time.Second {
		t.Fatalf("defaults: clock_skew %s, exp_leeway %s; want 5s and 0s", p.ClockSkew(), p.ExpLeeway())
	}
	tests := map[string]struct {
		policy *policy.Policy // nil: the test policy, with the defaults
		at     time.Time
		want   policy.Reason // "" when accepted
	}{
		"at iat":                             {nil, testNow, ""},
		"within skew before nbf":             {nil, testNow.Add(-5 * time.Second), ""},
		"beyond skew before nbf":             {nil, testNow.Add(-6 * time.Second), policy.ReasonNotYetValid},
		"just before exp":                    {nil, testNow.Add(time.Hour - time.Second), ""},
		"at exp":                             {nil, testNow.Add(time.Hour), policy.ReasonExpired},
		"one second after exp":               {nil, testNow.Add(time.Hour + time.Second), policy.ReasonExpired},
		"long after exp":                     {nil, testNow.Add(48 * time.Hour), policy.ReasonExpired},
		"widened: within clock_skew":         {widened, testNow.Add(-30 * time.Second), ""},
		"widened: beyond clock_skew":         {widened, testNow.Add(-31 * time.Second), policy.ReasonNotYetValid},
		"widened: at exp":                    {widened, testNow.Add(time.Hour), ""},
		"widened: last second of exp_leeway": {widened, testNow.Add(time.Hour + 9*time.Second), ""},
		"widened: at exp plus exp_leeway":    {widened, testNow.Add(time.Hour + 10*time.Second), policy.ReasonExpired},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			v := prodVerifier(t)
			if tt.policy != nil {
				v.Policy = tt.policy
			}
			_, verr := v.Verify(tok, tt.at)
			var got policy.Reason
			if verr != nil {
				got = verr.Reason
			}
			if got != tt.want {
				t.Errorf("Verify at %s = %q, want %q", tt.at.Sub(testNow), got, tt.want)
			}
		})
	}
}

func TestVerifyLimits(t *testing.T) {
	v := prodVerifier(t)
	tests := map[string]struct {
		claims policy.Claims
		env    string
		want   policy.Reason
	}{
		"class limit exactly":        {withClaims(func(c *policy.Claims) { c.Expires = c.IssuedAt + 12*3600 }), "prod", ""},
		"env limit exactly":          {withClaims(func(c *policy.Claims) { c.Class, c.Expires = "admin", c.IssuedAt+24*3600 }), "prod", ""},
		"class below env in dev":     {withClaims(func(c *policy.Claims) { c.Class, c.Env, c.Expires = "sandbox", "dev", c.IssuedAt+2*3600 }), "dev", ""},
		"sandbox above class in dev": {withClaims(func(c *policy.Claims) { c.Class, c.Env, c.Expires = "sandbox", "dev", c.IssuedAt+2*3600+1 }), "dev", policy.ReasonLifetimeExceedsPolicy},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			v := *v
			v.Env = tt.env
			_, verr := v.Verify(mint(t, testKey, tt.claims), testNow)
			var got policy.Reason
			if verr != nil {
				got = verr.Reason
			}
			if got != tt.want {
				t.Errorf("Verify = %v, want %q", verr, tt.want)
			}
		})
	}
}

func TestIssue(t *testing.T) {
	pol := loadPolicy(t, "testdata/policy.yaml")
	tests := map[string]struct {
		req        policy.IssueRequest
		wantScope  string
		wantTTL    time.Duration
		wantRefuse string // substring of the refusal; "" when issued
	}{
		"class defaults":           {req: policy.IssueRequest{Subject: "svc", Class: "service", Env: "prod"}, wantScope: "orders:read orders:write", wantTTL: time.Hour},
		"scope subset, deduped":    {req: policy.IssueRequest{Subject: "svc", Class: "service", Env: "prod", Scopes: []string{"orders:write", "orders:write"}}, wantScope: "orders:write", wantTTL: time.Hour},
		"ttl at the limit":         {req: policy.IssueRequest{Subject: "svc", Class: "service", Env: "prod", TTL: 12 * time.Hour}, wantScope: "orders:read orders:write", wantTTL: 12 * time.Hour},
		"tenant and rotation":      {req: policy.IssueRequest{Subject: "svc", Class: "admin", Env: "dev", Tenant: "acme", Rotated: "x"}, wantScope: "admin:all", wantTTL: time.Hour},
		"scope outside class":      {req: policy.IssueRequest{Subject: "svc", Class: "service", Env: "prod", Scopes: []string{"orders:read", "admin:all"}}, wantRefuse: `scope "admin:all" is outside class service`},
		"ttl above class limit":    {req: policy.IssueRequest{Subject: "svc", Class: "service", Env: "prod", TTL: 13 * time.Hour}, wantRefuse: "ttl 13h0m0s is above the limit of 12h0m0s for class service in prod"},
		"ttl above env limit":      {req: policy.IssueRequest{Subject: "svc", Class: "admin", Env: "prod", TTL: 25 * time.Hour}, wantRefuse: "above the limit of 24h0m0s"},
		"ttl below a second":       {req: policy.IssueRequest{Subject: "svc", Class: "service", Env: "prod", TTL: time.Millisecond}, wantRefuse: "at least 1s"},
		"negative ttl":             {req: policy.IssueRequest{Subject: "svc", Class: "service", Env: "prod", TTL: -time.Hour}, wantRefuse: "at least 1s"},
		"class not allowed in env": {req: policy.IssueRequest{Subject: "svc", Class: "sandbox", Env: "prod"}, wantRefuse: "class sandbox may not be issued in prod (allowed: dev)"},
		"unknown class":            {req: policy.IssueRequest{Subject: "svc", Class: "root", Env: "prod"}, wantRefuse: `unknown class "root" (the policy defines: admin, deployer, sandbox, service)`},
		"unknown environment":      {req: policy.IssueRequest{Subject: "svc", Class: "service", Env: "qa"}, wantRefuse: `unknown environment "qa"`},
		"no subject":               {req: policy.IssueRequest{Class: "service", Env: "prod"}, wantRefuse: "subject is required"},
		"subject with a space":     {req: policy.IssueRequest{Subject: "a b", Class: "service", Env: "prod"}, wantRefuse: "subject is required"},
		"subject too long":         {req: policy.IssueRequest{Subject: strings.Repeat("s", policy.MaxSubjectBytes+1), Class: "service", Env: "prod"}, wantRefuse: "subject is required"},
		"tenant with a newline":    {req: policy.IssueRequest{Subject: "svc", Tenant: "a\nb", Class: "service", Env: "prod"}, wantRefuse: "tenant:"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			c, err := pol.Issue(tt.req, testNow)
			if tt.wantRefuse != "" {
				var ie *policy.Refusal
				if err == nil || !strings.Contains(err.Error(), tt.wantRefuse) || !errorsAs(err, &ie) {
					t.Fatalf("Issue = %+v, %v; want an Refusal holding %q", c, err, tt.wantRefuse)
				}
				return
			}
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			if c.Scope != tt.wantScope || time.Duration(c.Expires-c.IssuedAt)*time.Second != tt.wantTTL {
				t.Errorf("Issue = scope %q ttl %ds, want %q %s", c.Scope, c.Expires-c.IssuedAt, tt.wantScope, tt.wantTTL)
			}
			if c.Issuer != "tokenwarden.test" || c.Subject != tt.req.Subject || c.Env != tt.req.Env || c.Class != tt.req.Class ||
				c.Tenant != tt.req.Tenant || c.Rotated != tt.req.Rotated || c.IssuedAt != testNow.Unix() || c.NotBefore != c.IssuedAt {
				t.Errorf("Issue claims = %+v", c)
			}
			if _, ok := policy.TokenIDKey(c.ID); !ok {
				t.Errorf("jti %q is not a NewTokenID", c.ID)
			}
			// What Issue grants, Verify accepts in that environment.
			v := &policy.Verifier{Keys: keySet(testKey), Policy: pol, Env: tt.req.Env}
			if _, verr := v.Verify(mint(t, testKey, c), testNow); verr != nil {
				t.Errorf("issued token refused: %v", verr)
			}
		})
	}
}

func errorsAs(err error, target **policy.Refusal) bool {
	ie, ok := err.(*policy.Refusal)
	*target = ie
	return ok
}

func TestTokenIDKey(t *testing.T) {
	enc := base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)
	seen := map[[16]byte]string{}
	for range 2000 {
		id := policy.NewTokenID()
		k, ok := policy.TokenIDKey(id)
		if !ok {
			t.Fatalf("TokenIDKey(%q) refused a NewTokenID", id)
		}
		if enc.EncodeToString(k[:]) != id {
			t.Fatalf("TokenIDKey(%q) = %x, which encodes back to %q", id, k, enc.EncodeToString(k[:]))
		}
		if other, dup := seen[k]; dup {
			t.Fatalf("%q and %q share a key", id, other)
		}
		seen[k] = id
	}
	id := policy.NewTokenID()
	tests := map[string]string{
		"empty":            "",
		"too short":        id[:25],
		"too long":         id + "a",
		"upper case":       strings.ToUpper(id),
		"digit 0":          "0" + id[1:],
		"digit 1":          "1" + id[1:],
		"digit 8":          "8" + id[1:],
		"padding":          id[:24] + "==",
		"padding bits set": id[:25] + "b",
		"uuid":             "123e4567-e89b-12d3-a456-426614174000",
		"non-ASCII":        id[:24] + "é",
		"space":            " " + id[1:],
	}
	for name, s := range tests {
		t.Run(name, func(t *testing.T) {
			if k, ok := policy.TokenIDKey(s); ok {
				t.Errorf("TokenIDKey(%q) = %x, want refused", s, k)
			}
		})
	}
	// Against encoding/base32 on strings of the right length over the
	// alphabet and a few bytes outside it: accepted exactly when the
	// decoder accepts it and it is the canonical encoding of its bytes.
	const chars = "abcdefghijklmnopqrstuvwxyz234567A0=-\xff"
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		b := make([]byte, 26)
		for i := range b {
			if rnd.IntN(50) == 0 {
				b[i] = chars[32+rnd.IntN(len(chars)-32)]
			} else {
				b[i] = chars[rnd.IntN(32)]
			}
		}
		s := string(b)
		raw, err := enc.DecodeString(s)
		want := err == nil && len(raw) == 16 && enc.EncodeToString(raw) == s
		k, ok := policy.TokenIDKey(s)
		if ok != want || ok && string(k[:]) != string(raw) {
			t.Fatalf("TokenIDKey(%q) = %x, %v; base32 says %x, %v", s, k, ok, raw, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { policy.TokenIDKey(id) }); n != 0 {
		t.Errorf("TokenIDKey allocates %v times", n)
	}
}

// TestWireHash pins the wire identity: the first 64 bits of the token's
// signature, read from the 11 characters that start 86 before its end.
func TestWireHash(t *testing.T) {
	tok := mint(t, testKey, claims())
	sig, err := base64.RawURLEncoding.DecodeString(tok[strings.LastIndexByte(tok, '.')+1:])
	if err != nil || len(sig) != ed25519.SignatureSize {
		t.Fatalf("signature segment: %d bytes, %v", len(sig), err)
	}
	tests := map[string]struct {
		in   string
		want uint64
	}{
		"minted token: first 8 signature bytes":   {tok, binary.BigEndian.Uint64(sig)},
		"empty":                                   {"", 0},
		"short token: the whole string":           {"B", 1 << 58},
		"short token: missing chars are 0":        {"AB", 1 << 52},
		"short token: dots are not special":       {"x.AB", 49<<58 | 1<<40},
		"eleventh character's top 4 bits":         {"AAAAAAAAAAE", 1},
		"eleventh character's low 2 bits":         {"AAAAAAAAAAD", 0},
		"only 11 characters count":                {"AAAAAAAAAAA_____", 0},
		"last character values":                   {"_-__________", ^uint64(0) &^ (1 << 52)},
		"bytes outside base64url count as 0":      {"~+/=\x00\xff!.AAAAA", 0},
		"86 from the end, not after the last dot": {"tw_h.c.AAAA" + "B" + strings.Repeat("A", 85), 1 << 58},
		"the first of the last 86":                {"x" + "B" + strings.Repeat("A", 85), 1 << 58},
		"87 characters: the first is ignored":     {"B" + strings.Repeat("A", 86), 0},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := policy.WireHash(tt.in); got != tt.want {
				t.Errorf("WireHash(%q) = %#016x, want %#016x", tt.in, got, tt.want)
			}
		})
	}
	if n := testing.AllocsPerRun(100, func() { wireHashSink = policy.WireHash(tok) }); n != 0 {
		t.Errorf("WireHash allocates %v times", n)
	}
	if policy.LeakHash("x") != sha256.Sum256([]byte("x")) {
		t.Error("LeakHash is not sha256")
	}
}

// TestWireHashIsTheSignature attacks the identity: header and claims altered
// around a victim's signature keep the victim's identity (and Verify refuses
// the result), while any token minted by the key, and any change to the
// first 64 signature bits, has an identity of its own.
func TestWireHashIsTheSignature(t *testing.T) {
	v := prodVerifier(t)
	victim := mint(t, testKey, claims())
	dot := strings.LastIndexByte(victim, '.')
	victimSig := victim[dot+1:]

	forged := []string{
		policy.TokenPrefix + b64.EncodeToString([]byte(`{"alg":"EdDSA"}`)) + ".e30." + victimSig,
		"tw_garbage." + victimSig,
		victim[:10] + "x" + victim[11:],
	}
	for _, f := range forged {
		if policy.WireHash(f) != policy.WireHash(victim) {
			t.Errorf("%q: a token carrying the victim's signature has another identity", f)
		}
		if _, verr := v.Verify(f, testNow); verr == nil {
			t.Errorf("%q: Verify accepted a token with a borrowed signature", f)
		}
	}
	// Flip each of the first 64 signature bits in turn: each gives
	// another identity.
	for bit := 0; bit < 64; bit++ {
		raw, _ := base64.RawURLEncoding.DecodeString(victimSig)
		raw[bit/8] ^= 0x80 >> (bit % 8)
		if policy.WireHash(victim[:dot+1]+base64.RawURLEncoding.EncodeToString(raw)) == policy.WireHash(victim) {
			t.Errorf("flipping signature bit %d keeps the identity", bit)
		}
	}
	// 2,000 tokens minted for the same subject: 2,000 identities.
	seen := make(map[uint64]bool)
	for i := 0; i < 2000; i++ {
		c := claims()
		c.ID = policy.NewTokenID()
		id := policy.WireHash(mint(t, testKey, c))
		if seen[id] {
			t.Fatalf("token %d repeats an identity", i)
		}
		seen[id] = true
	}
}

func TestBearerToken(t *testing.T) {
	tests := map[string]struct{ header, want string }{
		"bearer":           {"Bearer tw_x.y.z", "tw_x.y.z"},
		"lower-case":       {"bearer tw_x.y.z", "tw_x.y.z"},
		"spaces around":    {"Bearer   tw_x.y.z  ", "tw_x.y.z"},
		"basic":            {"Basic dXNlcjpwYXNz", ""},
		"scheme only":      {"Bearer", ""},
		"scheme and space": {"Bearer ", ""},
		"empty":            {"", ""},
		"no space":         {"Bearertw_x", ""},
		// Only SP separates scheme and token (RFC 6750, and the kernel
		// side's parser): other whitespace stays and makes the token
		// malformed, so nothing the kernel cannot see is allowed.
		"tab before token":  {"Bearer \ttw_x.y.z", "\ttw_x.y.z"},
		"nbsp before token": {"Bearer \u00a0tw_x.y.z", "\u00a0tw_x.y.z"},
		"vtab before token": {"Bearer \vtw_x.y.z", "\vtw_x.y.z"},
		"tab after scheme":  {"Bearer\ttw_x.y.z", ""},
		"trailing tab":      {"Bearer tw_x.y.z \t", "tw_x.y.z"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := policy.BearerToken(tt.header); got != tt.want {
				t.Errorf("BearerToken(%q) = %q, want %q", tt.header, got, tt.want)
			}
		})
	}
}

// FuzzVerify mutates real tokens. Verify must never panic and must accept
// only what the test key minted: any accepted string is exactly what Mint
// writes for the claims it carries. Forging a signature is out of reach of
// a fuzzer, so an acceptance of anything else means the parser let bytes
// change without the signature noticing.
func FuzzVerify(f *testing.F) {
	for _, c := range []policy.Claims{
		claims(),
		withClaims(func(c *policy.Claims) { c.Scope, c.Tenant = "orders:read orders:write", "acme" }),
		withClaims(func(c *policy.Claims) { c.Expires = c.IssuedAt + 12*3600 + 1 }),
		withClaims(func(c *policy.Claims) { c.Env = "dev" }),
	} {
		f.Add(mint(f, testKey, c))
	}
	f.Add(mint(f, otherKey, claims()))
	f.Add(signRaw(testKey, headerJSON("none", testKey.ID), claimsJSON(f, claims())))
	f.Add("")
	f.Add("tw_..")
	pol := loadPolicy(f, "testdata/policy.yaml")
	verifiers := []*policy.Verifier{
		{Keys: keySet(testKey), Policy: pol, Env: "prod"},
		{Keys: keySet(testKey, otherKey), Policy: pol, Env: "dev"},
		{Keys: nil, Policy: pol, Env: "prod"},
		{Keys: keySet(testKey), Policy: nil, Env: "prod"},
	}
	f.Fuzz(func(t *testing.T, token string) {
		for _, v := range verifiers {
			tok, verr := v.Verify(token, testNow)
			if (tok == nil) == (verr == nil) {
				t.Fatalf("Verify returned token %v and error %v", tok, verr)
			}
			if verr != nil {
				if !validReason(verr.Reason) {
					t.Fatalf("unknown reason %q", verr.Reason)
				}
				continue
			}
			key := testKey
			if tok.KeyID == otherKey.ID {
				key = otherKey
			}
			if again, err := policy.Mint(key, tok.Claims); err != nil || again != token {
				t.Fatalf("accepted a token Mint would not write:\n%q\nMint writes:\n%q", token, again)
			}
			if tok.WireHash != policy.WireHash(token) {
				t.Fatalf("WireHash mismatch")
			}
		}
	})
}

func validReason(r policy.Reason) bool {
	for _, x := range policy.Reasons {
		if r == x {
			return true
		}
	}
	return false
}

// wireHashSink keeps the compiler from dropping a call measured for allocations.
var wireHashSink uint64
