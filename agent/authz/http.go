package authz

import (
	"context"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/graceful"
	"github.com/tokenwarden/tokenwarden/agent/listen"

	"github.com/tokenwarden/tokenwarden/policy"
)

// HTTP mode endpoints, one per kind of proxy, each followed by the name of
// the service the proxy protects there ("/nginx/orders"). The proxy's
// configuration names the service, so a client cannot have its request
// judged under another service's routes by sending another Host: the
// request's host must be one of that service's hosts (policy.MatchService).
// Each endpoint reads the original request from the headers its proxy sets
// and no others, so a client cannot pick another proxy's headers to describe
// a request it is not making (Caddy and nginx pass client headers through
// to the auth call).
const (
	// PathEnvoy is the prefix for Envoy's HTTP ext_authz service
	// (path_prefix: /envoy/<service>): method, Host and path are the check
	// request's own, with the prefix removed.
	PathEnvoy = "/envoy"
	// PathNginx is for nginx auth_request (/nginx/<service>):
	// X-Original-Method and X-Original-URI (both required), the host from
	// X-Original-Host (nginx's $host), the client from X-Real-IP.
	PathNginx = "/nginx"
	// PathForwardAuth is for Caddy forward_auth and Traefik ForwardAuth
	// (/forward-auth/<service>): X-Forwarded-Method and X-Forwarded-Uri
	// (both required), the host from X-Forwarded-Host, the client from the
	// last X-Forwarded-For hop.
	PathForwardAuth = "/forward-auth"
)

// HeaderRemove lists, on an allowed HTTP answer, the request headers the
// proxy must drop before the request goes upstream: forged x-tokenwarden-
// headers the answer does not set, and Authorization when configured. Envoy
// applies it by itself; nginx does through a map (see docs/authz.md).
const HeaderRemove = "x-envoy-auth-headers-to-remove"

// Canonical forms, so the hot path indexes http.Header maps directly.
const (
	hAuthorization   = "Authorization"
	hContentType     = "Content-Type"
	hWWWAuthenticate = "Www-Authenticate"
	hOriginalMethod  = "X-Original-Method"
	hOriginalURI     = "X-Original-Uri"
	hOriginalHost    = "X-Original-Host"
	hRealIP          = "X-Real-Ip"
	hForwardedMethod = "X-Forwarded-Method"
	hForwardedURI    = "X-Forwarded-Uri"
	hForwardedHost   = "X-Forwarded-Host"
	hForwardedFor    = "X-Forwarded-For"
	hForwardedProto  = "X-Forwarded-Proto"
	hDPoP            = "Dpop"
	hSubject         = "X-Tokenwarden-Subject"
	hTokenID         = "X-Tokenwarden-Token-Id"
	hScopes          = "X-Tokenwarden-Scopes"
	hTenant          = "X-Tokenwarden-Tenant"
	hRemove          = "X-Envoy-Auth-Headers-To-Remove"
	hPrefix          = "X-Tokenwarden-"
)

// HTTP server limits. Proxies send a check as one small request without a
// body (nginx: proxy_pass_request_body off) and read the answer at once;
// a client that trickles either holds a connection no longer than these.
const (
	// httpReadHeaderTimeout drops clients that trickle headers (slowloris):
	// a proxy writes a check's headers at once.
	httpReadHeaderTimeout = 2 * time.Second
	// httpReadTimeout bounds reading a whole check, body included (Envoy's
	// HTTP ext_authz may forward a buffered body).
	httpReadTimeout = 5 * time.Second
	// httpWriteTimeout bounds writing the answer, a few hundred bytes, to
	// a client that does not read it.
	httpWriteTimeout = 5 * time.Second
	// httpIdleTimeout outlives the idle keep-alive of the proxies that
	// call us (nginx keepalive_timeout 60s, Envoy 1h is capped by this),
	// so that the client closes an idle connection first and never reuses
	// one we are closing, which it would report as a 502. Idle connections
	// count against the listener's connection limits meanwhile.
	httpIdleTimeout = 120 * time.Second
)

