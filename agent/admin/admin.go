// Package admin is the admin HTTP API under /v1/: issue, list, show, rotate
// and revoke tokens, revoke by subject, tenant or key, rotate keys, read and
// follow the audit log, mint operators' admin tokens. Every call is
// authenticated by a tokenwarden token holding the scope its route requires
// in the route table (routes.go): tokenwarden:read, :revoke or :issue, or
// tokenwarden:admin, which implies them all. /healthz, /readyz and the
// OpenAPI document (/v1/openapi.json) are served unauthenticated. Every
// answer that is not a success is a JSON error, 404 and 405 included.
package admin

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/graceful"
	"github.com/tokenwarden/tokenwarden/agent/issuer"
	"github.com/tokenwarden/tokenwarden/agent/listen"
	"github.com/tokenwarden/tokenwarden/agent/revoke"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// AdminScope is the scope an admin API caller's token must hold.
const AdminScope = "tokenwarden:admin"

// maxBodyBytes bounds a request body.
const maxBodyBytes = 64 << 10

// HandlerDeadline bounds every admin request but the audit stream: a
// slow or dead store is answered 503 store_unavailable by then. It is below
// the server's write timeout (listen.HTTPServer), so the answer gets out.
const HandlerDeadline = 10 * time.Second

// streamWriteTimeout bounds each write of the audit stream (a record or a
// heartbeat) to a client that has stopped reading.
const streamWriteTimeout = 30 * time.Second

// Config configures the admin API.
type Config struct {
	Issuer      *issuer.Issuer
	Revoker     Revoker // revocations and leak reports; nil: one over Issuer, enforcing through Revocations (a *revocation.Set) or the store's watch
	Rotator     Rotator // manual rotation; nil means Issuer (no delivery sinks)
	Store       store.Store
	Audit       *audit.Log
	AuditDir    string
	NodeName    string                   // whose recorded audit chain head GET /v1/audit/verify checks
	Decider     *policy.Decider          // policy, keys and environment in force
	Revocations policy.RevocationChecker // the live revocation set
	Ready       func() error             // nil error when the agent is ready
	Now         func() time.Time
	Logger      *slog.Logger

	// AdminTokenRevoked writes the agent a new admin token at once; it is
	// called after a caller revoked (force) the key that signed its own.
	AdminTokenRevoked func(ctx context.Context) error
}

// Revoker is the agent's one revocation path (*revoke.Revoker): a rule is
// enforced on this node and journaled before it is stored.
type Revoker interface {
	Submit(ctx context.Context, r policy.Revocation, opt revoke.Options) (revoke.Result, error)
	Preview(ctx context.Context, r policy.Revocation) (revoke.Preview, error)
	RevokeLeak(ctx context.Context, h [32]byte, source, actor string) (revoke.Leak, error)
}

// Rotator rotates a token and delivers its successor to the class's sinks.
type Rotator interface {
	Rotate(ctx context.Context, id, actor string) (issuer.Issued, error)
}

// API serves the admin endpoints.
type API struct {
	cfg Config
	mux *http.ServeMux
	// verifying lets one audit verification run at a time: each walks the
	// whole log.
	verifying sync.Mutex
	table     []Route // what register served (routes.go)
	// patterns are every pattern served, the table's and Handle's.
	patternsMu sync.RWMutex
	patterns   map[string]bool
	failures   failureBudget // of admin.request records (operators.go)
	pages      *pager
}

