package authz

import (
	"encoding/json"
	"strings"

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
	grpc      *authv3.CheckResponse
	challenge []string // WWW-Authenticate, as an http.Header value
	body      []byte   // {"error": reason, "message": ...}
}

var (
	contentTypeJSON = []string{"application/json"}
	// overwrite makes Envoy replace a header the client sent instead of
	// appending to it. Envoy reads the deprecated append field first (and,
	// before 1.37, only it), so that is the one set.
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
	if r.Status() == 401 {
		grpcCode = code.Code_UNAUTHENTICATED
	}
	headers := []*corev3.HeaderValueOption{
		{Header: &corev3.HeaderValue{Key: "content-type", Value: contentTypeJSON[0]}, Append: overwrite},
	}
	if c := r.Challenge(); c != "" {
		headers = append(headers, &corev3.HeaderValueOption{
			Header: &corev3.HeaderValue{Key: "www-authenticate", Value: c}, Append: overwrite,
		})
	}
	return &denial{
		status: r.Status(),
		grpc: &authv3.CheckResponse{
			Status: &status.Status{Code: int32(grpcCode), Message: string(r)},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
				Status:  &typev3.HttpStatus{Code: typev3.StatusCode(r.Status())},
				Headers: headers,
				Body:    string(body),
			}},
		},
		challenge: []string{r.Challenge()},
		body:      body,
	}
}

// allowed is one allowed gRPC answer with everything it points to, so that
// building it costs one allocation instead of a dozen.
type allowed struct {
	resp    authv3.CheckResponse
	oneof   authv3.CheckResponse_OkResponse
	ok      authv3.OkHttpResponse
	options [4]corev3.HeaderValueOption
	values  [4]corev3.HeaderValue
	list    [4]*corev3.HeaderValueOption
}

// allowedGRPC answers an allowed check: identity headers overwrite any the
// client sent, and forged x-tokenwarden- headers the decision does not set
// are removed along with, when configured, Authorization.
func (s *Server) allowedGRPC(dec *policy.Decision, forged []string) *authv3.CheckResponse {
	a := &allowed{}
	a.resp.Status = okStatus
	a.resp.HttpResponse = &a.oneof
	a.oneof.OkResponse = &a.ok
	n := 0
	set := func(key, value string) {
		a.values[n] = corev3.HeaderValue{Key: key, Value: value}
		a.options[n].Header = &a.values[n]
		a.options[n].Append = overwrite
		a.list[n] = &a.options[n]
		n++
	}
	if dec.TokenID != "" {
		set(HeaderSubject, dec.Subject)
		set(HeaderTokenID, dec.TokenID)
		set(HeaderScopes, strings.Join(dec.Scopes, " "))
		if dec.Tenant != "" {
			set(HeaderTenant, dec.Tenant)
		}
	}
	a.ok.Headers = a.list[:n:n]
	a.ok.HeadersToRemove = s.removals(dec, forged)
	return &a.resp
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
