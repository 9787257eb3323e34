package admin

import (
	"fmt"
	"net/http"
	"path"
	"slices"
	"strings"
)

// The admin API's scopes. AdminScope (full admin) implies the three finer
// ones; each route of the table below requires exactly one of them, or is
// Public.
const (
	// ReadScope reads tokens, revocations, keys and the audit log.
	ReadScope = "tokenwarden:read"
	// RevokeScope revokes tokens (by id, subject, tenant or key) and
	// reports leaks: what a pager bot holds.
	RevokeScope = "tokenwarden:revoke"
	// IssueScope issues and rotates tokens that carry no tokenwarden:
	// scope.
	IssueScope = "tokenwarden:issue"
	// Public marks a route served without a token: the OpenAPI document,
	// health and readiness.
	Public = "public"
)

// apiScopes lists the admin API's scopes, widest first.
var apiScopes = []string{AdminScope, ReadScope, RevokeScope, IssueScope}

// Route is one entry of the route table: the method and ServeMux pattern
// it is served at and the scope a caller's token must hold (AdminScope
// always does).
type Route struct {
	Method  string
	Pattern string
	Scope   string
}

// route is a Route with its handler: either h (authenticated, checked
// against scope) or public (served as it is).
type route struct {
	Route
	h      handlerFunc
	public http.HandlerFunc
}

// routes is the route table: every endpoint of the API, declared once.
// Registration, the scope check and the OpenAPI test all read it.
func (a *API) routes() []route {
	r := func(method, pattern, scope string, h handlerFunc) route {
		return route{Route: Route{Method: method, Pattern: pattern, Scope: scope}, h: h}
	}
	pub := func(pattern string, h http.HandlerFunc) route {
		return route{Route: Route{Method: http.MethodGet, Pattern: pattern, Scope: Public}, public: h}
	}
	return []route{
		pub("/healthz", a.healthz),
		pub("/readyz", a.readyz),
		pub("/v1/openapi.json", serveOpenAPI),
		r(http.MethodPost, "/v1/tokens", IssueScope, a.issue),
		r(http.MethodGet, "/v1/tokens", ReadScope, a.listTokens),
		r(http.MethodGet, "/v1/tokens/{id}", ReadScope, a.showToken),
		r(http.MethodPost, "/v1/tokens/{id}/revoke", RevokeScope, a.revokeToken),
		r(http.MethodPost, "/v1/tokens/{id}/rotate", IssueScope, a.rotateToken),
		r(http.MethodPost, "/v1/revocations", RevokeScope, a.createRevocation),
		r(http.MethodGet, "/v1/revocations", ReadScope, a.listRevocations),
		r(http.MethodPost, "/v1/leaks", RevokeScope, a.reportLeak),
		r(http.MethodGet, "/v1/keys", ReadScope, a.listKeys),
		r(http.MethodPost, "/v1/keys/rotate", AdminScope, a.rotateKeys),
		r(http.MethodGet, "/v1/audit", ReadScope, a.auditTail),
		r(http.MethodGet, "/v1/audit/stream", ReadScope, a.auditStream),
		r(http.MethodGet, "/v1/audit/verify", ReadScope, a.auditVerify),
		r(http.MethodPost, "/v1/admin/tokens", AdminScope, a.issueAdmin),
	}
}

// register serves the route table. A route without a known scope, without
// a handler, or declared twice is a construction error: nothing is served
// unless the table says who may call it.
func (a *API) register(table []route) error {
	seen := map[string]bool{}
	for _, rt := range table {
		key := rt.Method + " " + rt.Pattern
		switch {
		case rt.Method == "" || !strings.HasPrefix(rt.Pattern, "/"):
			return fmt.Errorf("admin: route %q: want a method and a path", key)
		case seen[key]:
			return fmt.Errorf("admin: route %s is declared twice", key)
		case rt.Scope == Public && rt.public == nil, rt.Scope != Public && rt.h == nil:
			return fmt.Errorf("admin: route %s has no handler for scope %q", key, rt.Scope)
		case rt.Scope != Public && !slices.Contains(apiScopes, rt.Scope):
			return fmt.Errorf("admin: route %s declares no known scope (%q): every route must name one of %s or %q", key, rt.Scope, strings.Join(apiScopes, ", "), Public)
		}
		seen[key] = true
		a.addPattern(key)
		if rt.Scope == Public {
			a.mux.HandleFunc(key, rt.public)
		} else {
			a.handle(key, rt.Scope, rt.h)
		}
		a.table = append(a.table, rt.Route)
	}
	return nil
}

// Routes returns the route table, in declaration order.
func (a *API) Routes() []Route { return slices.Clone(a.table) }

