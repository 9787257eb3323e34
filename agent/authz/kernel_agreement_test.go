package authz

import (
	"context"
	"testing"

	"github.com/tokenwarden/tokenwarden/bpf"
	"github.com/tokenwarden/tokenwarden/policy"
)

// TestAllowedTokensAreSeenByTheKernel: the Authorization header of every
// request ext_authz allows reaches the application as it came (it is kept by
// default), and the kernel side must recognize the token there to count it
// and, once revoked, drop it. So whatever header value ext_authz accepts, the
// kernel's parser must find in it the same token (same wire hash). A value
// ext_authz reads more leniently than the kernel ("Bearer<SP><TAB>tok") would
// let a token be used unmetered.
func TestAllowedTokensAreSeenByTheKernel(t *testing.T) {
	f := newFixture(t)
	tok, _ := f.mint(t, policy.IssueRequest{Subject: "svc", Scopes: []string{"orders:read"}}, fixedNow)
	var last Event
	s := f.server(t, Config{Observer: ObserverFunc(func(ev Event) { last = ev })})
	values := []string{
		"Bearer " + tok,
		"bearer " + tok,
		"BEARER " + tok,
		"Bearer   " + tok,
		"Bearer " + tok + " ",
		"Bearer " + tok + "\t",
		"Bearer \t" + tok,
		"Bearer \t " + tok,
		"Bearer \u00a0" + tok,
		"Bearer \v" + tok,
		"Bearer \f" + tok,
		"Bearer\t" + tok,
		"Bearer " + tok + "\u00a0",
		"Bearer " + tok + "\u0085",
	}
	allowed := 0
	for _, v := range values {
		resp, err := s.Check(context.Background(), checkRequest("GET", "orders", "/orders/1", map[string]string{"authorization": v}))
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetOkResponse() == nil {
			continue
		}
		allowed++
		hash, found, _, _ := bpf.ParseRequest([]byte("GET /orders/1 HTTP/1.1\r\nHost: orders\r\nAuthorization: " + v + "\r\n\r\n"))
		if !found || hash != last.Decision.WireHash || hash != bpf.HashToken(tok) {
			t.Errorf("Authorization %q: allowed, but the kernel finds token %v with hash %x (decision %x)", v, found, hash, last.Decision.WireHash)
		}
	}
	if allowed < 5 {
		t.Errorf("only %d of the plain spellings allowed", allowed)
	}
}
