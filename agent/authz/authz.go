// Package authz is the enforcement point every sidecar calls on every
// request: Envoy's ext_authz over gRPC (envoy.service.auth.v3) and over HTTP,
// nginx auth_request and Caddy/Traefik forward auth. Each request becomes a
// policy.Request for the same Decider and is answered with upstream identity
// headers or an RFC 6750 denial. Anything it cannot establish is a denial.
package authz

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"

	"github.com/tokenwarden/tokenwarden/agent/listen"
	"github.com/tokenwarden/tokenwarden/policy"
)

// DefaultMaxHeaderBytes bounds the request headers of one check (names plus
// values). A larger request is denied with internal_error over gRPC; in HTTP
// mode net/http answers 431, which every proxy treats as a denial. Tokens
// themselves are bounded by policy.MaxTokenBytes (malformed_token above it).
const DefaultMaxHeaderBytes = 64 << 10

// Headers an allowed request carries upstream. Incoming headers with the
// x-tokenwarden- prefix are always overwritten or removed, so an application
// can trust them.
const (
	HeaderSubject = "x-tokenwarden-subject"
	HeaderTokenID = "x-tokenwarden-token-id"
	HeaderScopes  = "x-tokenwarden-scopes" // space-separated, as in the token
	HeaderTenant  = "x-tokenwarden-tenant" // only when the token has one

	headerPrefix        = "x-tokenwarden-"
	headerAuthorization = "authorization"
	headerDPoP          = "dpop"
)

// Config configures a Server.
type Config struct {
	// Decider makes every decision. Required.
	Decider *policy.Decider
	// Now is the clock decisions use; time.Now when nil.
	Now func() time.Time
	// StripAuthorization removes the Authorization header from allowed
	// requests before they reach the application. Off by default: the
	// kernel side counts tokens where the application receives them, and
	// it can only see a token that is still there.
	StripAuthorization bool
	// Observer sees every check (audit, anomaly detection, wire-hash
	// learning). It is called synchronously on the hot path: keep it cheap.
	Observer Observer
	// Metrics records checks; nil records none.
	Metrics *Metrics
	// ListenerMetrics counts checks refused over CheckLimits; nil counts
	// none.
	ListenerMetrics *listen.Metrics
	// MaxHeaderBytes bounds a check's request headers; 0 means
	// DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// Logger receives internal faults; slog.Default() when nil. Tokens are
	// never logged.
	Logger *slog.Logger
	// ClientCertHeader names the request header from which HTTP mode reads
	// the peer's workload identity, for workload-bound tokens: Envoy's
	// x-forwarded-client-cert, whose one element's URI= value is the
	// client certificate's URI SAN. Only the /envoy endpoint reads it, and
	// only an Envoy that sets it with forward_client_cert_details:
	// SANITIZE_SET (so a client can never send its own) may be trusted
	// with it (docs/binding.md). Empty (the default): HTTP mode never reads
	// a peer identity, and workload-bound tokens are denied there.
	ClientCertHeader string
	// Freshness, when set, is asked before every decision whether this
	// node's view of the store is fresh enough to decide on
	// (freshness.Tracker); false denies the check with store_unavailable
	// (503). Nil: the view is always fresh (one node).
	Freshness Admitter
}

// Admitter says whether a check may be decided on the rules this node
// has. It is called on every check: one atomic load and one clock read
// while the view is fresh.
type Admitter interface{ Admit() bool }

// Server answers checks over gRPC and HTTP. It is safe for concurrent use.
type Server struct {
	decider         *policy.Decider
	fresh           Admitter
	now             func() time.Time
	observer        Observer
	metrics         *Metrics
	listenerMetrics *listen.Metrics
	maxHeaderBytes  int
	log             *slog.Logger
	misconfigured   *misconfiguredLog

	denials      map[policy.Reason]*denial
	public       answer // allowed without a token (public route)
	identities   *identities
	strip        []string // headers removed from every allowed request
	clientCert   string   // canonical ClientCertHeader, "" when off
	grpcOnce     sync.Once
	grpcServer   *grpc.Server
	healthServer *health.Server
	checks       *listen.CallGate
}

