package bench

import (
	"context"
	"net/http"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// NoopAuthorization answers every Check OK at once, with a response built
// once: the floor any ext_authz server is measured against. With Identity
// set it answers with the four identity headers tokenwarden's allowed
// answer carries (the same sizes), so that what a client pays to handle
// that answer can be told from what the server pays to make it.
type NoopAuthorization struct {
	authv3.UnimplementedAuthorizationServer
	Identity bool
}

// identityHeaders are the four identity headers tokenwarden's allowed
// answer carries, with values of typical sizes: both identity no-ops send
// them.
var identityHeaders = [4][2]string{
	{"x-tokenwarden-subject", "svc-0001"},
	{"x-tokenwarden-token-id", "sgdi7ksvdrsgccvokb6brgjlhy"},
	{"x-tokenwarden-scopes", "orders:read orders:write"},
	{"x-tokenwarden-tenant", "acme"},
}

var noopIdentity = func() *authv3.CheckResponse {
	var headers []*corev3.HeaderValueOption
	for _, h := range identityHeaders {
		headers = append(headers, noopHeader(h[0], h[1]))
	}
	return &authv3.CheckResponse{
		Status:       &status.Status{},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{Headers: headers}},
	}
}()

func noopHeader(k, v string) *corev3.HeaderValueOption {
	//lint:ignore SA1019 the same field tokenwarden's answer sets
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}, Append: wrapperspb.Bool(false)}
}

var noopOK = &authv3.CheckResponse{
	Status:       &status.Status{},
	HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}},
}

// Check implements envoy.service.auth.v3.Authorization/Check.
func (n NoopAuthorization) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	if n.Identity {
		return noopIdentity, nil
	}
	return noopOK, nil
}

// NoopHTTP answers every HTTP check 200 at once: the HTTP mode's floor.
var NoopHTTP = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
	w.WriteHeader(http.StatusOK)
})

// NoopHTTPIdentity answers every HTTP check 200 with the four identity
// headers tokenwarden's allowed answer carries (values shared, as
// tokenwarden's are): what net/http and the client pay for a larger answer,
// told apart from what the decision costs.
var NoopHTTPIdentity = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	for _, kv := range noopHTTPIdentity {
		h[kv.key] = kv.value
	}
	w.WriteHeader(http.StatusOK)
})

// noopHTTPIdentity is identityHeaders as net/http header entries.
var noopHTTPIdentity = func() (out [len(identityHeaders)]struct {
	key   string
	value []string
}) {
	for i, h := range identityHeaders {
		out[i].key, out[i].value = http.CanonicalHeaderKey(h[0]), []string{h[1]}
	}
	return out
}()
