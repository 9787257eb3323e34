package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// ActionRequest is the audit action of an admin API request: every
// mutation, whatever its outcome, and every call refused for a missing
// scope. Actor and TokenID are the caller's jti, Subject the operator the
// caller's token names, Route the route's pattern; Details carry the
// status and path.
const ActionRequest = "admin.request"

// BootstrapSubject is the subject of the admin token the agent writes to
// its data directory (agent/admintoken). No operator's token may take it:
// revoking the bootstrap token by subject must not revoke an operator's.
const BootstrapSubject = "tokenwarden-admin"

// AdminIssueRequest is the body of POST /v1/admin/tokens: an operator's
// admin token.
type AdminIssueRequest struct {
	Subject string   `json:"subject"`          // the operator who owns it
	TTL     string   `json:"ttl,omitempty"`    // Go duration; empty: the class default
	Scopes  []string `json:"scopes,omitempty"` // admin API scopes; empty: tokenwarden:admin
}

// issueAdmin mints an operator's admin token in the policy's admin class
// (the class holding tokenwarden:admin in this environment). The token.issue
// record names its owner (Subject) and the admin who minted it (Actor).
func (a *API) issueAdmin(w http.ResponseWriter, r *http.Request, c caller) error {
	var req AdminIssueRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if req.Subject == BootstrapSubject {
		return badRequest("subject %s is the agent's own admin token's: name the operator", BootstrapSubject)
	}
	if len(req.Scopes) == 0 {
		req.Scopes = []string{AdminScope}
	}
	for _, s := range req.Scopes {
		if !slices.Contains(apiScopes, s) {
			return badRequest("scope %q: an admin token holds admin API scopes only (%s)", s, strings.Join(apiScopes, ", "))
		}
		if !Grants(c.scopes, s) {
			// No escalation: a caller grants only what it holds.
			return &apiError{status: http.StatusForbidden, code: string(policy.ReasonInsufficientScope),
				msg: fmt.Sprintf("scope %s is wider than the caller's own scopes", s)}
		}
	}
	var ttl time.Duration
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil {
			return badRequest("ttl %q: want a Go duration such as 30m or 8h", req.TTL)
		}
		ttl = d
	}
	env := a.cfg.Decider.Env()
	class := AdminClass(a.cfg.Decider.Policy(), env, req.Scopes...)
	if class == "" {
		return &policy.Refusal{Msg: fmt.Sprintf("the policy has no class holding %s and %s in environment %s: list them in the admin class's scopes",
			AdminScope, strings.Join(req.Scopes, " "), env)}
	}
	out, err := a.cfg.Issuer.Issue(r.Context(), policy.IssueRequest{
		Subject: req.Subject, Class: class, Scopes: req.Scopes, TTL: ttl,
	}, c.tokenID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, a.issued(out))
	return nil
}

// AdminClass names the first class (by name) that holds tokenwarden:admin
// and every one of scopes, may be issued in env and binds its tokens to
// nothing: the class of admin tokens. Empty when there is none.
func AdminClass(p *policy.Policy, env string, scopes ...string) string {
	for _, name := range p.ClassNames() {
		c, _ := p.Class(name)
		if c.Binding != "" || !c.AllowsEnvironment(env) || !c.AllowsScope(AdminScope) {
			continue
		}
		if !slices.ContainsFunc(scopes, func(s string) bool { return !c.AllowsScope(s) }) {
			return name
		}
	}
	return ""
}

// mayMint refuses to let a caller without tokenwarden:admin mint a token
// that carries any tokenwarden: scope (the requested ones, or the class's
// when none are named): holding :issue must not lead to holding more. The
// agent's own admin token's subject is reserved.
func (a *API) mayMint(c caller, req IssueRequest) error {
	if req.Subject == BootstrapSubject {
		return badRequest("subject %s is reserved for the agent's own admin token", BootstrapSubject)
	}
	scopes := req.Scopes
	if len(scopes) == 0 {
		if cl, ok := a.cfg.Decider.Policy().Class(req.Class); ok {
			scopes = cl.Scopes
		}
	}
	return mayHold(c, scopes)
}

// mayRotate refuses to let a caller without tokenwarden:admin rotate a
// token that carries a tokenwarden: scope: the successor, handed to the
// caller, would carry it too.
func (a *API) mayRotate(ctx context.Context, c caller, id string) error {
	rec, err := a.cfg.Store.Token(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil // Rotate reports it
	case err != nil:
		// Fail closed: a store that did not answer here might answer
		// Rotate, which would hand the successor to an unchecked caller.
		return err
	}
	return mayHold(c, rec.Scopes)
}

func mayHold(c caller, scopes []string) error {
	if slices.Contains(c.scopes, AdminScope) {
		return nil
	}
	for _, s := range scopes {
		if privileged(s) {
			return &apiError{status: http.StatusForbidden, code: string(policy.ReasonInsufficientScope),
				msg: fmt.Sprintf("a token with scope %s is minted only by a caller holding %s", s, AdminScope)}
		}
	}
	return nil
}

// auditRequest records an admin request with the operator who made it. A
// request that failed (status 400 and above: refused for a missing scope,
// a bad body) is recorded within its token's failure budget; beyond it,
// failures are counted and the next record says how many were not
// recorded one by one, so that one token cannot flood the log (and push
// the evidence out of its size budget).
func (a *API) auditRequest(r *http.Request, c caller, pattern string, status int) {
	details := map[string]any{"status": status, "path": r.URL.Path}
	if status >= 400 {
		ok, suppressed := a.failures.allow(c.tokenID, a.cfg.Now())
		if !ok {
			return
		}
		if suppressed > 0 {
			details["failures_not_recorded"] = suppressed
		}
	}
	_, err := a.cfg.Audit.Append(audit.Record{
		Action: ActionRequest, Actor: c.tokenID, TokenID: c.tokenID, Subject: c.subject,
		Route: pattern, Source: r.RemoteAddr, Details: audit.Details(details),
	})
	if err != nil {
		a.cfg.Logger.Error("admin request not audited: the audit log refused its record",
			"route", pattern, "actor", c.tokenID, "subject", c.subject, "err", err)
	}
}

// Failed admin requests each token may have recorded one by one: a burst
// of failureBurst, then one a failureEvery.
const (
	failureBurst = 10
	failureEvery = 6 * time.Second
	// maxFailureTokens bounds the tokens tracked; past it the budgets
	// start over (a caller gains at most one more burst).
	maxFailureTokens = 4096
)

// failureBudget rate-limits the audit records of failed requests, per
// calling token.
type failureBudget struct {
	mu sync.Mutex
	m  map[string]*failures
}

type failures struct {
	lim        *rate.Limiter
	suppressed int
}

// allow reports whether a failure of token's may be recorded at now, and
// how many were not recorded since the last one that was.
func (b *failureBudget) allow(token string, now time.Time) (bool, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f, ok := b.m[token]
	if !ok {
		if b.m == nil || len(b.m) >= maxFailureTokens {
			b.m = map[string]*failures{}
		}
		f = &failures{lim: rate.NewLimiter(rate.Every(failureEvery), failureBurst)}
		b.m[token] = f
	}
	if !f.lim.AllowN(now, 1) {
		f.suppressed++
		return false, 0
	}
	n := f.suppressed
	f.suppressed = 0
	return true, n
}
