package authz

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenwarden/tokenwarden/agent/listen"
	"github.com/tokenwarden/tokenwarden/agent/revocation"
	"github.com/tokenwarden/tokenwarden/policy"
)

// fixedNow is the clock of the fixture: tokens minted against it (such as
// those in the fuzz corpus) stay valid for as long as tests use it.
var fixedNow = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// fixture is a policy, a deterministic signing key, a revocation set and a
// Decider enforcing "prod" with a token cache.
type fixture struct {
	policy  *policy.Policy
	key     policy.SigningKey
	set     *revocation.Set
	cache   *revocation.Cache
	decider *policy.Decider
}

func testKey(seedByte byte, kid string) policy.SigningKey {
	return policy.SigningKey{ID: kid, Private: ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seedByte}, ed25519.SeedSize))}
}

func newFixture(tb testing.TB) *fixture {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "policy.example.yaml"))
	if err != nil {
		tb.Fatal(err)
	}
	return newFixtureFor(tb, data)
}

// newFixtureFor is newFixture with the given policy document.
func newFixtureFor(tb testing.TB, doc []byte) *fixture {
	tb.Helper()
	p, err := policy.Load("policy.yaml", doc)
	if err != nil {
		tb.Fatal(err)
	}
	key := testKey(7, "k_test")
	keys := policy.NewKeySet(map[string]ed25519.PublicKey{key.ID: key.Private.Public().(ed25519.PublicKey)})
	cache, err := revocation.NewCache(1000)
	if err != nil {
		tb.Fatal(err)
	}
	set := revocation.NewSet()
	return &fixture{
		policy: p, key: key, set: set, cache: cache,
		decider: policy.NewDecider(policy.DeciderConfig{Env: "prod", Policy: p, Keys: keys, Cache: cache, Revocations: set}),
	}
}

// mint issues a token within policy at the given time, signed by the
// fixture's key.
func (f *fixture) mint(tb testing.TB, req policy.IssueRequest, at time.Time) (string, policy.Claims) {
	tb.Helper()
	if req.Class == "" {
		req.Class = "service"
	}
	if req.Env == "" {
		req.Env = "prod"
	}
	claims, err := f.policy.Issue(req, at)
	if err != nil {
		tb.Fatal(err)
	}
	return mintClaims(tb, f.key, claims), claims
}

func mintClaims(tb testing.TB, key policy.SigningKey, c policy.Claims) string {
	tb.Helper()
	tok, err := policy.Mint(key, c)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// revoke revokes a token by jti, effective now.
func (f *fixture) revoke(jti string, now time.Time) {
	f.set.Add(policy.Revocation{
		ID: policy.NewRevocationID(), Kind: policy.RevokeToken, Target: jti,
		EffectiveAt: now, Reason: "test", Actor: "test", CreatedAt: now,
	})
}

func (f *fixture) server(tb testing.TB, cfg Config) *Server {
	tb.Helper()
	cfg.Decider = f.decider
	if cfg.Now == nil {
		cfg.Now = func() time.Time { return fixedNow }
	}
	s, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// serveGRPC serves s on a loopback port and returns a client connection;
// both stop when the test ends, and ServeGRPC must return nil.
func serveGRPC(tb testing.TB, s *Server) *grpc.ClientConn {
	tb.Helper()
	lis, err := listen.Open("127.0.0.1:0", 0)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ServeGRPC(ctx, lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("ServeGRPC: %v", err)
		}
	})
	return conn
}

// serveHTTP serves the HTTP mode on a loopback port and returns its base URL.
func serveHTTP(tb testing.TB, s *Server) string {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ServeHTTPMode(ctx, lis) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, net.ErrClosed) {
			tb.Errorf("ServeHTTPMode: %v", err)
		}
	})
	return "http://" + lis.Addr().String()
}

// checkRequest is what Envoy sends for one HTTP request.
func checkRequest(method, host, path string, headers map[string]string) *authv3.CheckRequest {
	h := map[string]string{":authority": host, ":method": method, ":path": path}
	for k, v := range headers {
		h[k] = v
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Host: host, Path: path, Headers: h, Protocol: "HTTP/1.1",
		}},
	}}
}

func bearer(tok string) map[string]string {
	if tok == "" {
		return nil
	}
	return map[string]string{"authorization": "Bearer " + tok}
}
