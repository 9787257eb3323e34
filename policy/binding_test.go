package policy_test

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/revocation"
	"github.com/tokenwarden/tokenwarden/policy"
)

const (
	deployerID = "spiffe://cluster.local/ns/ci/sa/deployer"
	otherID    = "spiffe://cluster.local/ns/ci/sa/intruder"
)

func TestValidSPIFFEID(t *testing.T) {
	tests := map[string]bool{
		deployerID:                          true,
		"spiffe://td/a":                     true,
		"spiffe://td.example-1_x/a.b-c_D/e": true,
		"spiffe://td":                       false, // no workload
		"spiffe://td/":                      false,
		"spiffe://td/a/":                    false,
		"spiffe://td//a":                    false,
		"spiffe://td/a/../b":                false,
		"spiffe://td/./a":                   false,
		"spiffe://TD/a":                     false, // trust domains are lower case
		"spiffe://td:8080/a":                false,
		"spiffe://user@td/a":                false,
		"spiffe://td/a?x=1":                 false,
		"spiffe://td/a#f":                   false,
		"spiffe://td/a%2Fb":                 false,
		"SPIFFE://td/a":                     false,
		"https://td/a":                      false,
		"spiffe:///a":                       false,
		"":                                  false,
		"spiffe://td/" + strings.Repeat("a", policy.MaxSPIFFEIDBytes): false,
	}
	for id, ok := range tests {
		if why := policy.ValidSPIFFEID(id); (why == "") != ok {
			t.Errorf("ValidSPIFFEID(%q) = %q, want valid=%v", id, why, ok)
		}
	}
}

func TestClassAllowsWorkload(t *testing.T) {
	p := loadPolicy(t, "testdata/policy.yaml")
	deployer, _ := p.Class("deployer")
	service, _ := p.Class("service")
	tests := []struct {
		id    string
		class *policy.Class
		ok    bool
	}{
		{deployerID, deployer, true},
		{"spiffe://cluster.local/ns/ci/sa/x", deployer, true},
		{"spiffe://cluster.local/ns/ci/sa", deployer, false},            // * is exactly one segment
		{"spiffe://cluster.local/ns/ci/sa/deployer/x", deployer, false}, // ... not two
		{"spiffe://cluster.local/ns/build/sa/x", deployer, true},        // ** any depth
		{"spiffe://cluster.local/ns/build/x", deployer, true},
		{"spiffe://cluster.local/ns/build", deployer, false}, // ** is at least one segment
		{"spiffe://cluster.local/ns/builder/sa/x", deployer, false},
		{"spiffe://evil.local/ns/ci/sa/deployer", deployer, false}, // trust domain is literal
		{"spiffe://cluster.local.evil/ns/ci/sa/deployer", deployer, false},
		{"spiffe://cluster.local/ns/ci/sa/../../build/x", deployer, false}, // not a valid ID
		{deployerID, service, false},                                       // an unbound class binds nothing
	}
	for _, tt := range tests {
		if got := tt.class.AllowsWorkload(tt.id); got != tt.ok {
			t.Errorf("%s.AllowsWorkload(%q) = %v, want %v", tt.class.Name, tt.id, got, tt.ok)
		}
	}
}

func TestPolicyCheckBinding(t *testing.T) {
	const head = "version: 1\nissuer: t\nenvironments: { prod: { max_ttl: 24h } }\n" +
		"services: { s: { hosts: [s], routes: [ { path: \"/**\", scopes: [a] } ] } }\nclasses:\n  c:\n" +
		"    scopes: [a]\n    default_ttl: 1h\n    max_ttl: 2h\n    environments: [prod]\n"
	tests := map[string]string{
		"    binding: workload\n": "",
		"    binding: workload\n    workloads: [\"spiffe://td/ns/*/sa/x\", \"spiffe://td/a/**\"]\n": "",
		"    binding: dpop\n": "",
		"    binding: dpop\n    workloads: [\"spiffe://td/a\"]\n": "workloads needs binding: workload",
		"    binding: mtls\n":                                              `want workload or dpop, got "mtls"`,
		"    workloads: [\"spiffe://td/a\"]\n":                             "workloads needs binding: workload",
		"    binding: workload\n    workloads: [\"https://td/a\"]\n":       "does not start with spiffe://",
		"    binding: workload\n    workloads: [\"spiffe://*/a\"]\n":       "trust domain",
		"    binding: workload\n    workloads: [\"spiffe://td\"]\n":        "names no workload",
		"    binding: workload\n    workloads: [\"spiffe://td/**/x\"]\n":   "** may only be the last segment",
		"    binding: workload\n    workloads: [\"spiffe://td/a*\"]\n":     "use literal segments",
		"    binding: workload\n    workloads: [\"spiffe://td/a/../b\"]\n": "use literal segments",
	}
	for extra, want := range tests {
		probs := policy.Check("p.yaml", []byte(head+extra))
		var errs []string
		for _, p := range probs {
			if p.Severity == policy.SeverityError {
				errs = append(errs, p.String())
			}
		}
		switch {
		case want == "" && len(errs) > 0:
			t.Errorf("%q: unexpected errors %v", extra, errs)
		case want != "" && (len(errs) != 1 || !strings.Contains(errs[0], want)):
			t.Errorf("%q: errors %v, want one containing %q", extra, errs, want)
		}
	}
}

