package authz

import (
	"io"
	"net/http"
	"sync/atomic"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/tokenwarden/tokenwarden/policy"
)

// admitter is a freshness gate the test opens and closes.
type admitter struct{ stale atomic.Bool }

func (a *admitter) Admit() bool { return !a.stale.Load() }

// TestStaleStoreDeniesEveryCheck: a node whose view of the store is past
// its bound under --stale-action=deny denies a valid token with
// store_unavailable (503, gRPC UNAVAILABLE, no challenge) over gRPC and
// every HTTP mode endpoint, and decides normally once fresh again.
func TestStaleStoreDeniesEveryCheck(t *testing.T) {
	f := newFixture(t)
	gate := &admitter{}
	s := f.server(t, Config{Freshness: gate})
	client := authv3.NewAuthorizationClient(serveGRPC(t, s))
	base := serveHTTP(t, s)
	tok, _ := f.mint(t, policy.IssueRequest{Subject: "orders-reader", Scopes: []string{"orders:read"}}, fixedNow)
	grpcCheck := func() *authv3.CheckResponse {
		t.Helper()
		resp, err := client.Check(t.Context(), checkRequest("GET", "orders", "/orders/42", bearer(tok)))
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if resp := grpcCheck(); resp.GetOkResponse() == nil {
		t.Fatalf("fresh: denied %v", resp.GetStatus())
	}
	gate.stale.Store(true)
	assertGRPCDenial(t, grpcCheck(), policy.ReasonStoreUnavailable)
	for _, endpoint := range []string{PathEnvoy, PathNginx, PathForwardAuth} {
		resp, err := http.DefaultClient.Do(httpCheck(t, base, endpoint, "orders", "GET", "orders", "/orders/42", "Bearer "+tok))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("%s: status %d, want 503", endpoint, resp.StatusCode)
			continue
		}
		assertHTTPDenial(t, resp, body, policy.ReasonStoreUnavailable)
	}
	gate.stale.Store(false)
	if resp := grpcCheck(); resp.GetOkResponse() == nil {
		t.Errorf("fresh again: denied %v", resp.GetStatus())
	}
}