// Handler is the HTTP mode: PathEnvoy, PathNginx and PathForwardAuth, each
// followed by a service name.
// Allowed checks get 200 with the identity headers; denied ones 401 or 403
// with WWW-Authenticate and a JSON body. Any other path is denied.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveCheck) }

func (s *Server) serveCheck(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ev := Event{Protocol: ProtocolHTTP}
	var token string
	defer func() { s.stop(start, &ev, token) }()
	s.checkHTTP(w, r, &ev, &token)
}

// checkHTTP answers one HTTP check, filling ev. A panic before the answer
// is written is an internal_error denial.
func (s *Server) checkHTTP(w http.ResponseWriter, r *http.Request, ev *Event, token *string) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("authz: HTTP check panicked; denying", "panic", p)
			ev.Decision = denyDecision(policy.ReasonInternalError)
			s.writeDenial(w, s.denied(policy.ReasonInternalError))
		}
	}()
	req, source, missing := originalRequest(r)
	ev.Source = source
	if missing != "" {
		s.misconfigured.warn(r.URL.Path, missing, r.RemoteAddr)
		ev.Decision = denyDecision(policy.ReasonProxyMisconfigured)
		s.writeDenial(w, s.denied(policy.ReasonProxyMisconfigured))
		return
	}
	var auth string
	switch v := r.Header[hAuthorization]; len(v) {
	case 0:
	case 1:
		auth = v[0]
	default:
		// As Envoy does: joined, they make one malformed token.
		auth = strings.Join(v, ",")
	}
	req.Token = policy.BearerToken(auth)
	if req.Token == "" {
		if t := policy.DPoPToken(auth); t != "" {
			req.Token, req.DPoP = t, true
			// One proof, or none (RFC 9449 4.3 check 1).
			if v := r.Header[hDPoP]; len(v) == 1 {
				req.Proof = v[0]
			}
			req.Scheme = "https"
			if v := r.Header[hForwardedProto]; len(v) == 1 && (v[0] == "http" || v[0] == "https") {
				req.Scheme = v[0]
			}
		}
	}
	if s.clientCert != "" && strings.HasPrefix(r.URL.Path, PathEnvoy+"/") {
		if v := r.Header[s.clientCert]; len(v) == 1 {
			req.Principal, _ = xfccURI(v[0])
		}
		ev.Principal = req.Principal
	}
	*token = req.Token
	ev.Decision = s.decide(req)
	if !ev.Decision.Allow {
		s.writeDenial(w, s.denied(ev.Decision.Reason))
		return
	}
	s.writeAllowed(w, &ev.Decision, forgedHTTP(r.Header))
}

// What an HTTP check can lack, named in the proxy_misconfigured warning: a
// bounded set, the keys of its rate limit.
const (
	missingEndpoint = "endpoint" // not /envoy/, /nginx/ or /forward-auth/
	missingService  = "service"  // the endpoint without a service name
)

// originalRequest reads the request being authorized, and the service it
// is for, from the endpoint's path and the headers of its proxy kind. A
// host header that is absent or repeated leaves the host empty, which no
// service has. missing names what the check lacks (missingEndpoint,
// missingService, or a header that is absent, empty or repeated); "" when
// the check is complete.
func originalRequest(r *http.Request) (req policy.Request, source, missing string) {
	h := r.Header
	var ok bool
	if req.Service, ok = strings.CutPrefix(r.URL.Path, PathNginx+"/"); ok {
		if req.Service == "" {
			return req, "", missingService
		}
		if req.Method, ok = single(h, hOriginalMethod); !ok {
			return req, "", hOriginalMethod
		}
		if req.Path, ok = single(h, hOriginalURI); !ok {
			return req, "", hOriginalURI
		}
		req.Host, _ = single(h, hOriginalHost)
		return req, firstOf(h, hRealIP, peerHost(r.RemoteAddr)), ""
	}
	if req.Service, ok = strings.CutPrefix(r.URL.Path, PathForwardAuth+"/"); ok {
		if req.Service == "" {
			return req, "", missingService
		}
		if req.Method, ok = single(h, hForwardedMethod); !ok {
			return req, "", hForwardedMethod
		}
		if req.Path, ok = single(h, hForwardedURI); !ok {
			return req, "", hForwardedURI
		}
		req.Host, _ = single(h, hForwardedHost)
		return req, lastHop(h, r.RemoteAddr), ""
	}
	// Envoy: the check request is the original with path_prefix
	// (/envoy/<service>) prepended. RequestURI is the target as sent,
	// undecoded, as Envoy's own path is.
	rest, found := strings.CutPrefix(r.RequestURI, PathEnvoy+"/")
	if !found {
		return req, "", missingEndpoint
	}
	i := strings.IndexByte(rest, '/')
	if i <= 0 {
		return req, "", missingService
	}
	req.Service, req.Method, req.Host, req.Path = rest[:i], r.Method, r.Host, rest[i:]
	return req, lastHop(h, r.RemoteAddr), ""
}

