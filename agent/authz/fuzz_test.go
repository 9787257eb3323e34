package authz

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/proto"

	"github.com/tokenwarden/tokenwarden/policy"
)

var writeCorpus = flag.Bool("write-corpus", false, "rewrite testdata/fuzz/FuzzCheckRequest from the reason cases")

// seedRequests are well-formed CheckRequests covering every reason, plus
// the shapes that must fail closed. Tokens are minted at fixedNow by the
// fixture's deterministic key, so they stay valid under its clock.
func seedRequests(tb testing.TB, f *fixture) map[string]*authv3.CheckRequest {
	seeds := map[string]*authv3.CheckRequest{}
	for name, tc := range f.reasonCases(tb, fixedNow) {
		seeds[name] = checkRequest(tc.method, tc.host, tc.path, map[string]string{"authorization": tc.authorization})
	}
	tok, _ := f.mint(tb, policy.IssueRequest{Subject: "raw", Scopes: []string{"orders:read"}}, fixedNow)
	seeds["raw header map"] = &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Host: "orders", Path: "/orders/1", HeaderMap: &corev3.HeaderMap{
			Headers: []*corev3.HeaderValue{{Key: "authorization", RawValue: []byte("Bearer " + tok)}, {Key: HeaderSubject, Value: "forged"}},
		}},
	}}}
	seeds["empty"] = &authv3.CheckRequest{}
	seeds["forged headers"] = checkRequest("GET", "orders", "/healthz", map[string]string{HeaderSubject: "admin", HeaderTenant: "t"})
	return seeds
}

func TestWriteFuzzCorpus(t *testing.T) {
	if !*writeCorpus {
		t.Skip("run with -write-corpus to regenerate testdata/fuzz/FuzzCheckRequest")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzCheckRequest")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	seeds := seedRequests(t, newFixture(t))
	names := make([]string, 0, len(seeds))
	for n := range seeds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		data, err := proto.MarshalOptions{Deterministic: true}.Marshal(seeds[name])
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(dir, "seed-"+slug(name))
		if err := os.WriteFile(file, fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func slug(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9') {
			b[i] = '-'
		}
	}
	return string(b)
}

// FuzzCheckRequest feeds arbitrary CheckRequest bytes to Check: it must
// never panic, always answer OK, UNAUTHENTICATED or PERMISSION_DENIED with
// the matching HTTP response, and allow only what Decide allows.
func FuzzCheckRequest(f *testing.F) {
	fx := newFixture(f)
	s := fx.server(f, Config{})
	for _, req := range seedRequests(f, fx) {
		data, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req authv3.CheckRequest
		if proto.Unmarshal(data, &req) != nil {
			return // gRPC refuses it before Check is called
		}
		resp, err := s.Check(context.Background(), &req)
		if err != nil || resp == nil {
			t.Fatalf("Check = %v, %v; want a response and no error", resp, err)
		}
		if _, err := proto.Marshal(resp); err != nil {
			t.Fatalf("response does not marshal: %v", err)
		}
		switch c := resp.GetStatus().GetCode(); c {
		case 0:
			if resp.GetOkResponse() == nil {
				t.Fatalf("OK without ok_response: %v", resp)
			}
			// Cross-check with Decide on the same request.
			h := req.GetAttributes().GetRequest().GetHttp()
			if len(h.GetHeaders()) > 0 {
				dec := fx.decider.Decide(policy.Request{
					Token:  policy.BearerToken(h.GetHeaders()["authorization"]),
					Method: h.GetMethod(), Host: h.GetHost(), Path: h.GetPath(),
				}, fixedNow)
				if !dec.Allow {
					t.Fatalf("allowed a request Decide denies (%s)", dec.Reason)
				}
			}
		case 7, 16:
			d := resp.GetDeniedResponse()
			if d == nil {
				t.Fatalf("denied without denied_response: %v", resp)
			}
			want := 403
			if c == 16 {
				want = 401
			}
			if int(d.GetStatus().GetCode()) != want {
				t.Fatalf("gRPC code %d with HTTP %d", c, d.GetStatus().GetCode())
			}
		default:
			t.Fatalf("status code %d; want 0, 7 or 16", c)
		}
	})
}
