package authz

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/tokenwarden/tokenwarden/policy"
)

const (
	deployerID = "spiffe://cluster.local/ns/ci/sa/deployer"
	intruderID = "spiffe://cluster.local/ns/ci/sa/intruder"
)

// newBindingFixture is the example policy plus a workload-bound class.
func newBindingFixture(tb testing.TB) *fixture {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "policy.example.yaml"))
	if err != nil {
		tb.Fatal(err)
	}
	doc := strings.Replace(string(data), "\nclasses:", `
classes:
  deployer:
    scopes: [orders:read]
    default_ttl: 1h
    max_ttl: 12h
    environments: [prod]
    binding: workload
    workloads: ["spiffe://cluster.local/ns/ci/sa/*"]
  client:
    scopes: [orders:read]
    default_ttl: 1h
    max_ttl: 12h
    environments: [prod]
    binding: dpop`, 1)
	return newFixtureFor(tb, []byte(doc))
}

func withPrincipal(req *authv3.CheckRequest, principal string) *authv3.CheckRequest {
	req.Attributes.Source = &authv3.AttributeContext_Peer{Principal: principal}
	return req
}

// TestGRPCWorkloadBinding: a stolen bound token is refused from any other
// peer, and from none; its workload is allowed; both identities reach the
// Observer for the audit.
func TestGRPCWorkloadBinding(t *testing.T) {
	f := newBindingFixture(t)
	var last Event
	s := f.server(t, Config{Observer: ObserverFunc(func(ev Event) { last = ev })})
	client := authv3.NewAuthorizationClient(serveGRPC(t, s))
	bound, claims := f.mint(t, policy.IssueRequest{Subject: "ci", Class: "deployer", BindWorkload: deployerID}, fixedNow)
	tests := map[string]struct {
		principal string
		want      policy.Reason
	}{
		"the bound workload":                 {deployerID, policy.ReasonAllowed},
		"stolen, from another workload":      {intruderID, policy.ReasonSenderMismatch},
		"stolen, over plaintext (no mTLS)":   {"", policy.ReasonSenderMismatch},
		"stolen, from another trust domain":  {"spiffe://evil.local/ns/ci/sa/deployer", policy.ReasonSenderMismatch},
		"stolen, identity with a suffix":     {deployerID + "x", policy.ReasonSenderMismatch},
		"stolen, a subject DN not a SPIFFE":  {"CN=deployer,O=ci", policy.ReasonSenderMismatch},
		"stolen, the identity in a list":     {intruderID + "," + deployerID, policy.ReasonSenderMismatch},
		"stolen, the identity as a header":   {"", policy.ReasonSenderMismatch}, // see below: x-forwarded-client-cert is never read over gRPC
		"stolen, the identity in upper case": {strings.ToUpper(deployerID), policy.ReasonSenderMismatch},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			req := withPrincipal(checkRequest("GET", "orders", "/orders/1", map[string]string{
				"authorization":           "Bearer " + bound,
				"x-forwarded-client-cert": "URI=" + deployerID,
			}), tt.principal)
			resp, err := client.Check(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == policy.ReasonAllowed {
				if resp.GetOkResponse() == nil {
					t.Fatalf("denied: %v", resp.GetDeniedResponse())
				}
				return
			}
			d := resp.GetDeniedResponse()
			if d == nil || int(d.GetStatus().GetCode()) != http.StatusUnauthorized || !strings.Contains(d.GetBody(), string(tt.want)) {
				t.Fatalf("got %v, want a 401 %s", resp, tt.want)
			}
			if last.Decision.Reason != tt.want || last.Decision.TokenID != claims.ID ||
				last.Decision.Bound != deployerID || last.Principal != tt.principal {
				t.Fatalf("observed %+v (principal %q), want %s of %s bound to %s from %q",
					last.Decision, last.Principal, tt.want, claims.ID, deployerID, tt.principal)
			}
		})
	}
}

