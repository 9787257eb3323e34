// Package introspect serves OAuth 2.0 Token Introspection (RFC 7662) at
// POST /oauth2/introspect for callers that are not Envoy: a form-encoded
// token= is answered with its claims when it is allowed right now, and with
// {"active": false}, and nothing else, when it is not (malformed, unknown
// key, bad signature, expired, wrong environment, revoked). The caller
// authenticates with a tokenwarden token holding the tokenwarden:introspect
// scope; each caller is rate-limited, and every answer is audited under the
// caller's token id. The token string is never logged, stored or audited:
// only the id of a token whose signature verified is.
package introspect

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/policy"
)

// Scope is the scope a caller's token must hold.
const Scope = "tokenwarden:introspect"

// Path is where the endpoint is served.
const Path = "/oauth2/introspect"

// MaxBodyBytes bounds a request body: one token (policy.MaxTokenBytes)
// percent-encoded at worst triples, plus the other parameters.
const MaxBodyBytes = 3*policy.MaxTokenBytes + 1024

// Default per-caller limits.
const (
	DefaultRate    = 50 // requests per second, sustained
	DefaultBurst   = 100
	maxCallersKept = 10000 // limiters remembered (least recently used go)
)

// Auditor records audit records; *audit.Log implements it.
type Auditor interface {
	Append(r audit.Record) (audit.Record, error)
}

// Config configures the endpoint.
type Config struct {
	Decider     *policy.Decider          // policy, keys and environment in force
	Revocations policy.RevocationChecker // the live revocation set
	Audit       Auditor
	// Rate and Burst limit each caller (DefaultRate, DefaultBurst when 0).
	Rate       rate.Limit
	Burst      int
	Registerer prometheus.Registerer // nil: no metrics
	Now        func() time.Time
	Logger     *slog.Logger
}

// Handler is the introspection endpoint.
type Handler struct {
	cfg      Config
	limiters *lru.Cache[string, *rate.Limiter]
	answers  *prometheus.CounterVec
}

// New builds the handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Decider == nil || cfg.Revocations == nil || cfg.Audit == nil {
		return nil, errors.New("introspect: Decider, Revocations and Audit are required")
	}
	if cfg.Rate == 0 {
		cfg.Rate = DefaultRate
	}
	if cfg.Burst == 0 {
		cfg.Burst = DefaultBurst
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	limiters, err := lru.New[string, *rate.Limiter](maxCallersKept)
	if err != nil {
		return nil, err
	}
	h := &Handler{cfg: cfg, limiters: limiters, answers: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenwarden_introspect_answers_total",
		Help: "Introspection requests by answer: active, inactive, unauthorized, forbidden, limited, bad_request, error.",
	}, []string{"answer"})}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(h.answers); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// Response is the RFC 7662 answer. An inactive token gets Active false and
// every other field empty (omitted).
type Response struct {
	Active    bool   `json:"active"`
	Scope     string `json:"scope,omitempty"`
	ClientID  string `json:"client_id,omitempty"`
	TokenType string `json:"token_type,omitempty"`
	Exp       int64  `json:"exp,omitempty"`
	Iat       int64  `json:"iat,omitempty"`
	Nbf       int64  `json:"nbf,omitempty"`
	Sub       string `json:"sub,omitempty"`
	Iss       string `json:"iss,omitempty"`
	Jti       string `json:"jti,omitempty"`
	// tokenwarden's own claims.
	Env    string `json:"env,omitempty"`
	Class  string `json:"cls,omitempty"`
	Tenant string `json:"ten,omitempty"`
}

// RequestError is a request refused before its token is looked at.
type RequestError struct {
	Status int
	Code   string // RFC 6749 error code
	Msg    string
}

func (e *RequestError) Error() string { return e.Code + ": " + e.Msg }

func invalidRequest(format string, args ...any) *RequestError {
	return &RequestError{Status: http.StatusBadRequest, Code: "invalid_request", Msg: fmt.Sprintf(format, args...)}
}

