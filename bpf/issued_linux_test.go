//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpf

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/issuer"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/store/bolt"
	"github.com/tokenwarden/tokenwarden/policy"
)

// wideScopes is how many scopes the "wide" class of issuedPolicy holds:
// every scope together makes a token over policy.MaxTokenBytes.
const wideScopes = 300

// issuedPolicy is a policy whose "wide" class holds enough long scopes for
// a token of any size up to and past the limit.
func issuedPolicy(t *testing.T) *policy.Policy {
	t.Helper()
	var scopes []string
	for i := range wideScopes {
		scopes = append(scopes, fmt.Sprintf("orders:scope-%04d-abcdefghij", i))
	}
	doc := fmt.Sprintf(`version: 1
issuer: tokenwarden.test
environments:
  prod: { max_ttl: 24h }
classes:
  wide:
    scopes: [%s]
    default_ttl: 1h
    max_ttl: 2h
    environments: [prod]
services:
  orders:
    hosts: [orders]
    routes:
      - { path: "/orders/**", scopes: [orders:scope-0000-abcdefghij] }
`, strings.Join(scopes, ", "))
	p, err := policy.Load("issued.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// realIssuer is the agent's issuer over a bolt store and an audit log in
// temporary directories.
func realIssuer(t *testing.T, p *policy.Policy) *issuer.Issuer {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), bolt.FileName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	log, err := audit.Open(audit.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	kek := make([]byte, store.KEKSize)
	if _, err := rand.Read(kek); err != nil {
		t.Fatal(err)
	}
	iss, err := issuer.New(context.Background(), issuer.Config{
		Store: st, KEK: kek, Env: "prod", Audit: log,
		Policy: func() *policy.Policy { return p },
	})
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

// TestIssuedLongTokens attacks the kernel side with the longest tokens the
// agent issues: a token of the 1,124 bytes the kernel once skipped, and the
// largest the issuer will mint, are each counted under their wire identity
// by the real program on lo and dropped once revoked. One scope more than
// the largest is refused at issuance, naming the limit: no token the agent
// issues is beyond what the kernel meters.
func TestIssuedLongTokens(t *testing.T) {
	p := issuedPolicy(t)
	iss := realIssuer(t, p)
	class, _ := p.Class("wide")
	issue := func(n int) (issuer.Issued, error) {
		return iss.Issue(context.Background(), policy.IssueRequest{Subject: "svc-long", Class: "wide", Scopes: class.Scopes[:n]}, audit.ActorSystem)
	}

	// The most scopes the issuer accepts: a binary search over the count.
	lo, hi := 1, wideScopes // issue(lo) succeeds, issue(hi) is refused
	if _, err := issue(hi); err == nil {
		t.Fatalf("a token with %d scopes was issued: the policy is too small for this test", hi)
	}
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if _, err := issue(mid); err == nil {
			lo = mid
		} else {
			hi = mid
		}
	}
	largest, err := issue(lo)
	if err != nil {
		t.Fatal(err)
	}
	_, err = issue(hi)
	var refused *policy.Refusal
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), fmt.Sprint(policy.MaxTokenBytes)) {
		t.Fatalf("issuing %d scopes: %v, want a refusal naming the %d-byte limit", hi, err, policy.MaxTokenBytes)
	}
	if n := len(largest.Token); n > MaxTokenLen || n < MaxTokenLen-64 {
		t.Fatalf("largest issued token is %d bytes, want just under %d", n, MaxTokenLen)
	}

	// A token of about 1,124 bytes: the first count of scopes past it.
	var mid issuer.Issued
	for n := 1; ; n++ {
		if mid, err = issue(n); err != nil {
			t.Fatal(err)
		}
		if len(mid.Token) >= 1124 {
			break
		}
	}

	s := loadSentry(t, Config{})
	ns := newNetns(t)
	if err := ns.do(func() error { return s.AttachTCX("lo", Egress) }); err != nil {
		t.Fatal(err)
	}
	events := collectEvents(t, s)
	var ln net.Listener
	if err := ns.do(func() (err error) { ln, err = net.Listen("tcp4", "127.0.0.1:0"); return err }); err != nil {
		t.Fatal(err)
	}
	ts := startTokenServer(t, ln)

	for _, tok := range []issuer.Issued{mid, largest} {
		t.Run(fmt.Sprintf("%dB", len(tok.Token)), func(t *testing.T) {
			if tok.Record.WireHash != policy.WireHash(tok.Token) {
				t.Fatalf("stored identity %#x, token's %#x", tok.Record.WireHash, policy.WireHash(tok.Token))
			}
			request := "GET /orders/1 HTTP/1.1\r\nHost: orders\r\nUser-Agent: t\r\nAuthorization: Bearer " + tok.Token + "\r\nConnection: close\r\n\r\n"
			readCounts(t, s)
			if err := rawRequest(ns, "tcp4", ts.addr, request); err != nil {
				t.Fatal(err)
			}
			if c := readCounts(t, s)[tok.Record.WireHash]; c.Requests != 1 {
				t.Fatalf("the kernel counted %+v under the token's identity, want 1 request", c)
			}

			if err := s.Revoke(tok.Record.WireHash); err != nil {
				t.Fatal(err)
			}
			defer s.Unrevoke(tok.Record.WireHash)
			if err := rawRequestTimeout(ns, "tcp4", ts.addr, request, 500*time.Millisecond); err == nil {
				t.Fatal("the request with the revoked token was answered")
			}
			if ev := waitEvent(t, events, 5*time.Second); ev.Hash != tok.Record.WireHash {
				t.Errorf("drop event for %#x, want %#x", ev.Hash, tok.Record.WireHash)
			}
			drainEvents(events)
		})
	}
}