// TestHTTPWorkloadBinding: HTTP mode reads the peer identity from the
// configured client-certificate header on the Envoy endpoint only, trusts
// one element with one URI, and reads nothing when unconfigured.
func TestHTTPWorkloadBinding(t *testing.T) {
	f := newBindingFixture(t)
	bound, _ := f.mint(t, policy.IssueRequest{Subject: "ci", Class: "deployer", BindWorkload: deployerID}, fixedNow)
	bearerTok, _ := f.mint(t, policy.IssueRequest{Subject: "svc", Scopes: []string{"orders:read"}}, fixedNow)
	on := serveHTTP(t, f.server(t, Config{ClientCertHeader: "x-forwarded-client-cert"}))
	off := serveHTTP(t, f.server(t, Config{}))
	const hash = `Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;Subject="CN=deployer,O=ci";`
	tests := map[string]struct {
		base, endpoint string
		token          string
		xfcc           []string
		want           int
	}{
		"the bound workload":                  {on, "/envoy/orders", bound, []string{hash + "URI=" + deployerID}, 200},
		"the bound workload, quoted":          {on, "/envoy/orders", bound, []string{`URI="` + deployerID + `";DNS=x`}, 200},
		"a bearer token needs no identity":    {on, "/envoy/orders", bearerTok, nil, 200},
		"stolen, another workload":            {on, "/envoy/orders", bound, []string{hash + "URI=" + intruderID}, 401},
		"stolen, no client certificate":       {on, "/envoy/orders", bound, nil, 401},
		"stolen, forged element + real one":   {on, "/envoy/orders", bound, []string{"URI=" + deployerID + "," + hash + "URI=" + intruderID}, 401},
		"stolen, two URI keys":                {on, "/envoy/orders", bound, []string{"URI=" + intruderID + ";URI=" + deployerID}, 401},
		"stolen, header sent twice":           {on, "/envoy/orders", bound, []string{"URI=" + deployerID, "URI=" + deployerID}, 401},
		"stolen, forged header at nginx":      {on, "/nginx/orders", bound, []string{"URI=" + deployerID}, 401},
		"stolen, forged header, forward auth": {on, "/forward-auth/orders", bound, []string{"URI=" + deployerID}, 401},
		"stolen, header not configured":       {off, "/envoy/orders", bound, []string{"URI=" + deployerID}, 401},
		"stolen, unterminated quote":          {on, "/envoy/orders", bound, []string{`URI="` + deployerID}, 401},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			url := tt.base + tt.endpoint
			if strings.HasPrefix(tt.endpoint, PathEnvoy) {
				url += "/orders/1"
			}
			req, err := http.NewRequest("GET", url, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = "orders"
			req.Header.Set("Authorization", "Bearer "+tt.token)
			req.Header.Set("X-Original-Method", "GET")
			req.Header.Set("X-Original-Uri", "/orders/1")
			req.Header.Set("X-Original-Host", "orders")
			req.Header.Set("X-Forwarded-Method", "GET")
			req.Header.Set("X-Forwarded-Uri", "/orders/1")
			req.Header.Set("X-Forwarded-Host", "orders")
			for _, v := range tt.xfcc {
				req.Header.Add("X-Forwarded-Client-Cert", v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.want)
			}
			if tt.want == 401 && !strings.Contains(resp.Header.Get("WWW-Authenticate"), "sender_mismatch") {
				t.Fatalf("WWW-Authenticate %q, want sender_mismatch", resp.Header.Get("WWW-Authenticate"))
			}
		})
	}
}

