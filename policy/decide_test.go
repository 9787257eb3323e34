package policy_test

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/revocation"
	"github.com/tokenwarden/tokenwarden/policy"
)

func TestReasonStatusAndChallenge(t *testing.T) {
	const realm = `Bearer realm="tokenwarden"`
	invalid := func(r policy.Reason) string {
		return realm + `, error="invalid_token", error_description="` + string(r) + `"`
	}
	scope := func(r policy.Reason) string {
		return realm + `, error="insufficient_scope", error_description="` + string(r) + `"`
	}
	tests := map[policy.Reason]struct {
		status    int
		challenge string
	}{
		policy.ReasonAllowed:               {http.StatusOK, ""},
		policy.ReasonPublicRoute:           {http.StatusOK, ""},
		policy.ReasonMissingToken:          {http.StatusUnauthorized, realm}, // RFC 6750 3.1: no error code without credentials
		policy.ReasonMalformedToken:        {http.StatusUnauthorized, invalid(policy.ReasonMalformedToken)},
		policy.ReasonBadSignature:          {http.StatusUnauthorized, invalid(policy.ReasonBadSignature)},
		policy.ReasonUnknownKey:            {http.StatusUnauthorized, invalid(policy.ReasonUnknownKey)},
		policy.ReasonExpired:               {http.StatusUnauthorized, invalid(policy.ReasonExpired)},
		policy.ReasonNotYetValid:           {http.StatusUnauthorized, invalid(policy.ReasonNotYetValid)},
		policy.ReasonLifetimeExceedsPolicy: {http.StatusUnauthorized, invalid(policy.ReasonLifetimeExceedsPolicy)},
		policy.ReasonUnknownClass:          {http.StatusUnauthorized, invalid(policy.ReasonUnknownClass)},
		policy.ReasonRevoked:               {http.StatusUnauthorized, invalid(policy.ReasonRevoked)},
		policy.ReasonWrongEnvironment:      {http.StatusForbidden, scope(policy.ReasonWrongEnvironment)},
		policy.ReasonInsufficientScope:     {http.StatusForbidden, scope(policy.ReasonInsufficientScope)},
		policy.ReasonNoMatchingRoute:       {http.StatusForbidden, scope(policy.ReasonNoMatchingRoute)},
		policy.ReasonInternalError:         {http.StatusForbidden, realm}, // nothing the client can fix
		policy.ReasonProxyMisconfigured:    {http.StatusForbidden, realm}, // nor here: the proxy's configuration is at fault
		policy.ReasonSenderMismatch:        {http.StatusUnauthorized, invalid(policy.ReasonSenderMismatch) + `, DPoP algs="ES256 EdDSA", error="invalid_token", error_description="sender_mismatch"`},
		policy.ReasonDPoPInvalid:           {http.StatusUnauthorized, `DPoP algs="ES256 EdDSA", error="invalid_dpop_proof", error_description="dpop_invalid"`},
		policy.ReasonDPoPReplayed:          {http.StatusUnauthorized, `DPoP algs="ES256 EdDSA", error="invalid_dpop_proof", error_description="dpop_replayed"`},
		policy.ReasonStoreUnavailable:      {http.StatusServiceUnavailable, ""}, // nothing about the token: no challenge
	}
	if len(tests) != len(policy.Reasons) {
		t.Errorf("the table has %d reasons, policy.Reasons %d", len(tests), len(policy.Reasons))
	}
	for _, r := range policy.Reasons {
		tt, ok := tests[r]
		if !ok {
			t.Errorf("reason %s is not in the table", r)
			continue
		}
		t.Run(string(r), func(t *testing.T) {
			if got := r.Status(); got != tt.status {
				t.Errorf("Status = %d, want %d", got, tt.status)
			}
			if got := r.Challenge(); got != tt.challenge {
				t.Errorf("Challenge = %s, want %s", got, tt.challenge)
			}
			if msg := r.Message(); (msg == "") != (tt.status == http.StatusOK) {
				t.Errorf("Message = %q", msg)
			}
		})
	}
}

// countingCache wraps a TokenCache and counts what Decide asks of it.
type countingCache struct {
	inner              policy.TokenCache
	hits, misses, adds atomic.Int64
}

func (c *countingCache) Get(token string, now time.Time) (*policy.Token, bool) {
	t, ok := c.inner.Get(token, now)
	if ok {
		c.hits.Add(1)
	} else {
		c.misses.Add(1)
	}
	return t, ok
}