func TestIssueWorkloadBinding(t *testing.T) {
	p := loadPolicy(t, "testdata/policy.yaml")
	tests := map[string]struct {
		req    policy.IssueRequest
		refuse string
	}{
		"bound":                     {policy.IssueRequest{Subject: "ci", Class: "deployer", Env: "prod", BindWorkload: deployerID}, ""},
		"bound class without id":    {policy.IssueRequest{Subject: "ci", Class: "deployer", Env: "prod"}, "binds tokens to a workload"},
		"id outside workloads":      {policy.IssueRequest{Subject: "ci", Class: "deployer", Env: "prod", BindWorkload: "spiffe://cluster.local/ns/prod/sa/x"}, "may not be bound to"},
		"not a SPIFFE ID":           {policy.IssueRequest{Subject: "ci", Class: "deployer", Env: "prod", BindWorkload: "spiffe://cluster.local/ns/ci/sa/../../prod/sa/x"}, "not a SPIFFE ID"},
		"id for an unbound class":   {policy.IssueRequest{Subject: "ci", Class: "service", Env: "prod", BindWorkload: deployerID}, "does not bind tokens"},
		"unbound class, no binding": {policy.IssueRequest{Subject: "ci", Class: "service", Env: "prod"}, ""},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			c, err := p.Issue(tt.req, testNow)
			if tt.refuse != "" {
				var ie *policy.Refusal
				if !errors.As(err, &ie) || !strings.Contains(err.Error(), tt.refuse) {
					t.Fatalf("Issue = %v, want a refusal containing %q", err, tt.refuse)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (c.Cnf != nil) != (tt.req.BindWorkload != "") || (c.Cnf != nil && c.Cnf.SPIFFEID != tt.req.BindWorkload) {
				t.Fatalf("cnf = %+v, want spiffe_id %q", c.Cnf, tt.req.BindWorkload)
			}
		})
	}
}

func boundClaims(id string) policy.Claims {
	return withClaims(func(c *policy.Claims) {
		c.Class = "deployer"
		c.Cnf = &policy.Confirmation{SPIFFEID: id}
	})
}

