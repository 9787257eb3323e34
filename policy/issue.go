package policy

import (
	"fmt"
	"strings"
	"time"
)

// IssueRequest asks for a token within policy.
type IssueRequest struct {
	Subject string
	Class   string
	Env     string
	Scopes  []string      // empty: every scope of the class
	TTL     time.Duration // zero: the class default_ttl
	Tenant  string
	Rotated string // jti of the predecessor, for rotation
	// BindWorkload is the SPIFFE ID a token of a workload-bound class is
	// bound to (required for such a class, refused for any other).
	BindWorkload string
	// BindJKT is the RFC 7638 thumbprint of the client key a token of a
	// DPoP-bound class is bound to (required for such a class, refused for
	// any other).
	BindJKT string
}

// Refusal is a request refused for what it asks (an issuance beyond
// policy, a rotation of a dead token, a revocation of the active key), not
// for a fault: retrying it cannot help. Its message says why and how to fix
// it.
type Refusal struct{ Msg string }

func (e *Refusal) Error() string { return e.Msg }

func refuse(format string, args ...any) error { return &Refusal{Msg: fmt.Sprintf(format, args...)} }

// MaxSubjectBytes bounds subject and tenant names.
const MaxSubjectBytes = 256

// Issue checks a request against the policy and returns the claims to mint:
// scopes within the class, TTL within min(class, environment) max_ttl, class
// allowed in the environment.
func (p *Policy) Issue(req IssueRequest, now time.Time) (Claims, error) {
	if req.Subject == "" || len(req.Subject) > MaxSubjectBytes || strings.ContainsAny(req.Subject, " \t\r\n") {
		return Claims{}, refuse("subject is required: a name without spaces, at most %d bytes", MaxSubjectBytes)
	}
	if len(req.Tenant) > MaxSubjectBytes || strings.ContainsAny(req.Tenant, " \t\r\n") {
		return Claims{}, refuse("tenant: a name without spaces, at most %d bytes", MaxSubjectBytes)
	}
	class, ok := p.classes[req.Class]
	if !ok {
		return Claims{}, refuse("unknown class %q (the policy defines: %s)", req.Class, strings.Join(sortedKeys(p.classes), ", "))
	}
	if _, ok := p.Doc.Environments[req.Env]; !ok {
		return Claims{}, refuse("unknown environment %q", req.Env)
	}
	if !class.envs[req.Env] {
		return Claims{}, refuse("class %s may not be issued in %s (allowed: %s)", class.Name, req.Env, strings.Join(class.Environments, ", "))
	}
	var cnf *Confirmation
	switch {
	case class.Binding == BindingWorkload && req.BindWorkload == "":
		return Claims{}, refuse("class %s binds tokens to a workload: name its SPIFFE ID (--bind-workload spiffe://...)", class.Name)
	case class.Binding == BindingWorkload:
		if why := ValidSPIFFEID(req.BindWorkload); why != "" {
			return Claims{}, refuse("bind workload: not a SPIFFE ID: it %s", why)
		}
		if !class.AllowsWorkload(req.BindWorkload) {
			return Claims{}, refuse("class %s may not be bound to %s (its workloads: %s)", class.Name, req.BindWorkload, strings.Join(class.Workloads, " "))
		}
		cnf = &Confirmation{SPIFFEID: req.BindWorkload}
	case req.BindWorkload != "":
		return Claims{}, refuse("class %s does not bind tokens to a workload: drop the workload binding or use a class with binding: workload", class.Name)
	}
	switch {
	case class.Binding == BindingDPoP && req.BindJKT == "":
		return Claims{}, refuse("class %s binds tokens to a DPoP key: give the client's public key (--bind-jwk FILE)", class.Name)
	case class.Binding == BindingDPoP:
		if why := ValidJKT(req.BindJKT); why != "" {
			return Claims{}, refuse("bind jkt: %s", why)
		}
		cnf = &Confirmation{JKT: req.BindJKT}
	case req.BindJKT != "":
		return Claims{}, refuse("class %s does not bind tokens to a DPoP key: drop the key binding or use a class with binding: dpop", class.Name)
	}
	scopes := req.Scopes
	if len(scopes) == 0 {
		scopes = class.Scopes
	}
	seen := map[string]bool{}
	var kept []string
	for _, s := range scopes {
		if !class.scopes[s] {
			return Claims{}, refuse("scope %q is outside class %s (it may hold: %s)", s, class.Name, strings.Join(class.Scopes, " "))
		}
		if !seen[s] {
			seen[s] = true
			kept = append(kept, s)
		}
	}
	ttl := req.TTL
	if ttl == 0 {
		ttl = class.DefaultTTL.D()
	}
	limit := p.Lifetime(req.Env, req.Class)
	if ttl < time.Second {
		return Claims{}, refuse("ttl must be at least 1s")
	}
	if ttl > limit {
		return Claims{}, refuse("ttl %s is above the limit of %s for class %s in %s", ttl, limit, class.Name, req.Env)
	}
	iat := now.Unix()
	return Claims{
		Issuer:    p.Issuer(),
		Subject:   req.Subject,
		ID:        NewTokenID(),
		IssuedAt:  iat,
		NotBefore: iat,
		Expires:   iat + int64(ttl/time.Second),
		Scope:     strings.Join(kept, " "),
		Env:       req.Env,
		Class:     class.Name,
		Tenant:    req.Tenant,
		Rotated:   req.Rotated,
		Cnf:       cnf,
	}, nil
}