// single returns the one value of a header; absent or repeated is not ok.
func single(h http.Header, key string) (string, bool) {
	v := h[key]
	if len(v) != 1 || v[0] == "" {
		return "", false
	}
	return v[0], true
}

func firstOf(h http.Header, key, fallback string) string {
	if v := h[key]; len(v) > 0 && v[0] != "" {
		return v[0]
	}
	return fallback
}

// lastHop is the client address the nearest proxy appended to
// X-Forwarded-For, or the connection's peer.
func lastHop(h http.Header, remoteAddr string) string {
	if v := h[hForwardedFor]; len(v) > 0 {
		last := v[len(v)-1]
		if i := strings.LastIndexByte(last, ','); i >= 0 {
			last = last[i+1:]
		}
		if last = strings.TrimSpace(last); last != "" {
			return last
		}
	}
	return peerHost(remoteAddr)
}

func peerHost(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// forgedHTTP lists incoming x-tokenwarden- headers (nil almost always).
func forgedHTTP(h http.Header) []string {
	var forged []string
	for k := range h {
		if strings.HasPrefix(k, hPrefix) || isTokenwardenHeader(k) {
			forged = append(forged, k)
		}
	}
	return forged
}

func (s *Server) writeDenial(w http.ResponseWriter, d *denial) {
	h := w.Header()
	h[hContentType] = contentTypeJSON
	if d.challenge[0] != "" {
		h[hWWWAuthenticate] = d.challenge
	}
	w.WriteHeader(d.status)
	_, _ = w.Write(d.body)
}

func (s *Server) writeAllowed(w http.ResponseWriter, dec *policy.Decision, forged []string) {
	h := w.Header()
	if dec.TokenID != "" {
		var v *[4][]string
		if dec.WireHash != 0 {
			v = &s.identity(dec).http
		} else {
			v = &s.newIdentity(dec).http
		}
		h[hSubject] = v[0]
		h[hTokenID] = v[1]
		h[hScopes] = v[2]
		if dec.Tenant != "" {
			h[hTenant] = v[3]
		}
	}
	if len(forged) == 0 {
		if s.strip != nil {
			h[hRemove] = s.strip // read-only, shared: one value, "authorization"
		}
	} else if rm := s.removals(dec, forged); len(rm) > 0 {
		h[hRemove] = []string{strings.Join(rm, ", ")}
	}
	w.WriteHeader(http.StatusOK)
}

// ServeHTTPMode serves Handler on lis until ctx ends, then stops accepting,
// lets in-flight checks finish (for at most shutdownGrace) and returns nil.
func (s *Server) ServeHTTPMode(ctx context.Context, lis net.Listener) error {
	return graceful.HTTP(ctx, &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: httpReadHeaderTimeout,
		ReadTimeout:       httpReadTimeout,
		WriteTimeout:      httpWriteTimeout,
		IdleTimeout:       httpIdleTimeout,
		MaxHeaderBytes:    s.maxHeaderBytes,
		ErrorLog:          listen.ErrorLog(s.log), // failed TLS handshakes rate-limited
	}, lis, shutdownGrace)
}
