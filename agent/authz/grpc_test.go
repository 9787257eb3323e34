package authz

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/tokenwarden/tokenwarden/policy"
)

// reasonCase is one request and the reason it must be answered with.
type reasonCase struct {
	method, host, path string
	authorization      string // the Authorization header value, "" for none
	want               policy.Reason
}

// reasonCases covers every reason a check can give, with tokens minted at
// now. The token of "revoked" is revoked in f.set.
func (f *fixture) reasonCases(tb testing.TB, now time.Time) map[string]reasonCase {
	tb.Helper()
	read, _ := f.mint(tb, policy.IssueRequest{Subject: "orders-reader", Scopes: []string{"orders:read"}, Tenant: "acme"}, now)
	revoked, rc := f.mint(tb, policy.IssueRequest{Subject: "leaker", Scopes: []string{"orders:read"}}, now)
	f.revoke(rc.ID, now.Add(-time.Second))
	expired, _ := f.mint(tb, policy.IssueRequest{Subject: "old", Scopes: []string{"orders:read"}}, now.Add(-3*time.Hour))
	early, _ := f.mint(tb, policy.IssueRequest{Subject: "early", Scopes: []string{"orders:read"}}, now.Add(time.Hour))
	staging, _ := f.mint(tb, policy.IssueRequest{Subject: "stager", Env: "staging", Scopes: []string{"orders:read"}}, now)
	_, c := f.mint(tb, policy.IssueRequest{Subject: "forger", Scopes: []string{"orders:read"}}, now)
	badSig := mintClaims(tb, testKey(8, f.key.ID), c)
	unknownKey := mintClaims(tb, testKey(9, "k_other"), c)
	long := c
	long.Expires = long.IssuedAt + int64((25 * time.Hour).Seconds())
	tooLong := mintClaims(tb, f.key, long)

	b := func(tok string) string { return "Bearer " + tok }
	return map[string]reasonCase{
		"allowed":                 {"GET", "orders", "/orders/42?expand=items", b(read), policy.ReasonAllowed},
		"public route":            {"GET", "orders", "/healthz", "", policy.ReasonPublicRoute},
		"missing token":           {"GET", "orders", "/orders/42", "", policy.ReasonMissingToken},
		"other auth scheme":       {"GET", "orders", "/orders/42", "Basic dXNlcjpwYXNz", policy.ReasonMissingToken},
		"malformed token":         {"GET", "orders", "/orders/42", b("tw_garbage"), policy.ReasonMalformedToken},
		"oversized token":         {"GET", "orders", "/orders/42", b("tw_" + strings.Repeat("a", policy.MaxTokenBytes)), policy.ReasonMalformedToken},
		"bad signature":           {"GET", "orders", "/orders/42", b(badSig), policy.ReasonBadSignature},
		"unknown key":             {"GET", "orders", "/orders/42", b(unknownKey), policy.ReasonUnknownKey},
		"expired":                 {"GET", "orders", "/orders/42", b(expired), policy.ReasonExpired},
		"not yet valid":           {"GET", "orders", "/orders/42", b(early), policy.ReasonNotYetValid},
		"lifetime exceeds policy": {"GET", "orders", "/orders/42", b(tooLong), policy.ReasonLifetimeExceedsPolicy},
		"wrong environment":       {"GET", "orders", "/orders/42", b(staging), policy.ReasonWrongEnvironment},
		"revoked":                 {"GET", "orders", "/orders/42", b(revoked), policy.ReasonRevoked},
		"insufficient scope":      {"POST", "orders", "/orders/42", b(read), policy.ReasonInsufficientScope},
		"no matching route":       {"GET", "orders", "/admin", b(read), policy.ReasonNoMatchingRoute},
		"unknown host":            {"GET", "evil.example", "/orders/42", b(read), policy.ReasonNoMatchingRoute},
		// Path forms a proxy or application reads differently (docs/authz.md).
		"fragment after public path": {"GET", "orders", "/healthz#/../orders/42", "", policy.ReasonNoMatchingRoute},
		"path parameter":             {"GET", "orders", "/orders/42;x", b(read), policy.ReasonNoMatchingRoute},
		"encoded percent":            {"GET", "orders", "/orders/%252e%252e", b(read), policy.ReasonNoMatchingRoute},
		"decoded path":               {"GET", "orders", "/orders/a%20b%C3%A9", b(read), policy.ReasonAllowed},
	}
}

func headerValues(opts []*corev3.HeaderValueOption) map[string]string {
	m := map[string]string{}
	for _, o := range opts {
		m[o.GetHeader().GetKey()] = o.GetHeader().GetValue()
	}
	return m
}

// assertGRPCDenial checks a denied CheckResponse against reason r.
func assertGRPCDenial(t *testing.T, resp *authv3.CheckResponse, r policy.Reason) {
	t.Helper()
	wantCode := code.Code_PERMISSION_DENIED
	switch r.Status() {
	case 401:
		wantCode = code.Code_UNAUTHENTICATED
	case 503:
		wantCode = code.Code_UNAVAILABLE
	}
	if got := code.Code(resp.GetStatus().GetCode()); got != wantCode {
		t.Errorf("status code = %v, want %v", got, wantCode)
	}
	if got := resp.GetStatus().GetMessage(); got != string(r) {
		t.Errorf("status message = %q, want %q", got, r)
	}
	d := resp.GetDeniedResponse()
	if d == nil {
		t.Fatalf("no denied_response in %v", resp)
	}
	if got := int(d.GetStatus().GetCode()); got != r.Status() {
		t.Errorf("HTTP status = %d, want %d", got, r.Status())
	}
	h := headerValues(d.GetHeaders())
	if got := h["www-authenticate"]; got != r.Challenge() {
		t.Errorf("www-authenticate = %q, want %q", got, r.Challenge())
	}
	if got := h["content-type"]; got != "application/json" {
		t.Errorf("content-type = %q", got)
	}
	var body struct{ Error, Message string }
	if err := json.Unmarshal([]byte(d.GetBody()), &body); err != nil {
		t.Fatalf("body %q: %v", d.GetBody(), err)
	}
	if body.Error != string(r) || body.Message != r.Message() {
		t.Errorf("body = %+v, want error %q message %q", body, r, r.Message())
	}
}

func TestCheckGRPCReasons(t *testing.T) {
	f := newFixture(t)
	client := authv3.NewAuthorizationClient(serveGRPC(t, f.server(t, Config{})))
	for name, tc := range f.reasonCases(t, fixedNow) {
		t.Run(name, func(t *testing.T) {
			resp, err := client.Check(context.Background(), checkRequest(tc.method, tc.host, tc.path, map[string]string{"authorization": tc.authorization}))
			if err != nil {
				t.Fatal(err)
			}
			if tc.want.Status() != 200 {
				assertGRPCDenial(t, resp, tc.want)
				return
			}
			if got := resp.GetStatus().GetCode(); got != 0 {
				t.Fatalf("status = %v (%s), want OK", got, resp.GetStatus().GetMessage())
			}
			ok := resp.GetOkResponse()
			if ok == nil {
				t.Fatalf("no ok_response in %v", resp)
			}
			h := headerValues(ok.GetHeaders())
			if tc.want == policy.ReasonPublicRoute {
				if len(h) != 0 {
					t.Errorf("public route sets identity headers %v", h)
				}
				return
			}
			if h[HeaderSubject] != "orders-reader" || h[HeaderScopes] != "orders:read" || h[HeaderTenant] != "acme" || len(h[HeaderTokenID]) != 26 {
				t.Errorf("identity headers = %v", h)
			}
			for _, o := range ok.GetHeaders() {
				//lint:ignore SA1019 the answer sets append explicitly (see response.go)
				app := o.GetAppend()
				if app == nil || app.GetValue() {
					t.Errorf("%s: append = %v, want explicit false (overwrite)", o.GetHeader().GetKey(), app)
				}
			}
			if len(ok.GetHeadersToRemove()) != 0 {
				t.Errorf("headers_to_remove = %v, want none by default", ok.GetHeadersToRemove())
			}
		})
	}
}

func TestCheckGRPCHeaders(t *testing.T) {
	f := newFixture(t)
	tok, _ := f.mint(t, policy.IssueRequest{Subject: "svc", Scopes: []string{"orders:read"}}, fixedNow)
	tests := map[string]struct {
		strip       bool
		path        string
		headers     map[string]string
		wantSet     []string
		wantRemoved []string
	}{
		"strip authorization": {
			strip: true, path: "/orders/1",
			headers:     map[string]string{"authorization": "Bearer " + tok},
			wantSet:     []string{HeaderSubject, HeaderTokenID, HeaderScopes},
			wantRemoved: []string{"authorization"},
		},
		"forged identity is overwritten, forged tenant removed": {
			path: "/orders/1",
			headers: map[string]string{
				"authorization": "Bearer " + tok, HeaderSubject: "admin", HeaderTenant: "other", "x-tokenwarden-role": "root",
			},
			wantSet:     []string{HeaderSubject, HeaderTokenID, HeaderScopes},
			wantRemoved: []string{HeaderTenant, "x-tokenwarden-role"},
		},
		"public route removes every forged header": {
			path:        "/healthz",
			headers:     map[string]string{HeaderSubject: "admin", HeaderTokenID: "x"},
			wantRemoved: []string{HeaderSubject, HeaderTokenID},
		},
		"underscore spellings are forgeries too": {
			path: "/orders/1",
			headers: map[string]string{
				"authorization": "Bearer " + tok, "x_tokenwarden_subject": "admin", "x-tokenwarden_tenant": "other", "X_TOKENWARDEN-SCOPES": "admin:all",
			},
			wantSet:     []string{HeaderSubject, HeaderTokenID, HeaderScopes},
			wantRemoved: []string{"x_tokenwarden_subject", "x-tokenwarden_tenant", "x_tokenwarden-scopes"},
		},
		"underscore spellings on a public route": {
			path:        "/healthz",
			headers:     map[string]string{"x_tokenwarden_subject": "admin"},
			wantRemoved: []string{"x_tokenwarden_subject"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			client := authv3.NewAuthorizationClient(serveGRPC(t, f.server(t, Config{StripAuthorization: tc.strip})))
			resp, err := client.Check(context.Background(), checkRequest("GET", "orders", tc.path, tc.headers))
			if err != nil {
				t.Fatal(err)
			}
			ok := resp.GetOkResponse()
			if ok == nil {
				t.Fatalf("not allowed: %v", resp)
			}
			set := headerValues(ok.GetHeaders())
			if len(set) != len(tc.wantSet) {
				t.Errorf("set %v, want %v", set, tc.wantSet)
			}
			for _, k := range tc.wantSet {
				if _, ok := set[k]; !ok {
					t.Errorf("%s not set", k)
				}
			}
			if set[HeaderSubject] != "" && set[HeaderSubject] != "svc" {
				t.Errorf("subject = %q, want svc", set[HeaderSubject])
			}
			removed := map[string]bool{}
			for _, k := range ok.GetHeadersToRemove() {
				removed[k] = true
			}
			if len(removed) != len(tc.wantRemoved) {
				t.Errorf("removed %v, want %v", ok.GetHeadersToRemove(), tc.wantRemoved)
			}
			for _, k := range tc.wantRemoved {
				if !removed[k] {
					t.Errorf("%s not removed (removed: %v)", k, ok.GetHeadersToRemove())
				}
			}
		})
	}
}

// panickingCache makes Decide panic.
type panickingCache struct{}

func (panickingCache) Get(string, time.Time) (*policy.Token, bool) { panic("cache on fire") }
func (panickingCache) Add(string, *policy.Token)                   {}

