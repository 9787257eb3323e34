package admin

import (
	"net/http"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/policy"
)

// TestRouteTableFailsClosed: a route that does not say who may call it is
// not served: the API is not built.
func TestRouteTableFailsClosed(t *testing.T) {
	h := func(w http.ResponseWriter, r *http.Request, c caller) error { return nil }
	pub := func(w http.ResponseWriter, r *http.Request) {}
	r := func(method, pattern, scope string) route {
		return route{Route: Route{Method: method, Pattern: pattern, Scope: scope}, h: h}
	}
	tests := map[string]struct {
		table []route
		want  string
	}{
		"no scope":              {[]route{r("GET", "/v1/x", "")}, "no known scope"},
		"unknown scope":         {[]route{r("GET", "/v1/x", "tokenwarden:root")}, "no known scope"},
		"a scope of a service":  {[]route{r("GET", "/v1/x", "orders:read")}, "no known scope"},
		"no handler":            {[]route{{Route: Route{Method: "GET", Pattern: "/v1/x", Scope: ReadScope}}}, "no handler"},
		"public without public": {[]route{r("GET", "/v1/x", Public)}, "no handler"},
		"no method":             {[]route{r("", "/v1/x", ReadScope)}, "want a method"},
		"declared twice":        {[]route{r("GET", "/v1/x", ReadScope), r("GET", "/v1/x", AdminScope)}, "declared twice"},
		"public handler, scoped": {[]route{{Route: Route{Method: "GET", Pattern: "/v1/x", Scope: ReadScope}, public: pub}},
			"no handler"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			a := &API{mux: http.NewServeMux()}
			err := a.register(tc.table)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("register: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// TestGrants: tokenwarden:admin implies the finer scopes; nothing implies
// a scope outside the table's, not even tokenwarden:admin.
func TestGrants(t *testing.T) {
	tests := []struct {
		held  []string
		scope string
		want  bool
	}{
		{nil, Public, true},
		{nil, ReadScope, false},
		{[]string{ReadScope}, ReadScope, true},
		{[]string{ReadScope}, RevokeScope, false},
		{[]string{ReadScope}, AdminScope, false},
		{[]string{RevokeScope}, IssueScope, false},
		{[]string{ReadScope, RevokeScope, IssueScope}, AdminScope, false},
		{[]string{AdminScope}, ReadScope, true},
		{[]string{AdminScope}, RevokeScope, true},
		{[]string{AdminScope}, IssueScope, true},
		{[]string{AdminScope}, AdminScope, true},
		{[]string{AdminScope}, "tokenwarden:root", false},
		{[]string{AdminScope}, "", false},
		{[]string{"tokenwarden:*"}, ReadScope, false},
		{[]string{"tokenwarden:read "}, ReadScope, false},
		{[]string{"TOKENWARDEN:ADMIN"}, ReadScope, false},
	}
	for _, s := range apiScopes {
		if !policy.AgentScope(s) {
			t.Errorf("policy check would warn that %s is granted but unused", s)
		}
	}
	for _, tc := range tests {
		if got := Grants(tc.held, tc.scope); got != tc.want {
			t.Errorf("Grants(%q, %q) = %v, want %v", tc.held, tc.scope, got, tc.want)
		}
	}
}

// TestHandleRefusesV1: nothing reaches /v1 around the route table.
func TestHandleRefusesV1(t *testing.T) {
	for pattern, refused := range map[string]bool{
		"/v1/tokens": true, "POST /v1/x": true, "GET example.com/v1/keys": true, "/v1": true, "/v1/": true,
		"/": true, "/{path...}": true, "GET /": true,
		"/.well-known/": false, "POST /oauth2/introspect": false, "/github/secret-scanning": false, "/v10": false,
	} {
		func() {
			defer func() {
				if got := recover() != nil; got != refused {
					t.Errorf("Handle(%q): refused %v, want %v", pattern, got, refused)
				}
			}()
			a := &API{mux: http.NewServeMux()}
			a.Handle(pattern, http.NotFoundHandler())
		}()
	}
}
