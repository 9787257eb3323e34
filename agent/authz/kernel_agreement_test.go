package authz

import (
	"context"
	"strings"
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

// TestBorrowedSignatureIsRefused attacks the wire identity, which keys the
// kernel's counters and revoked set: a client builds tokens around a victim
// token's signature segment to have its requests counted under the victim
// (and the victim revoked by the anomaly detector), or around its own
// signature to dodge a revocation. Every such token is refused by ext_authz;
// the kernel counts it under the victim only when it ends with the victim's
// signature segment, and no byte before the signature moves the identity.
func TestBorrowedSignatureIsRefused(t *testing.T) {
	f := newFixture(t)
	victim, _ := f.mint(t, policy.IssueRequest{Subject: "victim", Scopes: []string{"orders:read"}}, fixedNow)
	attacker, _ := f.mint(t, policy.IssueRequest{Subject: "attacker", Scopes: []string{"orders:read"}}, fixedNow)
	vDot, aDot := strings.LastIndexByte(victim, '.'), strings.LastIndexByte(attacker, '.')
	victimSig := victim[vDot+1:]
	flipped := []byte(victimSig)
	flipped[3] ^= 'A' ^ 'B' // one signature character (6 bits) changed
	s := f.server(t, Config{})

	for _, tc := range []struct {
		name  string
		token string
		under string // whose identity the kernel counts it under, if anyone's
	}{
		{"attacker's header and claims, victim's signature", attacker[:aDot+1] + victimSig, victim},
		{"garbage claims, victim's signature", "tw_eyJhbGciOiJFZERTQSJ9.e30." + victimSig, victim},
		{"victim's signature alone", victimSig, victim},
		// The identity is read 86 characters from the end: characters
		// appended after the signature move it off the victim's.
		{"victim's token, characters appended", victim + "AAAA", ""},
		{"victim's token, one signature character changed", victim[:vDot+1] + string(flipped), ""},
		// Dodging a revocation of one's own token by changing the claims
		// does not work either: the identity stays the attacker's.
		{"victim's header and claims, attacker's signature", victim[:vDot+1] + attacker[aDot+1:], attacker},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := s.Check(context.Background(), checkRequest("GET", "orders", "/orders/1", map[string]string{"authorization": "Bearer " + tc.token}))
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetOkResponse() != nil {
				t.Fatal("ext_authz allowed a token built around a borrowed signature")
			}
			hash, found, _, _ := bpf.ParseRequest([]byte("GET /orders/1 HTTP/1.1\r\nHost: orders\r\nAuthorization: Bearer " + tc.token + "\r\n\r\n"))
			if !found {
				t.Fatal("the kernel would not count the request at all")
			}
			for who, tok := range map[string]string{"victim": victim, "attacker": attacker} {
				if got, want := hash == policy.WireHash(tok), tok == tc.under; got != want {
					t.Errorf("counted under the %s: %v, want %v", who, got, want)
				}
			}
		})
	}
}
