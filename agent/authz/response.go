package authz

import (
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tokenwarden/tokenwarden/policy"
)

// denial is the answer to a denied check with one reason, built once by New
// and shared, read-only, by every check denied for that reason.
type denial struct {
	status    int
	answer    answer
	challenge []string // WWW-Authenticate, as an http.Header value
	body      []byte   // {"error": reason, "message": ...}
}

var (
	contentTypeJSON = []string{"application/json"}
	// overwrite makes Envoy replace a header the client sent instead of
	// appending to it. Envoy reads the deprecated append field first (and
	// older Envoys only it), so that is the one set.
	overwrite = wrapperspb.Bool(false)
	okStatus  = &status.Status{Code: int32(code.Code_OK)}
)

func newDenial(r policy.Reason) *denial {
	body, err := json.Marshal(struct {
		Error   policy.Reason `json:"error"`
		Message string        `json:"message"`
	}{r, r.Message()})
	if err != nil {
		panic("authz: marshal deny body: " + err.Error()) // two strings cannot fail
	}
	grpcCode := code.Code_PERMISSION_DENIED
	switch r.Status() {
	case 401:
		grpcCode = code.Code_UNAUTHENTICATED
	case 503:
		// Still a check response, not a failed call: Envoy denies with
		// the 503 and body below whatever its failure_mode_allow says.
		grpcCode = code.Code_UNAVAILABLE
	}
	headers := []*corev3.HeaderValueOption{
		{Header: &corev3.HeaderValue{Key: "content-type", Value: contentTypeJSON[0]}, Append: overwrite},
	}
	if c := r.Challenge(); c != "" {
		headers = append(headers, &corev3.HeaderValueOption{
			//lint:ignore SA1019 ext_authz answers honour append; an explicit false overwrites
			Header: &corev3.HeaderValue{Key: "www-authenticate", Value: c}, Append: overwrite,
		})
	}
	return &denial{
		status: r.Status(),
		answer: encoded(&authv3.CheckResponse{
			Status: &status.Status{Code: int32(grpcCode), Message: string(r)},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
				Status:  &typev3.HttpStatus{Code: typev3.StatusCode(r.Status())},
				Headers: headers,
				Body:    string(body),
			}},
		}),
		challenge: []string{r.Challenge()},
		body:      body,
	}
}

// identity is the allowed answer for one token: the gRPC response and the
// HTTP header values, built on the token's first allowed check and shared,
// read-only, by every later one. Only the token's claims go into it, and a
// token's claims never change; the wire hash tells two tokens apart should
// an issuer ever reuse a jti. Its effective scopes do change (a policy
// reload that withdraws a scope from its class narrows them), so an
// identity is only reused while the decision's scopes are the same.
type identity struct {
	wireHash uint64
	scopes   []string // the decision's scopes it was built from
	grpc     answer
	http     [4][]string // subject, token id, scopes, tenant
}

// answers reports whether id is the identity of dec: the same token with
// the same scopes. It does not allocate.
func (id *identity) answers(dec *policy.Decision) bool {
	return id.wireHash == dec.WireHash && slices.Equal(id.scopes, dec.Scopes)
}

// maxIdentities bounds the promoted identity cache (at most a quarter more
// wait in pending), about 1 KiB each. Past it the cache starts over, which
// also forgets tokens that expired.
const maxIdentities = 1 << 14

// identities caches the identity of every token recently allowed, keyed by
// jti. Look-ups read an immutable map without locking; identities built
// since the last promotion wait in pending, under a mutex, until there are
// enough of them to be worth copying the map for.
type identities struct {
	read    atomic.Pointer[map[string]*identity]
	mu      sync.Mutex
	pending map[string]*identity
}

func newIdentities() *identities {
	c := &identities{pending: map[string]*identity{}}
	c.read.Store(&map[string]*identity{})
	return c
}

// identity returns the identity of an allowed decision with a token.
func (s *Server) identity(dec *policy.Decision) *identity {
	c := s.identities
	if id, ok := (*c.read.Load())[dec.TokenID]; ok && id.answers(dec) {
		return id
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if id, ok := c.pending[dec.TokenID]; ok && id.answers(dec) {
		return id
	}
	id := s.newIdentity(dec)
	c.pending[dec.TokenID] = id
	read := *c.read.Load()
	if len(c.pending) < max(64, len(read)/4) {
		return id
	}
	// Promote: copying the map costs O(n) once per n/4 new tokens.
	next := make(map[string]*identity, len(read)+len(c.pending))
	if len(read)+len(c.pending) <= maxIdentities {
		for k, v := range read {
			next[k] = v
		}
	}
	for k, v := range c.pending {
		next[k] = v
	}
	c.read.Store(&next)
	c.pending = map[string]*identity{}
	return id
}

func (s *Server) newIdentity(dec *policy.Decision) *identity {
	scopes := strings.Join(dec.Scopes, " ")
	return &identity{
		wireHash: dec.WireHash,
		scopes:   slices.Clone(dec.Scopes),
		grpc:     encoded(s.allowedGRPC(dec, scopes, nil)).bytesOnly(),
		http:     [4][]string{{dec.Subject}, {dec.TokenID}, {scopes}, {dec.Tenant}},
	}
}

// allowedGRPC builds an allowed answer: identity headers overwrite any the
// client sent, and forged x-tokenwarden- headers the decision does not set
// are removed along with, when configured, Authorization.
func (s *Server) allowedGRPC(dec *policy.Decision, scopes string, forged []string) *authv3.CheckResponse {
	var headers []*corev3.HeaderValueOption
	set := func(key, value string) {
		//lint:ignore SA1019 as above: forged identity headers are overwritten, never appended to
		headers = append(headers, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: key, Value: value}, Append: overwrite})
	}
	if dec.TokenID != "" {
		set(HeaderSubject, dec.Subject)
		set(HeaderTokenID, dec.TokenID)
		set(HeaderScopes, scopes)
		if dec.Tenant != "" {
			set(HeaderTenant, dec.Tenant)
		}
	}
	return &authv3.CheckResponse{
		Status: okStatus,
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers:         headers,
			HeadersToRemove: s.removals(dec, forged),
		}},
	}
}

// answerGRPC is the response to an allowed check: shared unless the
// request forged x-tokenwarden- headers.
func (s *Server) answerGRPC(dec *policy.Decision, forged []string) *answer {
	switch {
	case len(forged) > 0:
		return &answer{msg: s.allowedGRPC(dec, strings.Join(dec.Scopes, " "), forged)}
	case dec.TokenID == "":
		return &s.public
	case dec.WireHash == 0:
		return &answer{msg: s.allowedGRPC(dec, strings.Join(dec.Scopes, " "), nil)}
	}
	return &s.identity(dec).grpc
}

// removals lists the headers to remove from an allowed request: forged
// x-tokenwarden- headers that the decision does not overwrite, and
// Authorization when configured. Without forgeries it is a shared slice.
func (s *Server) removals(dec *policy.Decision, forged []string) []string {
	if len(forged) == 0 {
		return s.strip
	}
	out := append([]string(nil), s.strip...)
	for _, name := range forged {
		name = strings.ToLower(name)
		if !setsHeader(dec, name) {
			out = append(out, name)
		}
	}
	return out
}
