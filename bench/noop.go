package bench

import (
	"context"
	"net/http"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
)

// NoopAuthorization answers every Check OK at once, with a response built
// once: the floor any ext_authz server is measured against.
type NoopAuthorization struct {
	authv3.UnimplementedAuthorizationServer
}

var noopOK = &authv3.CheckResponse{
	Status:       &status.Status{},
	HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}},
}

// Check implements envoy.service.auth.v3.Authorization/Check.
func (NoopAuthorization) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return noopOK, nil
}

// NoopHTTP answers every HTTP check 200 at once: the HTTP mode's floor.
var NoopHTTP = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
	w.WriteHeader(http.StatusOK)
})