// New validates cfg and builds a Server, with every denial response built
// once up front.
func New(cfg Config) (*Server, error) {
	if cfg.Decider == nil {
		return nil, errors.New("authz: Config.Decider is required")
	}
	if cfg.MaxHeaderBytes < 0 {
		return nil, fmt.Errorf("authz: Config.MaxHeaderBytes %d is negative; use 0 for the default of %d", cfg.MaxHeaderBytes, DefaultMaxHeaderBytes)
	}
	s := &Server{
		decider:         cfg.Decider,
		fresh:           cfg.Freshness,
		now:             cfg.Now,
		observer:        cfg.Observer,
		metrics:         cfg.Metrics,
		listenerMetrics: cfg.ListenerMetrics,
		maxHeaderBytes:  cfg.MaxHeaderBytes,
		log:             cfg.Logger,
		denials:         make(map[policy.Reason]*denial, len(policy.Reasons)),
		identities:      newIdentities(),
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.maxHeaderBytes == 0 {
		s.maxHeaderBytes = DefaultMaxHeaderBytes
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.misconfigured = newMisconfiguredLog(s.log, s.now)
	if cfg.ClientCertHeader != "" {
		s.clientCert = http.CanonicalHeaderKey(cfg.ClientCertHeader)
	}
	if cfg.StripAuthorization {
		s.strip = []string{headerAuthorization}
	}
	for _, r := range policy.Reasons {
		if r.Status() != 200 {
			s.denials[r] = newDenial(r)
		}
	}
	s.public = encoded(s.allowedGRPC(&policy.Decision{Allow: true}, "", nil))
	return s, nil
}

// denied returns the prebuilt denial for reason r.
func (s *Server) denied(r policy.Reason) *denial {
	if d, ok := s.denials[r]; ok {
		return d
	}
	// Decide only returns the reasons in policy.Reasons; anything else is a
	// fault of ours, and still a denial.
	return s.denials[policy.ReasonInternalError]
}

// decide asks the Decider, turning a panic into an internal_error denial.
func (s *Server) decide(req policy.Request) (dec policy.Decision) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("authz: Decide panicked; denying", "panic", r, "method", req.Method, "host", req.Host)
			dec = denyDecision(policy.ReasonInternalError)
		}
	}()
	if s.fresh != nil && !s.fresh.Admit() {
		return denyDecision(policy.ReasonStoreUnavailable)
	}
	return s.decider.Decide(req, s.now())
}

// stop records one finished check: metrics, per-token counts and the
// Observer. Every exit path of a check goes through it, panics included.
func (s *Server) stop(start time.Time, ev *Event, token string) {
	ev.Duration = time.Since(start)
	if ev.WireHash == 0 {
		ev.WireHash = ev.Decision.WireHash
	}
	if ev.WireHash == 0 && token != "" {
		ev.WireHash = policy.WireHash(token)
	}
	if s.metrics != nil {
		s.metrics.observe(&ev.Decision, ev.Duration)
	}
	if s.observer != nil {
		s.observe(ev)
	}
}

// observe calls the Observer, so that a panic in it cannot take the server
// down.
func (s *Server) observe(ev *Event) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("authz: Observer panicked", "panic", r)
		}
	}()
	s.observer.ObserveCheck(*ev)
}

func denyDecision(r policy.Reason) policy.Decision {
	return policy.Decision{Status: r.Status(), Reason: r}
}

// setsHeader reports whether an allowed decision sets the x-tokenwarden-
// header name (lower case) itself, overwriting any incoming value.
func setsHeader(dec *policy.Decision, name string) bool {
	if dec.TokenID == "" {
		return false
	}
	switch name {
	case HeaderSubject, HeaderTokenID, HeaderScopes:
		return true
	case HeaderTenant:
		return dec.Tenant != ""
	}
	return false
}

// isTokenwardenHeader reports whether name (any case) has the
// x-tokenwarden- prefix, with any of its '-' written '_'. Envoy passes
// header names with underscores by default, and CGI-style servers (PHP,
// WSGI, Rack) read "x_tokenwarden_subject" as the same variable as
// "x-tokenwarden-subject": left in place, it could stand beside or
// override the identity this server sets.
func isTokenwardenHeader(name string) bool {
	if len(name) < len(headerPrefix) {
		return false
	}
	for i := 0; i < len(headerPrefix); i++ {
		c := name[i]
		switch {
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		case c == '_':
			c = '-'
		}
		if c != headerPrefix[i] {
			return false
		}
	}
	return true
}