func (c *countingCache) Add(token string, t *policy.Token) {
	c.adds.Add(1)
	c.inner.Add(token, t)
}

// stickyCache is a broken cache: it returns what it was given, whatever the
// time. Decide must not trust it with expiry.
type stickyCache struct{ tokens map[string]*policy.Token }

func (c *stickyCache) Get(token string, _ time.Time) (*policy.Token, bool) {
	t, ok := c.tokens[token]
	return t, ok
}
func (c *stickyCache) Add(token string, t *policy.Token) { c.tokens[token] = t }

type fixture struct {
	decider *policy.Decider
	set     *revocation.Set
	cache   *countingCache
}

func newFixture(tb testing.TB) fixture {
	tb.Helper()
	lru, err := revocation.NewCache(1000)
	if err != nil {
		tb.Fatal(err)
	}
	f := fixture{set: revocation.NewSet(), cache: &countingCache{inner: lru}}
	f.decider = policy.NewDecider(policy.DeciderConfig{
		Env: "prod", Policy: loadPolicy(tb, "testdata/policy.yaml"), Keys: keySet(testKey),
		Cache: f.cache, Revocations: f.set,
	})
	return f
}

func get(token, path string) policy.Request {
	return policy.Request{Token: token, Method: "GET", Host: "orders", Path: path}
}

func TestDecide(t *testing.T) {
	read := mint(t, testKey, withClaims(func(c *policy.Claims) { c.Tenant = "acme" }))
	tests := map[string]struct {
		req    policy.Request
		reason policy.Reason
		status int
		rule   string
	}{
		"allowed":                  {get(read, "/orders/42"), policy.ReasonAllowed, 200, "orders#0"},
		"allowed, host with port":  {policy.Request{Token: read, Method: "GET", Host: "Orders.Default.Svc.Cluster.Local:80", Path: "/orders/42?x=1"}, policy.ReasonAllowed, 200, "orders#0"},
		"public route":             {get("", "/healthz"), policy.ReasonPublicRoute, 200, "orders#2"},
		"public route, bad token":  {get("garbage", "/healthz"), policy.ReasonPublicRoute, 200, "orders#2"},
		"missing token":            {get("", "/orders/42"), policy.ReasonMissingToken, 401, "orders#0"},
		"malformed token":          {get("garbage", "/orders/42"), policy.ReasonMalformedToken, 401, "orders#0"},
		"bad signature":            {get(read[:len(read)-2]+"AA", "/orders/42"), policy.ReasonBadSignature, 401, "orders#0"},
		"unknown key":              {get(mint(t, otherKey, claims()), "/orders/42"), policy.ReasonUnknownKey, 401, "orders#0"},
		"expired":                  {get(mint(t, testKey, withClaims(func(c *policy.Claims) { c.IssuedAt, c.Expires = c.IssuedAt-7200, c.IssuedAt-3600 })), "/orders/42"), policy.ReasonExpired, 401, "orders#0"},
		"not yet valid":            {get(mint(t, testKey, withClaims(func(c *policy.Claims) { c.NotBefore += 3600 })), "/orders/42"), policy.ReasonNotYetValid, 401, "orders#0"},
		"lifetime exceeds policy":  {get(mint(t, testKey, withClaims(func(c *policy.Claims) { c.Expires = c.IssuedAt + 13*3600 })), "/orders/42"), policy.ReasonLifetimeExceedsPolicy, 401, "orders#0"},
		"wrong environment":        {get(mint(t, testKey, withClaims(func(c *policy.Claims) { c.Env = "dev" })), "/orders/42"), policy.ReasonWrongEnvironment, 403, "orders#0"},
		"insufficient scope":       {policy.Request{Token: read, Method: "POST", Host: "orders", Path: "/orders"}, policy.ReasonInsufficientScope, 403, "orders#1"},
		"scope of another service": {policy.Request{Token: read, Method: "GET", Host: "admin", Path: "/v1/keys"}, policy.ReasonInsufficientScope, 403, "admin#0"},
		"no matching route":        {get(read, "/invoices"), policy.ReasonNoMatchingRoute, 403, ""},
		"no route, no token":       {get("", "/invoices"), policy.ReasonNoMatchingRoute, 403, ""},
		"unknown host":             {policy.Request{Token: read, Method: "GET", Host: "evil", Path: "/orders/1"}, policy.ReasonNoMatchingRoute, 403, ""},
		"method not routed":        {policy.Request{Token: read, Method: "PATCH", Host: "orders", Path: "/orders/1"}, policy.ReasonNoMatchingRoute, 403, ""},
		"dot segments":             {get(read, "/orders/../admin"), policy.ReasonNoMatchingRoute, 403, ""},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			for i := range 2 { // the second time from the cache, where one applies
				dec := f.decider.Decide(tt.req, testNow)
				if dec.Reason != tt.reason || dec.Status != tt.status || dec.Rule != tt.rule {
					t.Fatalf("Decide #%d = %s %d rule %q, want %s %d rule %q", i+1, dec.Reason, dec.Status, dec.Rule, tt.reason, tt.status, tt.rule)
				}
				if dec.Allow != (tt.status == 200) || dec.Status != dec.Reason.Status() {
					t.Errorf("Decide = %+v: Allow/Status disagree with the reason", dec)
				}
				if tt.req.Token != "" && strings.Contains(fmt.Sprintf("%+v", dec), tt.req.Token) {
					t.Errorf("the decision holds the token string")
				}
				if dec.Reason == policy.ReasonAllowed {
					if dec.TokenID != "aaaaaaaaaaaaaaaaaaaaaaaaaa" || dec.Subject != "svc-billing" || dec.Tenant != "acme" ||
						len(dec.Scopes) != 1 || dec.WireHash != policy.WireHash(tt.req.Token) {
						t.Errorf("allowed decision lacks the token's identity: %+v", dec)
					}
				}
			}
		})
	}
}