func TestXFCCURI(t *testing.T) {
	tests := map[string]string{ // header -> URI, "" when refused
		"URI=" + deployerID: deployerID,
		"uri=" + deployerID: deployerID,
		`By=spiffe://x/a;Hash=ab;Subject="C=US,CN=a;b";URI=` + deployerID + ";DNS=a": deployerID,
		`URI="` + deployerID + `"`:        deployerID,
		"Hash=ab;URI=":                    "",
		"Hash=ab":                         "",
		"":                                "",
		"URI=a,URI=b":                     "",
		"URI=a;URI=b":                     "",
		"URI=a;":                          "",
		"=a":                              "",
		`URI=a"b`:                         "",
		`URI="a`:                          "",
		`Subject="x\";URI=` + deployerID:  "",
		`Subject="x\"";URI=` + deployerID: deployerID,
	}
	for in, want := range tests {
		got, ok := xfccURI(in)
		if got != want || ok != (want != "") {
			t.Errorf("xfccURI(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}

// FuzzXFCCURI: the client-certificate header parser never panics, returns
// part of its input, and accepts only what names a URI once.
func FuzzXFCCURI(f *testing.F) {
	for _, s := range []string{
		"URI=" + deployerID, `By=spiffe://x/a;Hash=ab;Subject="C=US,CN=a";URI=spiffe://td/a;DNS=a`,
		`URI="spiffe://td/a"`, "URI=a,URI=b", `Subject="x\"";URI=a`, `URI="a`, ";;", "=",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		uri, ok := xfccURI(v)
		if !ok {
			if uri != "" {
				t.Fatalf("refused %q but returned %q", v, uri)
			}
			return
		}
		if uri == "" || !strings.Contains(v, uri) || !strings.Contains(strings.ToLower(v), "uri=") {
			t.Fatalf("xfccURI(%q) = %q", v, uri)
		}
		if strings.Count(strings.ToLower(v), "uri=") == 1 && strings.Contains(v, ",") && !strings.Contains(v, `"`) {
			t.Fatalf("accepted a second element: %q", v)
		}
	})
}

// BenchmarkCheckBinding compares a cached Check with a bearer token and
// with a workload-bound one (within 5%, both allocation-free past the
// response).
func BenchmarkCheckBinding(b *testing.B) {
	f := newBindingFixture(b)
	s := f.server(b, Config{Observer: ObserverFunc(func(Event) {})})
	bearerTok, _ := f.mint(b, policy.IssueRequest{Subject: "svc", Scopes: []string{"orders:read"}}, fixedNow)
	bound, _ := f.mint(b, policy.IssueRequest{Subject: "ci", Class: "deployer", BindWorkload: deployerID}, fixedNow)
	for _, c := range []struct{ name, tok string }{{"bearer", bearerTok}, {"workload", bound}} {
		b.Run(c.name, func(b *testing.B) {
			req := withPrincipal(checkRequest("GET", "orders", "/orders/1", map[string]string{
				"authorization": "Bearer " + c.tok, "user-agent": "bench", "accept": "*/*", "x-request-id": "abc",
			}), deployerID)
			b.ReportAllocs()
			for b.Loop() {
				if resp, _ := s.Check(context.Background(), req); resp.GetOkResponse() == nil {
					b.Fatal("denied")
				}
			}
		})
	}
}

var (
	clientKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, ed25519.SeedSize))
	thiefKey  = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{4}, ed25519.SeedSize))
)

func clientJKT(tb testing.TB) string {
	tb.Helper()
	jwk, err := jose.JSONWebKey{Key: clientKey.Public()}.MarshalJSON()
	if err != nil {
		tb.Fatal(err)
	}
	jkt, err := policy.JWKThumbprint(jwk)
	if err != nil {
		tb.Fatal(err)
	}
	return jkt
}