// New builds the API.
func New(cfg Config) (*API, error) {
	if openapiErr != nil {
		return nil, openapiErr
	}
	if cfg.Issuer == nil || cfg.Store == nil || cfg.Decider == nil || cfg.Revocations == nil || cfg.Audit == nil || cfg.AuditDir == "" {
		return nil, errors.New("admin: Issuer, Store, Audit, AuditDir, Decider and Revocations are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Rotator == nil {
		cfg.Rotator = cfg.Issuer
	}
	if cfg.Revoker == nil {
		v, err := defaultRevoker(cfg)
		if err != nil {
			return nil, err
		}
		cfg.Revoker = v
	}
	if cfg.Ready == nil {
		cfg.Ready = func() error { return nil }
	}
	a := &API{cfg: cfg, mux: http.NewServeMux(), pages: newPager()}
	if err := a.register(a.routes()); err != nil {
		return nil, err
	}
	return a, nil
}

// Serve serves the API on lis until ctx ends, then drains it (see
// graceful.HTTP). Audit streams end with ctx, so that they do not hold the
// drain open until its timeout; other requests finish their work.
func (a *API) Serve(ctx context.Context, lis net.Listener) error {
	return graceful.HTTP(ctx, listen.HTTPServer(endStreamsOn(ctx, a)), lis, graceful.DefaultGrace)
}

// endStreamsOn ends long-lived responses (the audit stream) when ctx ends.
func endStreamsOn(ctx context.Context, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/audit/stream" {
			rctx, cancel := context.WithCancel(r.Context())
			defer cancel()
			stop := context.AfterFunc(ctx, cancel)
			defer stop()
			r = r.WithContext(rctx)
		}
		h.ServeHTTP(w, r)
	})
}

// Handle serves h at pattern on the admin listener, beside the API, with
// h's own authentication: the endpoints verifiers outside the mesh use
// (agent/wellknown, agent/introspect, agent/secretscan). A pattern under
// /v1 panics, as ServeMux does on a conflict: /v1 is the route table's, where
// every route declares its scope.
func (a *API) Handle(pattern string, h http.Handler) {
	if underV1(pattern) {
		panic("admin: " + pattern + " is under /v1: declare it in the route table with its scope")
	}
	a.mux.Handle(pattern, h)
	a.addPattern(pattern)
}

// caller is the authenticated admin: its token's jti (the actor of what
// it does), subject (the operator who owns it), scopes, and the key that
// signed it (revoking that key would lock the caller out).
type caller struct {
	tokenID string
	subject string
	scopes  []string
	keyID   string
}

type handlerFunc func(w http.ResponseWriter, r *http.Request, c caller) error

// apiError is an error with an HTTP status and a stable code.
type apiError struct {
	status int
	code   string
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &apiError{status: http.StatusBadRequest, code: "bad_request", msg: fmt.Sprintf(format, args...)}
}

func (a *API) handle(pattern, scope string, h handlerFunc) {
	a.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		c, aerr := a.authenticate(r)
		if aerr == nil && !Grants(c.scopes, scope) {
			aerr = &apiError{status: http.StatusForbidden, code: string(policy.ReasonInsufficientScope),
				msg: "the token lacks the " + scope + " scope (or " + AdminScope + ") this endpoint requires"}
			a.auditRequest(r, c, pattern, http.StatusForbidden)
		}
		if aerr != nil {
			w.Header().Set("WWW-Authenticate", policy.Reason(aerr.code).Challenge())
			writeError(w, aerr)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
		rec := &statusRecorder{ResponseWriter: w}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			// A mutation is audited with the operator who asked for it,
			// whatever its outcome.
			defer func() { a.auditRequest(r, c, pattern, rec.status) }()
		}
		w = rec
		if pattern != "GET /v1/audit/stream" { // the stream has its per-write deadline
			ctx, cancel := context.WithTimeout(r.Context(), HandlerDeadline)
			defer cancel()
			r = r.WithContext(ctx)
		}
		if err := h(w, r, c); err != nil {
			var ae *apiError
			var ie *policy.Refusal
			switch {
			case errors.As(err, &ae):
			case errors.As(err, &ie):
				ae = &apiError{status: http.StatusBadRequest, code: "refused_by_policy", msg: ie.Msg}
			case errors.Is(err, store.ErrNotFound):
				ae = &apiError{status: http.StatusNotFound, code: "not_found", msg: err.Error()}
			case storeUnavailable(r, err):
				a.cfg.Logger.Warn("admin request: store unavailable", "method", r.Method, "path", r.URL.Path, "actor", c.tokenID, "err", err)
				ae = &apiError{status: http.StatusServiceUnavailable, code: "store_unavailable", msg: "the store did not answer in time; try again (revocations are still enforced: see docs/operations.md)"}
			default:
				a.cfg.Logger.Error("admin request failed", "method", r.Method, "path", r.URL.Path, "actor", c.tokenID, "err", err)
				ae = &apiError{status: http.StatusInternalServerError, code: "internal_error", msg: "internal error; see the agent log"}
			}
			writeError(w, ae)
		}
	})
}