func TestDecideInternalError(t *testing.T) {
	pol := loadPolicy(t, "testdata/policy.yaml")
	tok := mint(t, testKey, claims())
	tests := map[string]policy.DeciderConfig{
		"no policy":      {Env: "prod", Keys: keySet(testKey), Revocations: revocation.NewSet()},
		"no revocations": {Env: "prod", Policy: pol, Keys: keySet(testKey)},
	}
	for name, cfg := range tests {
		t.Run(name, func(t *testing.T) {
			dec := policy.NewDecider(cfg).Decide(get(tok, "/orders/1"), testNow)
			if dec.Allow || dec.Reason != policy.ReasonInternalError || dec.Status != http.StatusForbidden {
				t.Errorf("Decide = %+v, want a 403 internal_error", dec)
			}
		})
	}
}

func TestDecideCache(t *testing.T) {
	tok := mint(t, testKey, claims())
	req := get(tok, "/orders/1")

	t.Run("second decision hits the cache", func(t *testing.T) {
		f := newFixture(t)
		first := f.decider.Decide(req, testNow)
		second := f.decider.Decide(req, testNow.Add(time.Second))
		if !first.Allow || !second.Allow {
			t.Fatalf("decisions %+v %+v", first, second)
		}
		if h, m, a := f.cache.hits.Load(), f.cache.misses.Load(), f.cache.adds.Load(); h != 1 || m != 1 || a != 1 {
			t.Errorf("hits %d misses %d adds %d, want 1 1 1", h, m, a)
		}
	})
	t.Run("refused tokens are not cached", func(t *testing.T) {
		f := newFixture(t)
		bad := mint(t, testKey, withClaims(func(c *policy.Claims) { c.Env = "dev" }))
		for range 3 {
			f.decider.Decide(get(bad, "/orders/1"), testNow)
		}
		if a := f.cache.adds.Load(); a != 0 {
			t.Errorf("%d refused tokens cached", a)
		}
	})
	t.Run("an expired token is not served from the cache", func(t *testing.T) {
		f := newFixture(t)
		f.decider.Decide(req, testNow)
		// One second after exp, with the default exp_leeway of 0.
		late := testNow.Add(time.Hour + time.Second)
		if dec := f.decider.Decide(req, late); dec.Reason != policy.ReasonExpired {
			t.Errorf("Decide one second after exp = %s, want expired", dec.Reason)
		}
		if dec := f.decider.Decide(req, testNow.Add(time.Hour)); dec.Reason != policy.ReasonExpired {
			t.Errorf("Decide at exp = %s, want expired", dec.Reason)
		}
		if dec := f.decider.Decide(req, testNow.Add(time.Hour-time.Second)); !dec.Allow {
			t.Errorf("Decide in the last second before exp = %s", dec.Reason)
		}
	})
	t.Run("Decide checks expiry even when a cache does not", func(t *testing.T) {
		sticky := &stickyCache{tokens: map[string]*policy.Token{}}
		d := policy.NewDecider(policy.DeciderConfig{
			Env: "prod", Policy: loadPolicy(t, "testdata/policy.yaml"), Keys: keySet(testKey),
			Cache: sticky, Revocations: revocation.NewSet(),
		})
		d.Decide(req, testNow)
		if len(sticky.tokens) != 1 {
			t.Fatal("token not cached")
		}
		if dec := d.Decide(req, testNow.Add(2*time.Hour)); dec.Reason != policy.ReasonExpired {
			t.Errorf("Decide = %s, want expired", dec.Reason)
		}
		if dec := d.Decide(req, testNow.Add(-time.Hour)); dec.Reason != policy.ReasonNotYetValid {
			t.Errorf("Decide = %s, want not_yet_valid", dec.Reason)
		}
	})
	t.Run("a key removed from the KeySet refuses a cached token", func(t *testing.T) {
		f := newFixture(t)
		f.decider.Decide(req, testNow)
		f.decider.SetKeys(keySet(otherKey))
		if dec := f.decider.Decide(req, testNow); dec.Reason != policy.ReasonUnknownKey || dec.Status != 401 {
			t.Errorf("Decide after the key left = %+v, want unknown_key", dec)
		}
		if h := f.cache.hits.Load(); h != 1 {
			t.Errorf("%d cache hits, want 1: the refusal should come from the cached path", h)
		}
		if f.decider.Keys().Has(testKey.ID) || !f.decider.Keys().Has(otherKey.ID) {
			t.Error("Keys() does not return the new key set")
		}
		f.decider.SetKeys(nil)
		if dec := f.decider.Decide(req, testNow); dec.Reason != policy.ReasonUnknownKey {
			t.Errorf("Decide with no keys = %s, want unknown_key", dec.Reason)
		}
	})
	t.Run("a token cached under another policy is verified again", func(t *testing.T) {
		// The agent purges the cache after SetPolicy, but a check that
		// loaded the old policy can cache its token after the purge. The
		// token must not then pass the new policy's limits from the cache.
		f := newFixture(t)
		if dec := f.decider.Decide(req, testNow); !dec.Allow {
			t.Fatalf("Decide = %s", dec.Reason)
		}
		raw, err := os.ReadFile("testdata/policy.yaml")
		if err != nil {
			t.Fatal(err)
		}
		data := strings.Replace(string(raw), "default_ttl: 1h\n    max_ttl: 12h", "default_ttl: 30m\n    max_ttl: 30m", 1)
		p, err := policy.Load("shorter.yaml", []byte(data))
		if err != nil {
			t.Fatal(err)
		}
		f.decider.SetPolicy(p) // no purge
		if dec := f.decider.Decide(req, testNow); dec.Reason != policy.ReasonLifetimeExceedsPolicy {
			t.Errorf("Decide under a policy with a shorter lifetime = %s, want lifetime_exceeds_policy", dec.Reason)
		}
		f.decider.SetPolicy(loadPolicy(t, "testdata/policy.yaml"))
		if dec := f.decider.Decide(req, testNow); !dec.Allow {
			t.Errorf("Decide back under the first policy = %s", dec.Reason)
		}
		adds := f.cache.adds.Load() // the first check, and the one just now
		if dec := f.decider.Decide(req, testNow); !dec.Allow || adds != 2 || f.cache.adds.Load() != adds {
			t.Errorf("Decide = %s, %d then %d tokens cached: want allowed from the cache, verified under each policy once", dec.Reason, adds, f.cache.adds.Load())
		}
	})
	t.Run("a scope withdrawn from the class stops working in cached tokens", func(t *testing.T) {
		// The attack: a token minted with orders:write keeps writing after
		// the operator withdrew orders:write from its class, because its
		// claims still say so and it sits in the cache. Its scopes are the
		// claims intersected with the class's scopes under the policy in
		// force, so the next Decide after SetPolicy (no purge) refuses it.
		f := newFixture(t)
		tok := mint(t, testKey, withClaims(func(c *policy.Claims) { c.Scope = "orders:read orders:write" }))
		write := policy.Request{Token: tok, Method: "POST", Host: "orders", Path: "/orders/42"}
		read := get(tok, "/orders/42")
		if dec := f.decider.Decide(write, testNow); !dec.Allow || strings.Join(dec.Scopes, " ") != "orders:read orders:write" {
			t.Fatalf("before: %s %v", dec.Reason, dec.Scopes)
		}
		raw, err := os.ReadFile("testdata/policy.yaml")
		if err != nil {
			t.Fatal(err)
		}
		narrowed := strings.Replace(string(raw), "scopes: [orders:read, orders:write]\n    default_ttl: 1h\n    max_ttl: 12h",
			"scopes: [orders:read]\n    default_ttl: 1h\n    max_ttl: 12h", 1)
		if narrowed == string(raw) {
			t.Fatal("test edit did not apply")
		}
		p, err := policy.Load("narrowed.yaml", []byte(narrowed))
		if err != nil {
			t.Fatal(err)
		}
		f.decider.SetPolicy(p) // no purge: the cache still holds the token
		dec := f.decider.Decide(write, testNow)
		if dec.Reason != policy.ReasonInsufficientScope {
			t.Errorf("write after orders:write was withdrawn = %s, want insufficient_scope", dec.Reason)
		}
		if got := strings.Join(dec.Scopes, " "); got != "orders:read" {
			t.Errorf("scopes after the withdrawal = %q, want orders:read", got)
		}
		if dec := f.decider.Decide(read, testNow); !dec.Allow || strings.Join(dec.Scopes, " ") != "orders:read" {
			t.Errorf("read after the withdrawal = %s %v, want allowed with orders:read", dec.Reason, dec.Scopes)
		}
		// Giving the scope back gives it back: the claims are unchanged.
		f.decider.SetPolicy(loadPolicy(t, "testdata/policy.yaml"))
		if dec := f.decider.Decide(write, testNow); !dec.Allow {
			t.Errorf("write after the scope came back = %s", dec.Reason)
		}
	})
	t.Run("a token of a class removed from the policy is refused", func(t *testing.T) {
		f := newFixture(t)
		tok := mint(t, testKey, withClaims(func(c *policy.Claims) { c.Class, c.Scope = "sandbox", "orders:read"; c.Env = "dev" }))
		d := policy.NewDecider(policy.DeciderConfig{
			Env: "dev", Policy: loadPolicy(t, "testdata/policy.yaml"), Keys: keySet(testKey),
			Cache: f.cache, Revocations: revocation.NewSet(),
		})
		if dec := d.Decide(get(tok, "/orders/1"), testNow); !dec.Allow {
			t.Fatalf("before: %s", dec.Reason)
		}
		raw, err := os.ReadFile("testdata/policy.yaml")
		if err != nil {
			t.Fatal(err)
		}
		cut := strings.Replace(string(raw), "  sandbox:\n    scopes: [orders:read]\n    default_ttl: 1h\n    max_ttl: 2h\n    environments: [dev]\n", "", 1)
		if cut == string(raw) {
			t.Fatal("test edit did not apply")
		}
		p, err := policy.Load("cut.yaml", []byte(cut))
		if err != nil {
			t.Fatal(err)
		}
		d.SetPolicy(p)
		if dec := d.Decide(get(tok, "/orders/1"), testNow); dec.Reason != policy.ReasonUnknownClass || dec.Status != http.StatusUnauthorized {
			t.Errorf("after the class was removed = %s %d, want unknown_class 401", dec.Reason, dec.Status)
		}
	})
	t.Run("a token presented with a tab after the scheme is malformed", func(t *testing.T) {
		// The kernel side reads "Bearer", SP, the token: a token it cannot
		// see must not be allowed.
		f := newFixture(t)
		tok := mint(t, testKey, claims())
		for _, header := range []string{"Bearer \t" + tok, "Bearer \u00a0" + tok, "Bearer  \t " + tok} {
			r := get(policy.BearerToken(header), "/orders/1")
			if dec := f.decider.Decide(r, testNow); dec.Reason != policy.ReasonMalformedToken {
				t.Errorf("Authorization %q: Decide = %s, want malformed_token", header[:9], dec.Reason)
			}
		}
		if dec := f.decider.Decide(get(policy.BearerToken("bearer   "+tok+" \t"), "/orders/1"), testNow); !dec.Allow {
			t.Errorf("spaces around the token: Decide = %s", dec.Reason)
		}
	})
	t.Run("SetPolicy swaps the policy", func(t *testing.T) {
		f := newFixture(t)
		data := `version: 1
issuer: tokenwarden.test
environments: { prod: { max_ttl: 24h } }
classes:
  service: { scopes: [orders:read], default_ttl: 1h, max_ttl: 1h, environments: [prod] }
services:
  orders:
    hosts: [orders]
    routes:
      - { path: "/other/**", scopes: [orders:read] }
`
		p, err := policy.Load("new.yaml", []byte(data))
		if err != nil {
			t.Fatal(err)
		}
		f.decider.SetPolicy(p)
		if f.decider.Policy() != p || f.decider.Env() != "prod" {
			t.Fatal("SetPolicy did not take")
		}
		if dec := f.decider.Decide(req, testNow); dec.Reason != policy.ReasonNoMatchingRoute {
			t.Errorf("Decide under the new policy = %s", dec.Reason)
		}
	})
}

