package authz

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/agent/listen"
	"github.com/tokenwarden/tokenwarden/policy"
)

// httpCheck builds the check request a proxy of each kind, configured for
// service, sends for one original request.
func httpCheck(t *testing.T, base, endpoint, service, method, host, path, authorization string) *http.Request {
	t.Helper()
	var req *http.Request
	var err error
	switch endpoint {
	case PathEnvoy:
		req, err = http.NewRequest(method, base+PathEnvoy, nil)
		if err == nil {
			// Opaque: the target goes out as written, '#' included.
			req.URL.Opaque, req.Host = PathEnvoy+"/"+service+path, host
		}
	case PathNginx:
		req, err = http.NewRequest("GET", base+PathNginx+"/"+service, nil)
		if err == nil {
			req.Header.Set("X-Original-Method", method)
			req.Header.Set("X-Original-URI", path)
			req.Header.Set("X-Original-Host", host)
			req.Header.Set("X-Real-IP", "10.0.0.7")
		}
	case PathForwardAuth:
		req, err = http.NewRequest("GET", base+PathForwardAuth+"/"+service, nil)
		if err == nil {
			req.Host = host
			req.Header.Set("X-Forwarded-Method", method)
			req.Header.Set("X-Forwarded-Uri", path)
			req.Header.Set("X-Forwarded-Host", host)
			req.Header.Set("X-Forwarded-For", "10.0.0.7")
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	return req
}

func TestHTTPModeReasons(t *testing.T) {
	f := newFixture(t)
	base := serveHTTP(t, f.server(t, Config{}))
	cases := f.reasonCases(t, fixedNow)
	for _, endpoint := range []string{PathEnvoy, PathNginx, PathForwardAuth} {
		for name, tc := range cases {
			t.Run(endpoint+"/"+name, func(t *testing.T) {
				resp, err := http.DefaultClient.Do(httpCheck(t, base, endpoint, "orders", tc.method, tc.host, tc.path, tc.authorization))
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tc.want.Status() {
					t.Fatalf("status %d, want %d (body %s)", resp.StatusCode, tc.want.Status(), body)
				}
				if tc.want.Status() != 200 {
					assertHTTPDenial(t, resp, body, tc.want)
					return
				}
				if tc.want == policy.ReasonAllowed {
					if got := resp.Header.Get(HeaderSubject); got != "orders-reader" {
						t.Errorf("subject = %q", got)
					}
					if got := resp.Header.Get(HeaderScopes); got != "orders:read" {
						t.Errorf("scopes = %q", got)
					}
					if got := resp.Header.Get(HeaderTenant); got != "acme" {
						t.Errorf("tenant = %q", got)
					}
					if got := resp.Header.Get(HeaderTokenID); len(got) != 26 {
						t.Errorf("token id = %q", got)
					}
				}
				if got := resp.Header.Get(HeaderRemove); got != "" {
					t.Errorf("%s = %q, want none by default", HeaderRemove, got)
				}
			})
		}
	}
}

func assertHTTPDenial(t *testing.T, resp *http.Response, body []byte, r policy.Reason) {
	t.Helper()
	if got := resp.Header.Get("WWW-Authenticate"); got != r.Challenge() {
		t.Errorf("WWW-Authenticate = %q, want %q", got, r.Challenge())
	}
	if got := resp.Header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type = %q", got)
	}
	var b struct{ Error, Message string }
	if err := json.Unmarshal(body, &b); err != nil || b.Error != string(r) {
		t.Errorf("body %s (%v), want error %q", body, err, r)
	}
}

func TestHTTPModeFailsClosed(t *testing.T) {
	f := newFixture(t)
	tok, _ := f.mint(t, policy.IssueRequest{Subject: "svc", Scopes: []string{"orders:read"}}, fixedNow)
	tests := map[string]struct {
		method, target string
		headers        http.Header
		want           int
		missing        string // what the proxy_misconfigured warning names
	}{
		"unknown endpoint":                     {"GET", "/orders/1", nil, 403, missingEndpoint},
		"envoy without a service":              {"GET", PathEnvoy, nil, 403, missingEndpoint},
		"envoy without path after service":     {"GET", PathEnvoy + "/orders", nil, 403, missingService},
		"envoy with an empty service":          {"GET", PathEnvoy + "//orders/1", nil, 403, missingService},
		"envoy prefix is a whole segment":      {"GET", PathEnvoy + "x/orders/orders/1", nil, 403, missingEndpoint},
		"nginx without a service":              {"GET", PathNginx, http.Header{"X-Original-Method": {"GET"}, "X-Original-Uri": {"/orders/1"}, "X-Original-Host": {"orders"}}, 403, missingEndpoint},
		"nginx with an empty service":          {"GET", PathNginx + "/", http.Header{"X-Original-Method": {"GET"}, "X-Original-Uri": {"/orders/1"}, "X-Original-Host": {"orders"}}, 403, missingService},
		"nginx without X-Original-Method":      {"GET", PathNginx + "/orders", http.Header{"X-Original-Uri": {"/orders/1"}, "X-Original-Host": {"orders"}}, 403, "X-Original-Method"},
		"nginx without X-Original-URI":         {"GET", PathNginx + "/orders", http.Header{"X-Original-Method": {"GET"}, "X-Original-Host": {"orders"}}, 403, "X-Original-Uri"},
		"nginx with two X-Original-URI":        {"GET", PathNginx + "/orders", http.Header{"X-Original-Method": {"GET"}, "X-Original-Uri": {"/healthz", "/orders/1"}, "X-Original-Host": {"orders"}}, 403, "X-Original-Uri"},
		"forward-auth without a service":       {"GET", PathForwardAuth, http.Header{"X-Forwarded-Method": {"GET"}, "X-Forwarded-Uri": {"/healthz"}, "X-Forwarded-Host": {"orders"}}, 403, missingEndpoint},
		"forward-auth without X-Forwarded-Uri": {"GET", PathForwardAuth + "/orders", http.Header{"X-Forwarded-Method": {"GET"}, "X-Forwarded-Host": {"orders"}}, 403, "X-Forwarded-Uri"},
		// A client of Caddy cannot describe its request with nginx's headers.
		"forward-auth ignores nginx headers": {"GET", PathForwardAuth + "/orders", http.Header{"X-Original-Method": {"GET"}, "X-Original-Uri": {"/healthz"}, "X-Original-Host": {"orders"}}, 403, "X-Forwarded-Method"},
		"headers over the limit": {"GET", PathNginx + "/orders", http.Header{
			"X-Original-Method": {"GET"}, "X-Original-Uri": {"/healthz"}, "X-Original-Host": {"orders"},
			"X-Padding": {strings.Repeat("p", DefaultMaxHeaderBytes+8<<10)},
		}, 431, ""},
		"control: nginx allowed": {"GET", PathNginx + "/orders", http.Header{
			"X-Original-Method": {"GET"}, "X-Original-Uri": {"/orders/1"}, "X-Original-Host": {"orders"}, "Authorization": {"Bearer " + tok},
		}, 200, ""},
	}
	var logs syncBuffer
	base := serveHTTP(t, f.server(t, Config{Logger: slog.New(slog.NewJSONHandler(&logs, nil))}))
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, base+tc.target, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = "orders"
			for k, v := range tc.headers {
				req.Header[k] = v
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d (body %s)", resp.StatusCode, tc.want, body)
			}
			if tc.want == 403 {
				assertHTTPDenial(t, resp, body, policy.ReasonProxyMisconfigured)
				// Each case is a kind of its own or the first of its kind
				// within the warning interval: each is logged.
				if !slices.ContainsFunc(logs.records(t), func(r map[string]any) bool {
					return r["msg"] != nil && r["missing"] == tc.missing && r["level"] == "WARN"
				}) {
					t.Errorf("no warning naming %q in the log:\n%s", tc.missing, logs.String())
				}
			}
		})
	}
}