func TestCheckGRPCFailsClosed(t *testing.T) {
	f := newFixture(t)
	tok, _ := f.mint(t, policy.IssueRequest{Subject: "svc", Scopes: []string{"orders:read"}}, fixedNow)
	ok := checkRequest("GET", "orders", "/orders/1", bearer(tok))
	rawHeaders := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Host: "orders", Path: "/orders/1", HeaderMap: &corev3.HeaderMap{
			Headers: []*corev3.HeaderValue{{Key: "authorization", RawValue: []byte("Bearer " + tok)}},
		}},
	}}}
	twoAuth := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Host: "orders", Path: "/orders/1", HeaderMap: &corev3.HeaderMap{
			Headers: []*corev3.HeaderValue{
				{Key: "authorization", RawValue: []byte("Bearer " + tok)},
				{Key: "Authorization", RawValue: []byte("Bearer " + tok)},
			},
		}},
	}}}
	huge := checkRequest("GET", "orders", "/orders/1", map[string]string{"authorization": "Bearer " + tok, "x-padding": strings.Repeat("p", DefaultMaxHeaderBytes)})

	panicky := policy.NewDecider(policy.DeciderConfig{Env: "prod", Policy: f.policy, Keys: f.decider.Keys(), Cache: panickingCache{}, Revocations: f.set})
	tests := map[string]struct {
		decider *policy.Decider
		req     *authv3.CheckRequest
		want    policy.Reason
	}{
		"well-formed (control)":     {req: ok, want: policy.ReasonAllowed},
		"raw header map":            {req: rawHeaders, want: policy.ReasonAllowed},
		"two authorization headers": {req: twoAuth, want: policy.ReasonMalformedToken},
		"empty request":             {req: &authv3.CheckRequest{}, want: policy.ReasonInternalError},
		"no http attributes":        {req: &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{}}}, want: policy.ReasonInternalError},
		"headers over the limit":    {req: huge, want: policy.ReasonInternalError},
		"Decide panics":             {decider: panicky, req: ok, want: policy.ReasonInternalError},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			d := tc.decider
			if d == nil {
				d = f.decider
			}
			s, err := New(Config{Decider: d, Now: func() time.Time { return fixedNow }})
			if err != nil {
				t.Fatal(err)
			}
			resp, err := authv3.NewAuthorizationClient(serveGRPC(t, s)).Check(context.Background(), tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == policy.ReasonAllowed {
				if resp.GetOkResponse() == nil {
					t.Fatalf("want allowed, got %v", resp)
				}
				return
			}
			assertGRPCDenial(t, resp, tc.want)
		})
	}
}

func TestObserverSeesEveryCheck(t *testing.T) {
	f := newFixture(t)
	tok, claims := f.mint(t, policy.IssueRequest{Subject: "svc", Scopes: []string{"orders:read"}}, fixedNow)
	var mu sync.Mutex
	var events []Event
	s := f.server(t, Config{Observer: ObserverFunc(func(e Event) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	})})
	req := checkRequest("GET", "orders", "/orders/1", bearer(tok))
	req.Attributes.Source = &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
		SocketAddress: &corev3.SocketAddress{Address: "10.1.2.3", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 5555}},
	}}}
	if _, err := s.Check(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Check(context.Background(), checkRequest("GET", "orders", "/orders/1", bearer("tw_garbage"))); err != nil {
		t.Fatal(err)
	}
	if len(events) != 2 {
		t.Fatalf("%d events, want 2", len(events))
	}
	e := events[0]
	if !e.Decision.Allow || e.Decision.TokenID != claims.ID || e.Source != "10.1.2.3" || e.Protocol != ProtocolGRPC {
		t.Errorf("allowed event = %+v", e)
	}
	if e.WireHash != policy.WireHash(tok) || e.Duration <= 0 {
		t.Errorf("wire hash %x (want %x), duration %v", e.WireHash, policy.WireHash(tok), e.Duration)
	}
	if d := events[1]; d.Decision.Allow || d.WireHash != policy.WireHash("tw_garbage") {
		t.Errorf("denied event = %+v, want the presented token's wire hash %x", d, policy.WireHash("tw_garbage"))
	}
}

func TestObserverPanicDoesNotKillTheServer(t *testing.T) {
	f := newFixture(t)
	s := f.server(t, Config{Observer: ObserverFunc(func(Event) { panic("observer bug") })})
	resp, err := authv3.NewAuthorizationClient(serveGRPC(t, s)).Check(context.Background(), checkRequest("GET", "orders", "/healthz", nil))
	if err != nil || resp.GetOkResponse() == nil {
		t.Fatalf("resp %v, err %v", resp, err)
	}
}

func TestHealthAndReflection(t *testing.T) {
	f := newFixture(t)
	conn := serveGRPC(t, f.server(t, Config{}))
	for _, svc := range []string{"", authorizationService} {
		resp, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health(%q) = %v", svc, resp.GetStatus())
		}
	}
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	if !strings.Contains(strings.Join(names, " "), authorizationService) {
		t.Errorf("reflection lists %v, want %s", names, authorizationService)
	}
}