func TestDecideRevocation(t *testing.T) {
	tok := withClaims(func(c *policy.Claims) { c.Tenant = "acme" })
	at := func(d time.Duration) time.Time { return testNow.Add(d) }
	iat := time.Unix(tok.IssuedAt, 0)
	tests := map[string]struct {
		rule   policy.Revocation
		at     time.Time
		revoke bool
	}{
		"by jti":                         {policy.Revocation{Kind: policy.RevokeToken, Target: tok.ID, EffectiveAt: testNow}, testNow, true},
		"by another jti":                 {policy.Revocation{Kind: policy.RevokeToken, Target: "bbbbbbbbbbbbbbbbbbbbbbbbbb", EffectiveAt: testNow}, testNow, false},
		"by subject, issued before":      {policy.Revocation{ID: "r1", Kind: policy.RevokeSubject, Target: tok.Subject, EffectiveAt: testNow, IssuedBefore: iat.Add(time.Second)}, testNow, true},
		"by subject, issued at the cut":  {policy.Revocation{ID: "r1", Kind: policy.RevokeSubject, Target: tok.Subject, EffectiveAt: testNow, IssuedBefore: iat}, testNow, true},
		"by subject, issued after":       {policy.Revocation{ID: "r1", Kind: policy.RevokeSubject, Target: tok.Subject, EffectiveAt: testNow, IssuedBefore: iat.Add(-time.Second)}, testNow, false},
		"by another subject":             {policy.Revocation{ID: "r1", Kind: policy.RevokeSubject, Target: "someone", EffectiveAt: testNow, IssuedBefore: iat.Add(time.Hour)}, testNow, false},
		"by tenant, issued before":       {policy.Revocation{ID: "r1", Kind: policy.RevokeTenant, Target: "acme", EffectiveAt: testNow, IssuedBefore: iat.Add(time.Second)}, testNow, true},
		"by tenant, issued after":        {policy.Revocation{ID: "r1", Kind: policy.RevokeTenant, Target: "acme", EffectiveAt: testNow, IssuedBefore: iat.Add(-time.Second)}, testNow, false},
		"by another tenant":              {policy.Revocation{ID: "r1", Kind: policy.RevokeTenant, Target: "globex", EffectiveAt: testNow, IssuedBefore: iat.Add(time.Hour)}, testNow, false},
		"by key":                         {policy.Revocation{Kind: policy.RevokeKey, Target: testKey.ID, EffectiveAt: testNow}, testNow, true},
		"by another key":                 {policy.Revocation{Kind: policy.RevokeKey, Target: otherKey.ID, EffectiveAt: testNow}, testNow, false},
		"future effective_at, before it": {policy.Revocation{Kind: policy.RevokeToken, Target: tok.ID, EffectiveAt: at(15 * time.Minute)}, at(15*time.Minute - time.Nanosecond), false},
		"future effective_at, at it":     {policy.Revocation{Kind: policy.RevokeToken, Target: tok.ID, EffectiveAt: at(15 * time.Minute)}, at(15 * time.Minute), true},
		"future key rule, before it":     {policy.Revocation{Kind: policy.RevokeKey, Target: testKey.ID, EffectiveAt: at(time.Minute)}, testNow, false},
		"future subject rule, before it": {policy.Revocation{ID: "r1", Kind: policy.RevokeSubject, Target: tok.Subject, EffectiveAt: at(time.Minute), IssuedBefore: iat.Add(time.Hour)}, testNow, false},
		"future subject rule, after it":  {policy.Revocation{ID: "r1", Kind: policy.RevokeSubject, Target: tok.Subject, EffectiveAt: at(time.Minute), IssuedBefore: iat.Add(time.Hour)}, at(time.Minute), true},
	}
	token := mint(t, testKey, tok)
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			// Seen before the rule: the cached token must not dodge it.
			if dec := f.decider.Decide(get(token, "/orders/1"), testNow); !dec.Allow {
				t.Fatalf("Decide before the rule = %s", dec.Reason)
			}
			f.set.Add(tt.rule)
			dec := f.decider.Decide(get(token, "/orders/1"), tt.at)
			if f.cache.hits.Load() != 1 {
				t.Errorf("the second decision did not come from the cache")
			}
			if tt.revoke {
				if dec.Allow || dec.Reason != policy.ReasonRevoked || dec.Status != 401 || dec.TokenID != tok.ID || dec.Subject != tok.Subject {
					t.Errorf("Decide = %+v, want a 401 revoked naming the token", dec)
				}
			} else if !dec.Allow {
				t.Errorf("Decide = %s, want allowed", dec.Reason)
			}
			if got := tt.rule.Covers(&policy.Token{Claims: tok, KeyID: testKey.ID}, tt.at); got != tt.revoke {
				t.Errorf("Revocation.Covers = %v, Set says %v", got, tt.revoke)
			}
		})
	}
}

// The hot path: a token seen before, a revocation set of a million rules.
func BenchmarkDecideCached(b *testing.B) {
	set := revocation.NewSet()
	for range 1_000_000 {
		set.Add(policy.Revocation{Kind: policy.RevokeToken, Target: policy.NewTokenID(), EffectiveAt: testNow, Expires: testNow.Add(time.Hour)})
	}
	for i := range 1000 {
		set.Add(policy.Revocation{ID: fmt.Sprint(i), Kind: policy.RevokeSubject, Target: fmt.Sprint("user-", i), EffectiveAt: testNow, IssuedBefore: testNow})
	}
	cache, err := revocation.NewCache(revocation.DefaultCacheSize)
	if err != nil {
		b.Fatal(err)
	}
	d := policy.NewDecider(policy.DeciderConfig{
		Env: "prod", Policy: loadPolicy(b, "testdata/policy.yaml"), Keys: keySet(testKey), Cache: cache, Revocations: set,
	})
	req := get(mint(b, testKey, withClaims(func(c *policy.Claims) { c.Tenant = "acme" })), "/orders/42")
	if dec := d.Decide(req, testNow); !dec.Allow {
		b.Fatalf("Decide = %s", dec.Reason)
	}
	now := testNow.Add(time.Second)
	b.ReportAllocs()
	for b.Loop() {
		if dec := d.Decide(req, now); !dec.Allow {
			b.Fatal(dec.Reason)
		}
	}
}

