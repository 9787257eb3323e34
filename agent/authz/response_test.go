package authz

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/tokenwarden/tokenwarden/policy"
)

func TestIdentityCache(t *testing.T) {
	s := newFixture(t).server(t, Config{})
	dec := func(i int) *policy.Decision {
		return &policy.Decision{Allow: true, TokenID: fmt.Sprintf("jti-%d", i), Subject: fmt.Sprintf("sub-%d", i),
			Scopes: []string{"a", "b"}, WireHash: uint64(i + 1)}
	}
	first := s.identity(dec(0))
	if got := first.http; got[0][0] != "sub-0" || got[1][0] != "jti-0" || got[2][0] != "a b" {
		t.Fatalf("http values %v", got)
	}
	if s.identity(dec(0)) != first {
		t.Error("second look-up (pending) built a new identity")
	}
	for i := 1; i < 200; i++ {
		s.identity(dec(i))
	}
	if n := len(*s.identities.read.Load()); n < 64 {
		t.Fatalf("%d identities promoted after 200 tokens, want at least 64", n)
	}
	if s.identity(dec(0)) != first {
		t.Error("look-up after promotion built a new identity")
	}
	other := dec(0)
	other.WireHash = 999 // same jti, another token string
	if id := s.identity(other); id == first || id.wireHash != 999 {
		t.Error("an identity was shared between two tokens with one jti")
	}
	// A reload withdrew scope b from the token's class: the same token now
	// decides with fewer scopes, and its answer must say so (an application
	// trusting x-tokenwarden-scopes must not see the withdrawn scope).
	narrowed := dec(0)
	narrowed.Scopes = []string{"a"}
	if id := s.identity(narrowed); id == first || id.http[2][0] != "a" || bytes.Equal(id.grpc.wire, first.grpc.wire) {
		t.Errorf("a token whose scopes narrowed kept its old answer (scopes %q)", id.http[2][0])
	}
	d0 := dec(0)
	if n := testing.AllocsPerRun(100, func() { s.identity(d0) }); n != 0 {
		t.Errorf("identity look-up allocates %v times", n)
	}
	for i := range maxIdentities + 1000 {
		s.identity(dec(1000 + i))
	}
	if n := len(*s.identities.read.Load()); n > maxIdentities {
		t.Errorf("%d identities promoted, want at most %d", n, maxIdentities)
	}
	if n := len(s.identities.pending); n > maxIdentities/4 {
		t.Errorf("%d identities pending, want at most %d", n, maxIdentities/4)
	}
}