// Many clients on several connections, mixing allowed and denied checks,
// each answer matching its own request.
func TestCheckGRPCConcurrentClients(t *testing.T) {
	f := newFixture(t)
	s := f.server(t, Config{})
	cases := f.reasonCases(t, fixedNow)
	var names []string
	for n := range cases {
		names = append(names, n)
	}
	const conns, perConn, checks = 4, 8, 150
	var wg sync.WaitGroup
	errs := make(chan error, conns*perConn)
	for range conns {
		client := authv3.NewAuthorizationClient(serveGRPC(t, s))
		for w := range perConn {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range checks {
					tc := cases[names[(w+i)%len(names)]]
					resp, err := client.Check(context.Background(), checkRequest(tc.method, tc.host, tc.path, map[string]string{"authorization": tc.authorization}))
					if err != nil {
						errs <- err
						return
					}
					allowed := resp.GetOkResponse() != nil
					if allowed != (tc.want.Status() == 200) || (!allowed && resp.GetStatus().GetMessage() != string(tc.want)) {
						errs <- fmt.Errorf("%s %s: got %v, want %s", tc.method, tc.path, resp.GetStatus(), tc.want)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// No Check that starts after Set.Add has returned may be allowed.
func TestRevocationIsImmediate(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	s := f.server(t, Config{Now: time.Now})
	tok, claims := f.mint(t, policy.IssueRequest{Subject: "svc", Scopes: []string{"orders:read"}}, now)
	client := authv3.NewAuthorizationClient(serveGRPC(t, s))
	req := checkRequest("GET", "orders", "/orders/1", bearer(tok))

	var revokedFlag atomic.Bool // set once Set.Add has returned
	var allowedBefore, allowedAfter, deniedAfter atomic.Int64
	// waitFor waits for n to reach want: checks done, not time passed.
	waitFor := func(n *atomic.Int64, want int64) {
		deadline := time.Now().Add(30 * time.Second)
		for n.Load() < want && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				after := revokedFlag.Load()
				resp, err := client.Check(context.Background(), req)
				if err != nil {
					t.Error(err)
					return
				}
				switch allowed := resp.GetOkResponse() != nil; {
				case allowed && after:
					allowedAfter.Add(1)
				case allowed:
					allowedBefore.Add(1)
				case after:
					deniedAfter.Add(1)
				default:
					if resp.GetStatus().GetMessage() != string(policy.ReasonRevoked) {
						t.Errorf("denied before revocation: %v", resp.GetStatus())
					}
				}
			}
		}()
	}
	waitFor(&allowedBefore, 100)
	f.set.Add(policy.Revocation{
		ID: policy.NewRevocationID(), Kind: policy.RevokeToken, Target: claims.ID,
		EffectiveAt: time.Now(), Reason: "leaked", Actor: "test", CreatedAt: time.Now(),
	})
	revokedFlag.Store(true)
	waitFor(&deniedAfter, 200)
	cancel()
	wg.Wait()
	if allowedBefore.Load() == 0 || deniedAfter.Load() == 0 {
		t.Fatalf("load did not straddle the revocation: %d allowed before, %d denied after", allowedBefore.Load(), deniedAfter.Load())
	}
	if n := allowedAfter.Load(); n != 0 {
		t.Fatalf("%d checks started after the revocation were allowed", n)
	}
	t.Logf("%d allowed before, %d denied after the revocation", allowedBefore.Load(), deniedAfter.Load())
}

func BenchmarkCheckAllowed(b *testing.B) {
	f := newFixture(b)
	m, err := NewMetrics(newRegistry(), MetricsConfig{})
	if err != nil {
		b.Fatal(err)
	}
	s := f.server(b, Config{Metrics: m, Observer: ObserverFunc(func(Event) {})})
	tok, _ := f.mint(b, policy.IssueRequest{Subject: "svc", Scopes: []string{"orders:read"}}, fixedNow)
	req := checkRequest("GET", "orders", "/orders/1", map[string]string{
		"authorization": "Bearer " + tok, "user-agent": "bench", "accept": "*/*", "x-request-id": "abc",
	})
	if resp, _ := s.Check(context.Background(), req); resp.GetOkResponse() == nil {
		b.Fatal("denied")
	}
	// What the gRPC server runs per check: the answer comes as bytes.
	b.ReportAllocs()
	for b.Loop() {
		if a := s.checkEncoded(req); a.wire == nil {
			b.Fatal("no encoded answer")
		}
	}
}

func BenchmarkCheckDenied(b *testing.B) {
	f := newFixture(b)
	s := f.server(b, Config{})
	req := checkRequest("GET", "orders", "/orders/1", nil)
	b.ReportAllocs()
	for b.Loop() {
		if resp, _ := s.Check(context.Background(), req); resp.GetDeniedResponse() == nil {
			b.Fatal("allowed")
		}
	}
}