// Each case is an attack on a bound token, or its rightful use; every one
// runs cold (verified) and warm (from the cache).
func TestDecideWorkloadBinding(t *testing.T) {
	bound := mint(t, testKey, boundClaims(deployerID))
	unboundInBoundClass := mint(t, testKey, withClaims(func(c *policy.Claims) { c.Class = "deployer" }))
	outsideWorkloads := mint(t, testKey, boundClaims("spiffe://cluster.local/ns/prod/sa/x"))
	boundBearerClass := mint(t, testKey, withClaims(func(c *policy.Claims) { c.Cnf = &policy.Confirmation{SPIFFEID: deployerID} }))
	emptyCnf := signRaw(testKey, headerJSON("EdDSA", testKey.ID), []byte(strings.Replace(string(claimsJSON(t, boundClaims(deployerID))), `"spiffe_id"`, `"x5t#S256"`, 1)))
	tests := map[string]struct {
		token, principal string
		reason           policy.Reason
	}{
		"the bound workload":                     {bound, deployerID, policy.ReasonAllowed},
		"stolen, replayed from another workload": {bound, otherID, policy.ReasonSenderMismatch},
		"stolen, over a connection without mTLS": {bound, "", policy.ReasonSenderMismatch},
		"a prefix of the bound identity":         {bound, "spiffe://cluster.local/ns/ci/sa/deploye", policy.ReasonSenderMismatch},
		"the bound identity with a suffix":       {bound, deployerID + "/x", policy.ReasonSenderMismatch},
		"the bound identity in upper case":       {bound, strings.ToUpper(deployerID), policy.ReasonSenderMismatch},
		"unbound token of a bound class":         {unboundInBoundClass, deployerID, policy.ReasonSenderMismatch},
		"bound outside the class's workloads":    {outsideWorkloads, "spiffe://cluster.local/ns/prod/sa/x", policy.ReasonSenderMismatch},
		"cnf of a bearer class is enforced":      {boundBearerClass, otherID, policy.ReasonSenderMismatch},
		"cnf of a bearer class, right sender":    {boundBearerClass, deployerID, policy.ReasonAllowed},
		"cnf with a method not enforced here":    {emptyCnf, deployerID, policy.ReasonMalformedToken},
		"a bearer token ignores the peer":        {mint(t, testKey, claims()), otherID, policy.ReasonAllowed},
	}
	cache, err := revocation.NewCache(64)
	if err != nil {
		t.Fatal(err)
	}
	d := policy.NewDecider(policy.DeciderConfig{
		Env: "prod", Policy: loadPolicy(t, "testdata/policy.yaml"), Keys: keySet(testKey), Cache: cache, Revocations: revocation.NewSet(),
	})
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			req := get(tt.token, "/orders/1")
			req.Principal = tt.principal
			for _, pass := range []string{"cold", "warm"} {
				if pass == "warm" {
					// Warm the cache with the rightful sender first, so a
					// cached token is no easier to misuse.
					ok := req
					ok.Principal = deployerID
					d.Decide(ok, testNow)
				}
				dec := d.Decide(req, testNow)
				if dec.Reason != tt.reason || dec.Allow != (tt.reason == policy.ReasonAllowed) {
					t.Fatalf("%s: Decide = %s (allow %v), want %s", pass, dec.Reason, dec.Allow, tt.reason)
				}
				if tt.reason == policy.ReasonSenderMismatch && dec.TokenID == "" && tt.token == bound {
					t.Errorf("%s: a sender mismatch must name the token for the audit", pass)
				}
				if tt.token == bound && dec.Bound != deployerID {
					t.Errorf("%s: Bound = %q, want %q", pass, dec.Bound, deployerID)
				}
			}
		})
	}
}

// Adding binding to a class cuts off its unbound tokens, like a lifetime
// cut: the policy in force decides, not the one the token was issued under.
func TestBindingAddedCutsOffUnboundTokens(t *testing.T) {
	d := policy.NewDecider(policy.DeciderConfig{
		Env: "prod", Policy: loadPolicy(t, "testdata/policy.yaml"), Keys: keySet(testKey), Revocations: revocation.NewSet(),
	})
	tok := mint(t, testKey, claims())
	if dec := d.Decide(get(tok, "/orders/1"), testNow); !dec.Allow {
		t.Fatalf("before: %s", dec.Reason)
	}
	data, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bound := strings.Replace(string(data), "    max_ttl: 12h\n    environments: [dev, prod]\n  admin:", "    max_ttl: 12h\n    environments: [dev, prod]\n    binding: workload\n  admin:", 1)
	if bound == string(data) {
		t.Fatal("testdata/policy.yaml changed: update this test")
	}
	p, err := policy.Load("bound.yaml", []byte(bound))
	if err != nil {
		t.Fatal(err)
	}
	d.SetPolicy(p)
	if dec := d.Decide(get(tok, "/orders/1"), testNow.Add(time.Second)); dec.Reason != policy.ReasonSenderMismatch {
		t.Fatalf("after binding: %s, want sender_mismatch", dec.Reason)
	}
}

// The hot path with a workload-bound token: within 5% of
// BenchmarkDecideCached's bearer token, and allocation-free.
func BenchmarkDecideCachedBound(b *testing.B) {
	cache, err := revocation.NewCache(revocation.DefaultCacheSize)
	if err != nil {
		b.Fatal(err)
	}
	d := policy.NewDecider(policy.DeciderConfig{
		Env: "prod", Policy: loadPolicy(b, "testdata/policy.yaml"), Keys: keySet(testKey), Cache: cache, Revocations: revocation.NewSet(),
	})
	for _, bound := range []bool{false, true} {
		name, c := "bearer", claims()
		if bound {
			name, c = "workload", boundClaims(deployerID)
		}
		b.Run(name, func(b *testing.B) {
			req := get(mint(b, testKey, c), "/orders/42")
			req.Principal = deployerID
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
		})
	}
}