// A token each time verified: signature, JSON, claims.
func BenchmarkDecideUncached(b *testing.B) {
	d := policy.NewDecider(policy.DeciderConfig{
		Env: "prod", Policy: loadPolicy(b, "testdata/policy.yaml"), Keys: keySet(testKey), Revocations: revocation.NewSet(),
	})
	req := get(mint(b, testKey, claims()), "/orders/42")
	b.ReportAllocs()
	for b.Loop() {
		if dec := d.Decide(req, testNow); !dec.Allow {
			b.Fatal(dec.Reason)
		}
	}
}

func TestDecideConcurrent(t *testing.T) {
	f := newFixture(t)
	pol := f.decider.Policy()
	tokens := make([]string, 8)
	for i := range tokens {
		tokens[i] = mint(t, testKey, withClaims(func(c *policy.Claims) { c.ID = policy.NewTokenID() }))
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200 {
			f.set.Add(policy.Revocation{Kind: policy.RevokeToken, Target: policy.NewTokenID(), EffectiveAt: testNow})
			if i%20 == 0 {
				f.decider.SetKeys(keySet(testKey, otherKey))
				f.decider.SetPolicy(pol)
			}
		}
	}()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 300 {
				dec := f.decider.Decide(get(tokens[(w+i)%len(tokens)], "/orders/1"), testNow)
				if !dec.Allow {
					t.Errorf("Decide = %s", dec.Reason)
					return
				}
			}
		}()
	}
	wg.Wait()
	<-done
}
