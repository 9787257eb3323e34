package bench

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestIdentityNoopsAnswerTheSameHeaders: the gRPC and HTTP identity no-ops
// send the same four headers, and the bare no-ops none.
func TestIdentityNoopsAnswerTheSameHeaders(t *testing.T) {
	for _, identity := range []bool{false, true} {
		resp, err := NoopAuthorization{Identity: identity}.Check(context.Background(), nil)
		if err != nil || resp.GetStatus().GetCode() != 0 || resp.GetOkResponse() == nil {
			t.Fatalf("identity %v: not an OK answer: %v, %v", identity, resp, err)
		}
		handler := NoopHTTP
		if identity {
			handler = NoopHTTPIdentity
		}
		rec := httptest.NewRecorder()
		handler(rec, httptest.NewRequest("GET", "/envoy/orders/", nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("identity %v: HTTP %d", identity, rec.Code)
		}
		grpcHeaders := resp.GetOkResponse().GetHeaders()
		want := 0
		if identity {
			want = len(identityHeaders)
		}
		if len(grpcHeaders) != want || len(rec.Header()) != want {
			t.Fatalf("identity %v: %d gRPC and %d HTTP headers, want %d", identity, len(grpcHeaders), len(rec.Header()), want)
		}
		for _, h := range grpcHeaders {
			if got := rec.Header().Get(h.GetHeader().GetKey()); got != h.GetHeader().GetValue() {
				t.Errorf("%s: HTTP %q, gRPC %q", h.GetHeader().GetKey(), got, h.GetHeader().GetValue())
			}
		}
	}
}