func TestHTTPModeRemovals(t *testing.T) {
	f := newFixture(t)
	tok, _ := f.mint(t, policy.IssueRequest{Subject: "svc", Scopes: []string{"orders:read"}}, fixedNow)
	tests := map[string]struct {
		strip  bool
		path   string
		forged http.Header
		want   string
	}{
		"strip authorization":                {strip: true, path: "/orders/1", want: "authorization"},
		"forged tenant removed, subject set": {path: "/orders/1", forged: http.Header{"X-Tokenwarden-Tenant": {"x"}, "X-Tokenwarden-Subject": {"admin"}}, want: "x-tokenwarden-tenant"},
		"public route removes forged":        {strip: true, path: "/healthz", forged: http.Header{"X-Tokenwarden-Subject": {"admin"}}, want: "authorization, x-tokenwarden-subject"},
		"underscore spelling removed":        {path: "/orders/1", forged: http.Header{"X_tokenwarden_subject": {"admin"}}, want: "x_tokenwarden_subject"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			base := serveHTTP(t, f.server(t, Config{StripAuthorization: tc.strip}))
			req := httpCheck(t, base, PathEnvoy, "orders", "GET", "orders", tc.path, "Bearer "+tok)
			for k, v := range tc.forged {
				req.Header[k] = v
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if got := resp.Header.Get(HeaderRemove); got != tc.want {
				t.Errorf("%s = %q, want %q", HeaderRemove, got, tc.want)
			}
			if tc.path != "/healthz" && resp.Header.Get(HeaderSubject) != "svc" {
				t.Errorf("subject = %q, want svc", resp.Header.Get(HeaderSubject))
			}
		})
	}
}