// Grants reports whether a token holding scopes may call a route requiring
// scope: it holds scope itself or AdminScope. Public needs nothing; an
// unknown scope grants nothing.
func Grants(scopes []string, scope string) bool {
	switch {
	case scope == Public:
		return true
	case !slices.Contains(apiScopes, scope):
		return false
	}
	return slices.Contains(scopes, AdminScope) || slices.Contains(scopes, scope)
}

// privileged reports whether scope is one of tokenwarden's own (the admin
// API's or a verifier endpoint's): a token carrying one is minted only by
// a full admin.
func privileged(scope string) bool { return strings.HasPrefix(scope, "tokenwarden:") }

func (a *API) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write([]byte("ok\n"))
}

func (a *API) readyz(w http.ResponseWriter, r *http.Request) {
	if err := a.cfg.Ready(); err != nil {
		writeError(w, &apiError{status: http.StatusServiceUnavailable, code: "not_ready", msg: "not ready: " + err.Error()})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write([]byte("ready\n"))
}

// ServeHTTP implements http.Handler. A request no route matches is
// answered in JSON like every other error: 404, or 405 with the Allow
// header ServeMux computed.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h, pattern := a.mux.Handler(r)
	if a.served(pattern) && canonical(r.URL.Path) {
		a.mux.ServeHTTP(w, r)
		return
	}
	// ServeMux's own answer (not found, method not allowed, a redirect
	// to the cleaned path), without its text body: the status and the
	// headers are what it decided.
	var rec headerRecorder
	h.ServeHTTP(&rec, r)
	switch rec.status {
	case http.StatusMethodNotAllowed:
		w.Header().Set("Allow", rec.header.Get("Allow"))
		writeError(w, &apiError{status: http.StatusMethodNotAllowed, code: "method_not_allowed",
			msg: fmt.Sprintf("%s is not served at %s (allowed: %s)", r.Method, r.URL.Path, rec.header.Get("Allow"))})
	case http.StatusNotFound, 0:
		writeError(w, &apiError{status: http.StatusNotFound, code: "not_found",
			msg: "no such endpoint: " + r.URL.Path + " (GET /v1/openapi.json lists them)"})
	default:
		// A redirect ServeMux chose for a path that names a route
		// once cleaned (//, .., a missing trailing slash): its status
		// and Location, with a JSON body.
		if loc := rec.header.Get("Location"); loc != "" {
			w.Header().Set("Location", loc)
		}
		writeError(w, &apiError{status: rec.status, code: "moved", msg: "the canonical path is " + rec.header.Get("Location")})
	}
}

// underV1 reports whether a ServeMux pattern ("[METHOD ][HOST]/PATH")
// matches paths under /v1.
func underV1(pattern string) bool {
	if _, rest, ok := strings.Cut(pattern, " "); ok {
		pattern = strings.TrimLeft(rest, " \t")
	}
	if i := strings.IndexByte(pattern, '/'); i >= 0 {
		pattern = pattern[i:]
	}
	return pattern == "/" || pattern == "/v1" || strings.HasPrefix(pattern, "/v1/") || strings.HasPrefix(pattern, "/{")
}

// canonical reports whether p is as ServeMux cleans it (no //, . or ..);
// ServeMux redirects other paths to their clean form.
func canonical(p string) bool {
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c == p
}

// served reports whether pattern is one the API registered (rather than
// the path of a redirect ServeMux made up).
func (a *API) served(pattern string) bool {
	a.patternsMu.RLock()
	defer a.patternsMu.RUnlock()
	return a.patterns[pattern]
}

func (a *API) addPattern(pattern string) {
	a.patternsMu.Lock()
	defer a.patternsMu.Unlock()
	if a.patterns == nil {
		a.patterns = map[string]bool{}
	}
	a.patterns[pattern] = true
}

// headerRecorder keeps the status and headers ServeMux's error handlers
// write and drops their bodies.
type headerRecorder struct {
	header http.Header
	status int
}

func (h *headerRecorder) Header() http.Header {
	if h.header == nil {
		h.header = http.Header{}
	}
	return h.header
}

func (h *headerRecorder) WriteHeader(status int) {
	if h.status == 0 {
		h.status = status
	}
}

func (h *headerRecorder) Write(b []byte) (int, error) {
	h.WriteHeader(http.StatusOK)
	return len(b), nil
}

// statusRecorder records the status a handler answered with, for the
// request's audit record; Unwrap keeps http.ResponseController working
// (the audit stream flushes and sets deadlines through it).
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(status int) {
	if s.status == 0 {
		s.status = status
	}
	s.ResponseWriter.WriteHeader(status)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }
