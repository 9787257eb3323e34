// Package bench is tokenwarden's benchmark suite: fixtures, floors (no-op
// servers) and request shapes shared by the programs under bench/cmd, which
// `make bench` runs to print every figure the README quotes.
package bench

import (
	"bufio"
	"crypto/ed25519"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenwarden/tokenwarden/agent/revocation"
	"github.com/tokenwarden/tokenwarden/policy"
)

// AuthzWorld is what the authz benchmark enforces: a policy for "prod", a
// signing key, live tokens of the service class and a revocation set of
// rules that none of those tokens match.
type AuthzWorld struct {
	Policy *policy.Policy
	Keys   *policy.KeySet
	Tokens []string
	Set    *revocation.Set
}

// NewAuthzWorld mints tokens (orders:read, one subject each) and fills the
// revocation set with revocations rules: mostly jti rules for other tokens,
// plus subject rules on the benchmark's own subjects that cover only tokens
// issued an hour earlier, so that every look-up walks a real list.
func NewAuthzWorld(policyYAML []byte, tokens, revocations int, now time.Time) (*AuthzWorld, error) {
	p, err := policy.Load("policy", policyYAML)
	if err != nil {
		return nil, err
	}
	key, err := policy.NewSigningKey()
	if err != nil {
		return nil, err
	}
	w := &AuthzWorld{
		Policy: p,
		Keys:   policy.NewKeySet(map[string]ed25519.PublicKey{key.ID: key.Private.Public().(ed25519.PublicKey)}),
		Set:    revocation.NewSet(),
	}
	for i := range tokens {
		c, err := p.Issue(policy.IssueRequest{
			Subject: fmt.Sprintf("svc-%04d", i), Class: "service", Env: "prod",
			Scopes: []string{"orders:read"}, Tenant: fmt.Sprintf("tenant-%d", i%10),
		}, now)
		if err != nil {
			return nil, err
		}
		tok, err := policy.Mint(key, c)
		if err != nil {
			return nil, err
		}
		w.Tokens = append(w.Tokens, tok)
	}
	for i := range revocations {
		r := policy.Revocation{
			ID: policy.NewRevocationID(), Kind: policy.RevokeToken, Target: policy.NewTokenID(),
			EffectiveAt: now.Add(-time.Minute), Reason: "benchmark", Actor: "bench", CreatedAt: now,
		}
		if i < tokens {
			r.Kind, r.Target, r.IssuedBefore = policy.RevokeSubject, fmt.Sprintf("svc-%04d", i), now.Add(-time.Hour)
		}
		w.Set.Add(r)
	}
	return w, nil
}

// Decider enforces the world in prod through cache, counting its use in
// stats (either may be nil).
func (w *AuthzWorld) Decider(cache policy.TokenCache, stats policy.CacheStats) *policy.Decider {
	return policy.NewDecider(policy.DeciderConfig{Env: "prod", Policy: w.Policy, Keys: w.Keys, Cache: cache, CacheStats: stats, Revocations: w.Set})
}

// WriteTokens writes one token a line.
func WriteTokens(out io.Writer, tokens []string) error {
	bw := bufio.NewWriter(out)
	for _, t := range tokens {
		bw.WriteString(t)
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

// ReadTokens reads what WriteTokens wrote.
func ReadTokens(in io.Reader) ([]string, error) {
	var tokens []string
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 16<<10), policy.MaxTokenBytes+1)
	for sc.Scan() {
		if t := strings.TrimSpace(sc.Text()); t != "" {
			tokens = append(tokens, t)
		}
	}
	return tokens, sc.Err()
}

// CheckRequest is what an Envoy sidecar's ext_authz filter sends for GET
// /orders/<i> with token: the peers' socket addresses, the request time,
// the request attributes, and the headers as Envoy forwards them (the
// pseudo-headers, the client's, and the x-request-id and
// x-forwarded-proto Envoy adds).
func CheckRequest(token string, i int) *authv3.CheckRequest {
	path := "/orders/" + strconv.Itoa(i)
	id := "7f1c1a52-9d0e-4c47-b3a9-" + strconv.Itoa(100000000000+i)
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      &authv3.AttributeContext_Peer{Address: socketAddress("10.244.1."+strconv.Itoa(2+i%250), uint32(32768+i%28000))},
		Destination: &authv3.AttributeContext_Peer{Address: socketAddress("10.244.2.17", 8080)},
		Request: &authv3.AttributeContext_Request{
			Time: &timestamppb.Timestamp{Seconds: 1_800_000_000 + int64(i), Nanos: 1000 * int32(i%1000)},
			Http: &authv3.AttributeContext_HttpRequest{
				Id: id, Method: "GET", Host: "orders", Path: path, Scheme: "http", Protocol: "HTTP/1.1",
				Headers: map[string]string{
					":authority": "orders", ":method": "GET", ":path": path, ":scheme": "http",
					"accept": "application/json", "user-agent": "orders-client/1.4",
					"x-request-id": id, "x-forwarded-proto": "http", "authorization": "Bearer " + token,
				},
			},
		},
	}}
}

func socketAddress(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// HTTPCheck is what Envoy's HTTP ext_authz (path_prefix /envoy/orders) sends for
// GET /orders/<i> with token, as HTTP/1.1 request bytes.
func HTTPCheck(token string, i int) []byte {
	id := strconv.Itoa(i)
	return []byte("GET /envoy/orders/orders/" + id + " HTTP/1.1\r\n" +
		"Host: orders\r\n" +
		"Authorization: Bearer " + token + "\r\n" +
		"Accept: application/json\r\n" +
		"User-Agent: orders-client/1.4\r\n" +
		"X-Request-Id: 7f1c1a52-9d0e-4c47-b3a9-" + strconv.Itoa(100000000000+i) + "\r\n" +
		"X-Forwarded-Proto: http\r\n\r\n")
}