// ParseRequest reads the token of an introspection request from its
// Content-Type and body. It refuses anything but one
// application/x-www-form-urlencoded body (UTF-8) holding exactly one
// non-empty token and at most one token_type_hint; other parameters are
// ignored, as RFC 7662 allows.
func ParseRequest(contentType string, body []byte) (string, *RequestError) {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return "", &RequestError{Status: http.StatusUnsupportedMediaType, Code: "invalid_request", Msg: "send Content-Type: application/x-www-form-urlencoded"}
	}
	for k, v := range params {
		if k != "charset" || !strings.EqualFold(v, "utf-8") {
			return "", &RequestError{Status: http.StatusUnsupportedMediaType, Code: "invalid_request", Msg: "the form must be UTF-8 with no other media type parameter"}
		}
	}
	if len(body) > MaxBodyBytes {
		return "", &RequestError{Status: http.StatusRequestEntityTooLarge, Code: "invalid_request", Msg: fmt.Sprintf("request body is over %d bytes", MaxBodyBytes)}
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return "", invalidRequest("the body is not a well-formed form")
	}
	toks := form["token"]
	switch {
	case len(toks) == 0 || toks[0] == "":
		return "", invalidRequest("token: required")
	case len(toks) > 1:
		return "", invalidRequest("token: given more than once")
	case len(form["token_type_hint"]) > 1:
		return "", invalidRequest("token_type_hint: given more than once")
	}
	return toks[0], nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.refuse(w, "bad_request", &RequestError{Status: http.StatusMethodNotAllowed, Code: "invalid_request", Msg: "use POST"})
		return
	}
	now := h.cfg.Now()
	caller, rerr := h.authenticate(r, now)
	if rerr != nil {
		answer := "unauthorized"
		if rerr.Status == http.StatusForbidden {
			answer = "forbidden"
		}
		w.Header().Set("WWW-Authenticate", `Bearer error="`+rerr.Code+`", scope="`+Scope+`"`)
		h.refuse(w, answer, rerr)
		return
	}
	if !h.limiter(caller.ID).AllowN(now, 1) {
		w.Header().Set("Retry-After", "1")
		h.refuse(w, "limited", &RequestError{Status: http.StatusTooManyRequests, Code: "rate_limited", Msg: "too many introspection requests from this caller"})
		return
	}
	if r.URL.RawQuery != "" {
		// A token in the URL ends up in access logs: refused outright.
		h.refuse(w, "bad_request", invalidRequest("send parameters in the POST body, not the URL"))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			h.refuse(w, "bad_request", &RequestError{Status: http.StatusRequestEntityTooLarge, Code: "invalid_request", Msg: fmt.Sprintf("request body is over %d bytes", MaxBodyBytes)})
			return
		}
		h.refuse(w, "bad_request", invalidRequest("could not read the body"))
		return
	}
	tok, rerr := ParseRequest(r.Header.Get("Content-Type"), body)
	if rerr != nil {
		h.refuse(w, "bad_request", rerr)
		return
	}
	resp, t, reason := h.introspect(tok, now)
	rec := audit.Record{Action: "token.introspect", Actor: caller.ID, Source: r.RemoteAddr, Reason: reason}
	if t != nil {
		// Only a token whose signature verified is named: an unverified
		// jti is whatever the sender wrote.
		rec.TokenID, rec.Subject, rec.Tenant = t.ID, t.Subject, t.Tenant
	}
	if _, err := h.cfg.Audit.Append(rec); err != nil {
		// Fail closed: an answer that cannot be audited is not given.
		h.cfg.Logger.Error("introspection not audited; refusing it", "caller", caller.ID, "err", err)
		h.refuse(w, "error", &RequestError{Status: http.StatusInternalServerError, Code: "server_error", Msg: "internal error"})
		return
	}
	if resp.Active {
		h.answers.WithLabelValues("active").Inc()
	} else {
		h.answers.WithLabelValues("inactive").Inc()
	}
	writeJSON(w, http.StatusOK, resp)
}

// introspect decides whether tok is allowed now. The reason (for the audit
// log only) is empty when it is.
func (h *Handler) introspect(tok string, now time.Time) (Response, *policy.Token, string) {
	d := h.cfg.Decider
	v := policy.Verifier{Keys: d.Keys(), Policy: d.Policy(), Env: d.Env()}
	t, verr := v.Verify(tok, now)
	if verr != nil {
		return Response{}, nil, string(verr.Reason)
	}
	if h.cfg.Revocations.Revoked(t, now) {
		return Response{}, t, string(policy.ReasonRevoked)
	}
	return Response{
		Active: true, Scope: strings.Join(t.Scopes, " "), ClientID: t.Subject, TokenType: "Bearer",
		Exp: t.Expires, Iat: t.IssuedAt, Nbf: t.NotBefore, Sub: t.Subject, Iss: t.Issuer, Jti: t.ID,
		Env: t.Env, Class: t.Class, Tenant: t.Tenant,
	}, t, ""
}

// authenticate verifies the caller's bearer token: signature, claims,
// environment, revocation and the introspect scope.
func (h *Handler) authenticate(r *http.Request, now time.Time) (*policy.Token, *RequestError) {
	if len(r.Header.Values("Authorization")) > 1 {
		return nil, &RequestError{Status: http.StatusUnauthorized, Code: "invalid_token", Msg: "send one Authorization header"}
	}
	tok := policy.BearerToken(r.Header.Get("Authorization"))
	if tok == "" {
		return nil, &RequestError{Status: http.StatusUnauthorized, Code: "invalid_token", Msg: "send a token holding " + Scope + " as Authorization: Bearer"}
	}
	d := h.cfg.Decider
	v := policy.Verifier{Keys: d.Keys(), Policy: d.Policy(), Env: d.Env()}
	t, verr := v.Verify(tok, now)
	if verr != nil || h.cfg.Revocations.Revoked(t, now) {
		return nil, &RequestError{Status: http.StatusUnauthorized, Code: "invalid_token", Msg: "the caller's token is not valid"}
	}
	if !t.HasScope(Scope) {
		return nil, &RequestError{Status: http.StatusForbidden, Code: "insufficient_scope", Msg: "the caller's token lacks the " + Scope + " scope"}
	}
	return t, nil
}

func (h *Handler) limiter(caller string) *rate.Limiter {
	if l, ok := h.limiters.Get(caller); ok {
		return l
	}
	l := rate.NewLimiter(h.cfg.Rate, h.cfg.Burst)
	if prev, ok, _ := h.limiters.PeekOrAdd(caller, l); ok {
		return prev
	}
	return l
}

func (h *Handler) refuse(w http.ResponseWriter, answer string, e *RequestError) {
	h.answers.WithLabelValues(answer).Inc()
	writeJSON(w, e.Status, map[string]string{"error": e.Code, "error_description": e.Msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}