// authenticate verifies the caller's bearer token: signature (Ed25519
// verification is constant time), claims, environment, revocation and the
// subject it names. Which scope the route needs is handle's check.
func (a *API) authenticate(r *http.Request) (caller, *apiError) {
	tok := policy.BearerToken(r.Header.Get("Authorization"))
	if tok == "" {
		return caller{}, &apiError{status: http.StatusUnauthorized, code: string(policy.ReasonMissingToken), msg: "send the admin token as Authorization: Bearer (see <data-dir>/admin.token)"}
	}
	d := a.cfg.Decider
	v := policy.Verifier{Keys: d.Keys(), Policy: d.Policy(), Env: d.Env()}
	now := a.cfg.Now()
	t, verr := v.Verify(tok, now)
	if verr != nil {
		return caller{}, &apiError{status: verr.Reason.Status(), code: string(verr.Reason), msg: verr.Reason.Message()}
	}
	if a.cfg.Revocations.Revoked(t, now) {
		return caller{}, &apiError{status: http.StatusUnauthorized, code: string(policy.ReasonRevoked), msg: policy.ReasonRevoked.Message()}
	}
	return caller{tokenID: t.ID, subject: t.Subject, scopes: t.Scopes, keyID: t.KeyID}, nil
}

func writeError(w http.ResponseWriter, e *apiError) {
	writeJSON(w, e.status, map[string]string{"error": e.code, "message": e.msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		// One object per request: what follows it would otherwise be
		// ignored without a word.
		if _, err = dec.Token(); errors.Is(err, io.EOF) {
			return nil
		}
		if err == nil {
			return badRequest("request body: data after the JSON object: send one object")
		}
	}
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return &apiError{status: http.StatusRequestEntityTooLarge, code: "body_too_large", msg: fmt.Sprintf("request body is over %d bytes", tooLarge.Limit)}
	case errors.Is(err, io.EOF):
		return badRequest("request body is empty: send a JSON object")
	default:
		return badRequest("request body: %v", err)
	}
}

// IssueRequest is the body of POST /v1/tokens.
type IssueRequest struct {
	Subject string   `json:"subject"`
	Class   string   `json:"class"`
	Scopes  []string `json:"scopes,omitempty"`
	TTL     string   `json:"ttl,omitempty"` // Go duration; empty: the class default
	Tenant  string   `json:"tenant,omitempty"`
	// BindWorkload is the SPIFFE ID a token of a workload-bound class is
	// bound to (docs/binding.md).
	BindWorkload string `json:"bind_workload,omitempty"`
	// BindJKT is the RFC 7638 thumbprint of the client key a token of a
	// DPoP-bound class is bound to.
	BindJKT string `json:"bind_jkt,omitempty"`
}

func (a *API) issue(w http.ResponseWriter, r *http.Request, c caller) error {
	var req IssueRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if err := a.mayMint(c, req); err != nil {
		return err
	}
	var ttl time.Duration
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil {
			return badRequest("ttl %q: want a Go duration such as 30m or 12h", req.TTL)
		}
		ttl = d
	}
	preq := policy.IssueRequest{
		Subject: req.Subject, Class: req.Class, Scopes: req.Scopes, TTL: ttl, Tenant: req.Tenant,
		BindWorkload: req.BindWorkload, BindJKT: req.BindJKT,
	}
	if dryRun(r) {
		preq.Env = a.cfg.Decider.Env()
		return a.issueDryRun(w, preq)
	}
	out, err := a.cfg.Issuer.Issue(r.Context(), preq, c.tokenID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, a.issued(out))
	return nil
}