func TestHTTPModeSource(t *testing.T) {
	f := newFixture(t)
	sources := make(chan string, 3)
	base := serveHTTP(t, f.server(t, Config{Observer: ObserverFunc(func(e Event) { sources <- e.Source })}))
	for endpoint, want := range map[string]string{PathNginx: "10.0.0.7", PathForwardAuth: "10.0.0.7", PathEnvoy: "127.0.0.1"} {
		resp, err := http.DefaultClient.Do(httpCheck(t, base, endpoint, "orders", "GET", "orders", "/healthz", ""))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := <-sources; got != want {
			t.Errorf("%s: source %q, want %q", endpoint, got, want)
		}
	}
}

func TestServeStopsWhenContextEnds(t *testing.T) {
	f := newFixture(t)
	s := f.server(t, Config{})
	for name, serve := range map[string]func(context.Context) error{
		"grpc": func(ctx context.Context) error {
			lis, err := listen.Open("127.0.0.1:0", 0)
			if err != nil {
				return err
			}
			return s.ServeGRPC(ctx, lis)
		},
		"http": func(ctx context.Context) error {
			lis, err := listen.Open("127.0.0.1:0", 0)
			if err != nil {
				return err
			}
			return s.ServeHTTPMode(ctx, lis)
		},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- serve(ctx) }()
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("serve returned %v, want nil", err)
			}
		})
	}
}

func BenchmarkHTTPCheckAllowed(b *testing.B) {
	f := newFixture(b)
	s := f.server(b, Config{})
	tok, _ := f.mint(b, policy.IssueRequest{Subject: "svc", Scopes: []string{"orders:read"}}, fixedNow)
	req, _ := http.NewRequest("GET", "http://authz"+PathEnvoy+"/orders/orders/1", nil)
	req.RequestURI = PathEnvoy + "/orders/orders/1"
	req.RemoteAddr = "127.0.0.1:40000"
	req.Host = "orders"
	req.Header.Set("Authorization", "Bearer "+tok)
	h := s.Handler()
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, req)
		if w.status != 200 {
			b.Fatal(w.status)
		}
	}
}

type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(s int)           { w.status = s }

// TestHTTPModeHostIsTheServices attacks each endpoint with a request whose
// host names another service: the endpoint's service (the proxy's
// configuration) decides, and a host that is not one of its own is denied,
// never judged under the other service's routes.
func TestHTTPModeHostIsTheServices(t *testing.T) {
	f := newFixture(t)
	inv, _ := f.mint(t, policy.IssueRequest{Subject: "svc", Scopes: []string{"inventory:read", "orders:read"}}, fixedNow)
	base := serveHTTP(t, f.server(t, Config{}))
	tests := map[string]struct {
		host, path string
		want       policy.Reason
	}{
		"own host":                        {"orders", "/orders/1", policy.ReasonAllowed},
		"own host, case and port":         {"Orders.Default.Svc.Cluster.Local:8080", "/orders/1", policy.ReasonAllowed},
		"other service's host and route":  {"inventory", "/items/1", policy.ReasonNoMatchingRoute},
		"other service's host, own route": {"inventory", "/orders/1", policy.ReasonNoMatchingRoute},
		"other service's public route":    {"inventory.default.svc.cluster.local", "/healthz", policy.ReasonNoMatchingRoute},
		"unknown host":                    {"evil.example", "/orders/1", policy.ReasonNoMatchingRoute},
		"trailing dot":                    {"orders.", "/orders/1", policy.ReasonNoMatchingRoute},
		"port that is not a number":       {"orders:x", "/orders/1", policy.ReasonNoMatchingRoute},
	}
	for _, endpoint := range []string{PathEnvoy, PathNginx, PathForwardAuth} {
		for name, tc := range tests {
			t.Run(endpoint+"/"+name, func(t *testing.T) {
				resp, err := http.DefaultClient.Do(httpCheck(t, base, endpoint, "orders", "GET", tc.host, tc.path, "Bearer "+inv))
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tc.want.Status() {
					t.Fatalf("status %d, want %d (body %s)", resp.StatusCode, tc.want.Status(), body)
				}
				if tc.want != policy.ReasonAllowed {
					assertHTTPDenial(t, resp, body, tc.want)
				}
			})
		}
	}
	// nginx and Caddy always send the host header; without one (or with
	// two), no host is the service's.
	for name, hosts := range map[string][]string{"absent": nil, "repeated": {"orders", "orders"}} {
		for endpoint, header := range map[string]string{PathNginx: "X-Original-Host", PathForwardAuth: "X-Forwarded-Host"} {
			t.Run(endpoint+"/host header "+name, func(t *testing.T) {
				req := httpCheck(t, base, endpoint, "orders", "GET", "orders", "/orders/1", "Bearer "+inv)
				req.Header[header] = hosts
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != 403 {
					t.Fatalf("status %d, want 403", resp.StatusCode)
				}
			})
		}
	}
}