func dpopProof(tb testing.TB, key ed25519.PrivateKey, method, url, token string) string {
	tb.Helper()
	p, err := policy.MakeDPoPProof(key, method, url, token, fixedNow)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// TestDPoPOverGRPCAndHTTP: the key holder is allowed in both modes; a
// stolen DPoP-bound token is refused without the key, as a bearer token,
// with a proof for another URL or method, and with a replayed proof, each
// with its reason and a DPoP challenge.
func TestDPoPOverGRPCAndHTTP(t *testing.T) {
	f := newBindingFixture(t)
	s := f.server(t, Config{})
	client := authv3.NewAuthorizationClient(serveGRPC(t, s))
	base := serveHTTP(t, s)
	tok, _ := f.mint(t, policy.IssueRequest{Subject: "partner", Class: "client", BindJKT: clientJKT(t)}, fixedNow)
	const url = "https://orders/orders/1"
	type attempt struct {
		scheme, proof string
		want          policy.Reason
	}
	attempts := func() map[string]attempt {
		replayed := dpopProof(t, clientKey, "GET", url, tok)
		return map[string]attempt{
			"the key holder":            {"DPoP", dpopProof(t, clientKey, "GET", url, tok), policy.ReasonAllowed},
			"stolen, proof by own key":  {"DPoP", dpopProof(t, thiefKey, "GET", url, tok), policy.ReasonSenderMismatch},
			"stolen, as a bearer token": {"Bearer", "", policy.ReasonDPoPInvalid},
			"stolen, no proof":          {"DPoP", "", policy.ReasonDPoPInvalid},
			"proof for another URL":     {"DPoP", dpopProof(t, clientKey, "GET", "https://orders/orders/2", tok), policy.ReasonDPoPInvalid},
			"proof for another method":  {"DPoP", dpopProof(t, clientKey, "POST", url, tok), policy.ReasonDPoPInvalid},
			"two proofs":                {"DPoP", replayed + "\n" + replayed, policy.ReasonDPoPInvalid},
			"replayed (first use)":      {"DPoP", replayed, policy.ReasonAllowed},
		}
	}
	check := func(t *testing.T, name string, a attempt, status int, challenge string) {
		t.Helper()
		if a.want == policy.ReasonAllowed {
			if status != 200 {
				t.Errorf("%s: status %d, want 200", name, status)
			}
			return
		}
		if status != 401 || !strings.Contains(challenge, "DPoP ") || !strings.Contains(challenge, string(a.want)) {
			t.Errorf("%s: status %d challenge %q, want 401 %s with a DPoP challenge", name, status, challenge, a.want)
		}
	}
	t.Run("grpc", func(t *testing.T) {
		for name, a := range attempts() {
			hdr := map[string]string{"authorization": a.scheme + " " + tok}
			if a.proof != "" {
				hdr["dpop"] = strings.ReplaceAll(a.proof, "\n", ",") // Envoy joins repeats with ","
			}
			req := checkRequest("GET", "orders", "/orders/1", hdr)
			req.Attributes.Request.Http.Scheme = "https"
			send := func() (int, string) {
				resp, err := client.Check(context.Background(), req)
				if err != nil {
					t.Fatal(err)
				}
				if resp.GetOkResponse() != nil {
					return 200, ""
				}
				var ch string
				for _, h := range resp.GetDeniedResponse().GetHeaders() {
					if strings.EqualFold(h.GetHeader().GetKey(), "www-authenticate") {
						ch = h.GetHeader().GetValue()
					}
				}
				return int(resp.GetDeniedResponse().GetStatus().GetCode()), ch
			}
			st, ch := send()
			check(t, name, a, st, ch)
			if name == "replayed (first use)" {
				st, ch = send()
				check(t, "replayed", attempt{want: policy.ReasonDPoPReplayed}, st, ch)
			}
		}
	})
	t.Run("http", func(t *testing.T) {
		for name, a := range attempts() {
			send := func() (int, string) {
				req, err := http.NewRequest("GET", base+"/envoy/orders/orders/1", nil)
				if err != nil {
					t.Fatal(err)
				}
				req.Host = "orders"
				req.Header.Set("Authorization", a.scheme+" "+tok)
				req.Header.Set("X-Forwarded-Proto", "https")
				for _, p := range strings.Split(a.proof, "\n") {
					if p != "" {
						req.Header.Add("DPoP", p)
					}
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				return resp.StatusCode, resp.Header.Get("WWW-Authenticate")
			}
			st, ch := send()
			check(t, name, a, st, ch)
			if name == "replayed (first use)" {
				st, ch = send()
				check(t, "replayed", attempt{want: policy.ReasonDPoPReplayed}, st, ch)
			}
		}
	})
}

// BenchmarkCheckDPoP: a cached Check with a DPoP-bound token and a fresh
// proof each time (one signature verification per request), against
// BenchmarkCheckBinding/bearer.
func BenchmarkCheckDPoP(b *testing.B) {
	f := newBindingFixture(b)
	s := f.server(b, Config{Observer: ObserverFunc(func(Event) {})})
	tok, _ := f.mint(b, policy.IssueRequest{Subject: "partner", Class: "client", BindJKT: clientJKT(b)}, fixedNow)
	const n = 4096
	reqs := make([]*authv3.CheckRequest, n)
	fresh := func() {
		for j := range reqs {
			reqs[j] = checkRequest("GET", "orders", "/orders/1", map[string]string{
				"authorization": "DPoP " + tok, "dpop": dpopProof(b, clientKey, "GET", "https://orders/orders/1", tok),
				"user-agent": "bench", "accept": "*/*", "x-request-id": "abc",
			})
			reqs[j].Attributes.Request.Http.Scheme = "https"
		}
	}
	fresh()
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		if i == n {
			// The replay cache remembers every jti: fresh proofs are
			// made outside the timed loop.
			b.StopTimer()
			fresh()
			i = 0
			b.StartTimer()
		}
		req := reqs[i]
		i++
		if resp, _ := s.Check(context.Background(), req); resp.GetOkResponse() == nil {
			b.Fatal("denied")
		}
	}
}