// IssueResponse is the answer to POST /v1/tokens (and, with a warning, to
// a rotation): the token string, shown once, beside its record's fields.
type IssueResponse struct {
	Token string `json:"token"`
	TokenView
}

func (a *API) issued(out issuer.Issued) IssueResponse {
	v := a.view(out.Record, a.cfg.Now())
	return IssueResponse{Token: out.Token, TokenView: v}
}

// Token states: the one lifecycle field of a token as the API shows it.
const (
	StateActive  = "active"  // can be used
	StateRotated = "rotated" // has a successor; usable until its rotation grace ends
	StateRevoked = "revoked" // a revocation rule covers it
	StateExpired = "expired" // past its expiry
)

// TokenView is a token record as the API shows it: the stored record's
// claims and hashes, and its state at the time of the answer (the stored
// record's own status, which a later or future-effective rule does not
// update, is not shown).
type TokenView struct {
	ID        string    `json:"id"`
	Subject   string    `json:"subject"`
	Class     string    `json:"class"`
	Env       string    `json:"env"`
	Tenant    string    `json:"tenant,omitempty"`
	Scopes    []string  `json:"scopes"`
	KeyID     string    `json:"kid"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
	State     string    `json:"state"`               // StateActive, StateRotated, StateRevoked or StateExpired
	Rotated   string    `json:"rotated,omitempty"`   // predecessor's id
	Successor string    `json:"successor,omitempty"` // successor's id
	Workload  string    `json:"workload,omitempty"`  // SPIFFE ID the token is bound to
	JKT       string    `json:"jkt,omitempty"`       // thumbprint of the DPoP key the token is bound to
	Actor     string    `json:"actor"`               // id of the admin token that issued it, or "system"
	LeakHash  string    `json:"leak_hash"`           // hex sha256 of the token string
	WireHash  string    `json:"wire_hash"`           // hex of the token's wire identity (policy.WireHash)
}

// view is the one place a token's state is decided.
func (a *API) view(rec store.TokenRecord, now time.Time) TokenView {
	state := StateActive
	switch {
	case rec.Status == store.TokenRevoked || a.revoked(rec, now):
		// A rule that took effect after it was made (a rotation grace
		// ended, a future effective_at came) leaves the record's status.
		state = StateRevoked
	case !now.Before(rec.ExpiresAt):
		state = StateExpired
	case rec.Status == store.TokenRotated:
		state = StateRotated
	}
	return TokenView{
		ID: rec.ID, Subject: rec.Subject, Class: rec.Class, Env: rec.Env, Tenant: rec.Tenant,
		Scopes: nonNil(rec.Scopes), KeyID: rec.KeyID, IssuedAt: rec.IssuedAt.UTC(), ExpiresAt: rec.ExpiresAt.UTC(),
		State: state, Rotated: rec.Rotated, Successor: rec.Successor, Workload: rec.Workload, JKT: rec.JKT, Actor: rec.Actor,
		LeakHash: fmt.Sprintf("%x", rec.LeakHash), WireHash: fmt.Sprintf("%016x", rec.WireHash),
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// revoked asks the live revocation set whether rec's token is revoked at now.
func (a *API) revoked(rec store.TokenRecord, now time.Time) bool {
	t := policy.Token{
		Claims: policy.Claims{ID: rec.ID, Subject: rec.Subject, Tenant: rec.Tenant, IssuedAt: rec.IssuedAt.Unix()},
		KeyID:  rec.KeyID,
	}
	return a.cfg.Revocations.Revoked(&t, now)
}

func (a *API) listTokens(w http.ResponseWriter, r *http.Request, c caller) error {
	pr, err := a.pages.parse(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	f := store.TokenFilter{Subject: q.Get("subject"), Tenant: q.Get("tenant"), KeyID: q.Get("kid"), Class: q.Get("class")}
	now := a.cfg.Now()
	live := q.Get("live") == "true"
	if live {
		f.LiveAt = now
	}
	recs, err := a.cfg.Store.Tokens(r.Context(), f)
	if err != nil {
		return err
	}
	views := make([]TokenView, 0, len(recs))
	for _, rec := range recs {
		if live && a.revoked(rec, now) {
			continue
		}
		views = append(views, a.view(rec, now))
	}
	writeJSON(w, http.StatusOK, paginate(a.pages, r, pr, views, func(v TokenView) string { return sortKey(v.IssuedAt, v.ID) }))
	return nil
}

func (a *API) showToken(w http.ResponseWriter, r *http.Request, c caller) error {
	rec, err := a.cfg.Store.Token(r.Context(), r.PathValue("id"))
	if err != nil {
		return err // names the token
	}
	writeJSON(w, http.StatusOK, a.view(rec, a.cfg.Now()))
	return nil
}

// RevokeRequest is the body of POST /v1/tokens/{id}/revoke and of
// POST /v1/revocations (which also takes kind and target).
type RevokeRequest struct {
	Kind        policy.RevocationKind `json:"kind,omitempty"`
	Target      string                `json:"target,omitempty"`
	Reason      string                `json:"reason"`
	EffectiveAt time.Time             `json:"effective_at,omitzero"`
	// DryRun stores nothing: the answer says what the rule would cover
	// (also ?dry_run=true).
	DryRun bool `json:"dry_run,omitempty"`
	// AllowEmpty takes a subject, tenant or key rule that covers no live
	// token; without it such a rule is refused (409 covers_nothing).
	AllowEmpty bool `json:"allow_empty,omitempty"`
	// Force revokes the key that signed the caller's own admin token (409
	// own_admin_key without it); the agent then writes itself a new one.
	Force bool `json:"force,omitempty"`
}

// RevokeResponse reports a rule and the live tokens it covers.
type RevokeResponse struct {
	Revocation policy.Revocation `json:"revocation"`
	// Covered is the number of live tokens the rule covers; null while it
	// is not counted yet (replicating).
	Covered *int `json:"covered"`
	// Replicating (202): the rule is enforced on the agent that answered
	// and journaled there, and the store has not taken it yet; the agent
	// stores it as soon as the store answers. Without it (201) every agent
	// has it.
	Replicating bool `json:"replicating,omitempty"`
	// Existed (200): the rule was in force already; nothing was added.
	Existed bool `json:"existed,omitempty"`
	// DryRun (200): nothing was stored; Sample lists some of the tokens
	// it would cover.
	DryRun bool     `json:"dry_run,omitempty"`
	Sample []string `json:"sample,omitempty"`
	// AdminTokenReissued: the caller revoked the key that signed its own
	// admin token (force); the agent wrote itself a new admin token.
	AdminTokenReissued bool `json:"admin_token_reissued,omitempty"`
}

func (a *API) revokeToken(w http.ResponseWriter, r *http.Request, c caller) error {
	var req RevokeRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	req.Kind, req.Target = policy.RevokeToken, r.PathValue("id")
	return a.revoke(w, r, c, req)
}

func (a *API) createRevocation(w http.ResponseWriter, r *http.Request, c caller) error {
	var req RevokeRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	return a.revoke(w, r, c, req)
}

// revoke answers within revoke.DefaultDeadline whatever the store does:
// 201 stored, 202 enforced here and replicating, 200 existed or dry run.
func (a *API) revoke(w http.ResponseWriter, r *http.Request, c caller, req RevokeRequest) error {
	if strings.TrimSpace(req.Reason) == "" {
		return badRequest("reason is required: say why, e.g. \"leaked in CI logs\"")
	}
	if len(req.Reason) > audit.MaxReasonBytes {
		return badRequest("reason: at most %d bytes", audit.MaxReasonBytes)
	}
	rule := policy.Revocation{Kind: req.Kind, Target: req.Target, Reason: req.Reason, Actor: c.tokenID, EffectiveAt: req.EffectiveAt}
	if req.DryRun || dryRun(r) {
		p, err := a.cfg.Revoker.Preview(r.Context(), rule)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, RevokeResponse{Revocation: p.Rule, Covered: &p.Covered, Existed: p.Existed, DryRun: true, Sample: p.Sample})
		return nil
	}
	res, err := a.cfg.Revoker.Submit(r.Context(), rule, revoke.Options{AllowEmpty: req.AllowEmpty, CallerKey: c.keyID, Force: req.Force})
	switch {
	case errors.Is(err, revoke.ErrCoversNothing):
		return &apiError{status: http.StatusConflict, code: "covers_nothing", msg: err.Error()}
	case errors.Is(err, revoke.ErrOwnKey):
		return &apiError{status: http.StatusConflict, code: "own_admin_key", msg: fmt.Sprintf(
			"key %s signed the admin token this request was made with: revoking it locks that token out. Pass --force (force) to revoke it anyway; the agent then writes itself a new admin token at once (<data-dir>/admin.token), and a copy of the old one held elsewhere stops working", req.Target)}
	case err != nil:
		return err
	}
	own := req.Kind == policy.RevokeKey && req.Target == c.keyID
	out := RevokeResponse{Revocation: res.Rule, Existed: res.Existed, Replicating: !res.Stored}
	if res.Covered >= 0 {
		out.Covered = &res.Covered
	}
	if own && a.cfg.AdminTokenRevoked != nil && !res.Existed {
		if err := a.cfg.AdminTokenRevoked(context.WithoutCancel(r.Context())); err != nil {
			a.cfg.Logger.Error("revoked the key of the admin token; writing a new admin token failed", "key", req.Target, "err", err)
		} else {
			out.AdminTokenReissued = true
		}
	}
	writeJSON(w, revokeStatus(res.Stored, res.Existed), out)
	return nil
}

func revokeStatus(stored, existed bool) int {
	switch {
	case existed:
		return http.StatusOK
	case stored:
		return http.StatusCreated
	}
	return http.StatusAccepted
}

// LeakReport is the body of POST /v1/leaks: the sha256 of a token found
// where it should not be (a scanner sends the hash, never the token), and
// where it was found.
type LeakReport struct {
	SHA256 string `json:"sha256"`
	Source string `json:"source"`
	// DryRun names the token and stores nothing (also ?dry_run=true).
	DryRun bool `json:"dry_run,omitempty"`
}

// LeakResponse says which token the leak was and the rule that retired it.
type LeakResponse struct {
	TokenID    string            `json:"token_id"`
	Subject    string            `json:"subject"`
	Revocation policy.Revocation `json:"revocation"` // zero when AlreadyRevoked
	// AlreadyRevoked: the token was revoked before; no rule was added.
	AlreadyRevoked bool `json:"already_revoked,omitempty"`
	// Replicating (202): enforced on this agent, not yet stored (see
	// RevokeResponse).
	Replicating bool `json:"replicating,omitempty"`
	// DryRun (200): nothing was revoked; the token is named only.
	DryRun bool `json:"dry_run,omitempty"`
}

// reportLeak revokes the token whose sha256 a scanner found in the wild. A
// token revoked before is left as it is (200, already_revoked).
func (a *API) reportLeak(w http.ResponseWriter, r *http.Request, c caller) error {
	var req LeakReport
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	var h [32]byte
	if b, err := hex.DecodeString(req.SHA256); err != nil || len(b) != len(h) {
		return badRequest("sha256: want the 64 hex digits of the token's SHA-256")
	} else {
		copy(h[:], b)
	}
	if len(req.Source) > revoke.MaxLeakSourceBytes {
		return badRequest("source: at most %d bytes", revoke.MaxLeakSourceBytes)
	}
	if req.DryRun || dryRun(r) {
		rec, err := a.cfg.Store.TokenByLeakHash(r.Context(), h)
		if err != nil {
			return fmt.Errorf("no token issued here has that hash: %w", err)
		}
		now := a.cfg.Now()
		writeJSON(w, http.StatusOK, LeakResponse{TokenID: rec.ID, Subject: rec.Subject, AlreadyRevoked: !rec.Live(now) || a.revoked(rec, now), DryRun: true})
		return nil
	}
	leak, err := a.cfg.Revoker.RevokeLeak(r.Context(), h, req.Source, c.tokenID)
	if err != nil {
		return err
	}
	status := revokeStatus(leak.Stored, leak.Already)
	writeJSON(w, status, LeakResponse{TokenID: leak.Token.ID, Subject: leak.Token.Subject, Revocation: leak.Rule, AlreadyRevoked: leak.Already, Replicating: !leak.Stored})
	return nil
}

// dryRun reports ?dry_run=true.
func dryRun(r *http.Request) bool { return r.URL.Query().Get("dry_run") == "true" }

func (a *API) listRevocations(w http.ResponseWriter, r *http.Request, c caller) error {
	pr, err := a.pages.parse(r)
	if err != nil {
		return err
	}
	rules, err := a.cfg.Store.Revocations(r.Context())
	if err != nil {
		return err
	}
	for i := range rules {
		rules[i] = utcRevocation(rules[i])
	}
	writeJSON(w, http.StatusOK, paginate(a.pages, r, pr, rules, func(v policy.Revocation) string { return sortKey(v.CreatedAt, v.ID) }))
	return nil
}

func (a *API) rotateToken(w http.ResponseWriter, r *http.Request, c caller) error {
	if err := a.mayRotate(r.Context(), c, r.PathValue("id")); err != nil {
		return err
	}
	if dryRun(r) {
		return a.rotateDryRun(w, r, r.PathValue("id"))
	}
	out, err := a.cfg.Rotator.Rotate(r.Context(), r.PathValue("id"), c.tokenID)
	if err != nil && out.Token == "" {
		return err
	}
	resp := RotateResponse{IssueResponse: a.issued(out)}
	if err != nil {
		// The successor exists but a delivery sink failed: the caller gets
		// the token here, as it is not kept anywhere else.
		resp.Warning = err.Error()
	}
	writeJSON(w, http.StatusCreated, resp)
	return nil
}

// RotateResponse is the answer to POST /v1/tokens/{id}/rotate.
type RotateResponse struct {
	IssueResponse
	Warning string `json:"warning,omitempty"`
}

func (a *API) listKeys(w http.ResponseWriter, r *http.Request, c caller) error {
	pr, err := a.pages.parse(r)
	if err != nil {
		return err
	}
	keys := a.cfg.Issuer.Keys()
	for i := range keys {
		keys[i] = utcKey(keys[i])
	}
	writeJSON(w, http.StatusOK, paginate(a.pages, r, pr, keys, func(k store.Key) string { return sortKey(k.CreatedAt, k.ID) }))
	return nil
}

func (a *API) rotateKeys(w http.ResponseWriter, r *http.Request, c caller) error {
	if dryRun(r) {
		return a.rotateKeysDryRun(w, r.URL.Query().Get("now") == "true")
	}
	rotate := a.cfg.Issuer.RotateKeys // published ahead (issuer.KeyLead)
	if r.URL.Query().Get("now") == "true" {
		rotate = a.cfg.Issuer.RotateKeysNow // emergency: signs at once
	}
	k, err := rotate(r.Context(), c.tokenID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, k)
	return nil
}

func auditFilter(r *http.Request) audit.Filter {
	q := r.URL.Query()
	return audit.Filter{TokenID: q.Get("token"), Subject: q.Get("subject"), Action: q.Get("action")}
}

// auditTail answers the latest matching records, oldest first; its next
// page holds the records before them.
func (a *API) auditTail(w http.ResponseWriter, r *http.Request, c caller) error {
	pr, err := a.pages.parse(r)
	if err != nil {
		return err
	}
	f := auditFilter(r)
	if pr.after != "" {
		before, err := strconv.ParseUint(pr.after, 10, 64)
		if err != nil || before == 0 {
			return badRequest("page_token: not a position in the audit log")
		}
		f.Before = before
	}
	// One more than asked says whether older records remain.
	recs, err := audit.Tail(a.cfg.AuditDir, pr.limit+1, f)
	if err != nil {
		return err
	}
	page := Page[audit.Record]{Items: recs}
	if len(recs) > pr.limit {
		page.Items = recs[1:]
	}
	if page.Items == nil {
		page.Items = []audit.Record{}
	}
	for i := range page.Items {
		page.Items[i].Time = page.Items[i].Time.UTC()
	}
	if len(recs) > pr.limit && page.Items[0].Seq > 1 {
		page.NextPageToken = a.pages.seal(pageScope(r), strconv.FormatUint(page.Items[0].Seq, 10))
	}
	writeJSON(w, http.StatusOK, page)
	return nil
}

// AuditVerifyResponse is the answer to GET /v1/audit/verify.
type AuditVerifyResponse struct {
	OK      bool         `json:"ok"`
	Summary string       `json:"summary"`         // what was proved and what could not be
	Error   string       `json:"error,omitempty"` // where the chain breaks
	Report  audit.Report `json:"report"`
}

// auditVerify verifies this node's audit log with the agent's audit key
// against the head it recorded in the store.
func (a *API) auditVerify(w http.ResponseWriter, r *http.Request, c caller) error {
	if !a.verifying.TryLock() {
		return &apiError{status: http.StatusTooManyRequests, code: "busy", msg: "an audit verification is already running; try again when it ends"}
	}
	defer a.verifying.Unlock()
	rep, err := a.cfg.Audit.VerifyAgainst(r.Context(), a.cfg.Store, a.cfg.NodeName)
	var broken *audit.VerifyError
	if err != nil && !errors.As(err, &broken) {
		return err
	}
	resp := AuditVerifyResponse{OK: err == nil && rep.Gaps == 0, Summary: rep.Summary(), Report: rep}
	if err != nil {
		resp.Error = err.Error()
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// auditStream follows the audit log as NDJSON until the client goes away.
// With ?n=N it first sends the last N matching records.
func (a *API) auditStream(w http.ResponseWriter, r *http.Request, c caller) error {
	f := auditFilter(r)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	live := a.cfg.Audit.Subscribe(ctx, f)
	var backlog []audit.Record
	if s := r.URL.Query().Get("n"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > 10000 {
			return badRequest("n: want a number from 0 to 10000")
		}
		if n > 0 {
			if backlog, err = audit.Tail(a.cfg.AuditDir, n, f); err != nil {
				return err
			}
		}
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	// The server's write timeout bounds a whole response; a stream has
	// none, so each write gets its own: a reader that stops reading is
	// dropped, one that keeps up is not.
	arm := func() { _ = rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout)) }
	// Nothing more is read from a stream's client: the server's read
	// timeout must not end it.
	_ = rc.SetReadDeadline(time.Time{})
	enc := json.NewEncoder(w)
	var last uint64
	for _, rec := range backlog {
		arm()
		enc.Encode(rec)
		last = rec.Seq
	}
	rc.Flush()
	heartbeat := time.NewTicker(15 * time.Second)
	defer heartbeat.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-heartbeat.C:
			// A blank line keeps proxies from closing an idle stream.
			arm()
			if _, err := io.WriteString(w, "\n"); err != nil {
				return nil
			}
			rc.Flush()
		case rec, ok := <-live:
			if !ok {
				return nil // cut off as a slow reader, or the log closed
			}
			if rec.Seq <= last {
				continue
			}
			arm()
			if err := enc.Encode(rec); err != nil {
				return nil
			}
			rc.Flush()
		}
	}
}
