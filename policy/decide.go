package policy

import (
	"strings"
	"sync/atomic"
	"time"
)

// Request is what an enforcement point asks about: the bearer token (empty
// when the request carries none), the request's method, host and path, and
// the service the proxy's configuration says the request is for.
type Request struct {
	Token  string
	Method string
	Host   string
	Path   string
	// Service, when set, is the service the request is judged under
	// (Policy.MatchService): Host must be one of its hosts. When empty,
	// Host chooses the service (Policy.Match).
	Service string
	// Principal is the peer's workload identity (a SPIFFE ID) as the
	// proxy established it over mTLS (Envoy's source.principal); "" when
	// the connection has none. Only a token bound to a workload reads it.
	Principal string
	// DPoP is set when Authorization used the DPoP scheme (RFC 9449);
	// Proof is the DPoP header ("" when absent or repeated) and Scheme the
	// request's URL scheme (htu is checked against Scheme://Host+Path).
	DPoP   bool
	Proof  string
	Scheme string
}

// Decision is the answer to a Request. It never holds the token string.
type Decision struct {
	Allow    bool
	Status   int
	Reason   Reason
	TokenID  string
	Subject  string
	Tenant   string
	Scopes   []string
	Rule     string // the matched route's ID, "" when none matched
	WireHash uint64
	// Bound is the workload identity the token is bound to (its
	// cnf.spiffe_id), "" for a bearer token.
	Bound string
}

// TokenCache remembers verified tokens so that a token seen before skips the
// signature check. Implementations must not return a token past its exp.
type TokenCache interface {
	Get(token string, now time.Time) (*Token, bool)
	Add(token string, t *Token)
}

// CacheStats counts how the token cache served Decide: a hit only when a
// cached verification was used, a miss when the signature was checked.
type CacheStats interface {
	CacheHit()
	CacheMiss()
}

// RevocationChecker answers whether a verified token is revoked at now.
type RevocationChecker interface {
	Revoked(t *Token, now time.Time) bool
}

// Decider makes decisions for one environment. Policy and keys are swapped
// atomically on reload; Decide is safe for concurrent use.
type Decider struct {
	env         string
	cache       TokenCache
	stats       CacheStats
	revocations RevocationChecker
	dpop        *DPoPChecker
	verifier    atomic.Pointer[Verifier]
}

// DeciderConfig configures a Decider. Cache may be nil (every token is
// verified), and CacheStats (nothing counted); Revocations may not.
type DeciderConfig struct {
	Env         string
	Policy      *Policy
	Keys        *KeySet
	Cache       TokenCache
	CacheStats  CacheStats
	Revocations RevocationChecker
	// DPoP checks proofs of DPoP-bound tokens; nil: a checker with the
	// default window and replay cache size.
	DPoP *DPoPChecker
}

// NewDecider builds a Decider.
func NewDecider(cfg DeciderConfig) *Decider {
	d := &Decider{env: cfg.Env, cache: cfg.Cache, stats: cfg.CacheStats, revocations: cfg.Revocations, dpop: cfg.DPoP}
	if d.dpop == nil {
		d.dpop = NewDPoPChecker(0, 0)
	}
	d.verifier.Store(&Verifier{Keys: cfg.Keys, Policy: cfg.Policy, Env: cfg.Env})
	return d
}

// SetPolicy swaps the policy. Cached tokens verified under the old one are
// verified again on their next Decide; callers may also purge the token
// cache to free it.
func (d *Decider) SetPolicy(p *Policy) {
	v := *d.verifier.Load()
	v.Policy = p
	d.verifier.Store(&v)
}

// SetKeys swaps the verification keys. A retired key's cached tokens are
// refused on their next Decide.
func (d *Decider) SetKeys(k *KeySet) {
	v := *d.verifier.Load()
	v.Keys = k
	d.verifier.Store(&v)
}

// Policy returns the policy in force.
func (d *Decider) Policy() *Policy { return d.verifier.Load().Policy }

// Keys returns the verification keys in force.
func (d *Decider) Keys() *KeySet { return d.verifier.Load().Keys }

// Verify checks a token against the policy and keys in force, taken
// together in one load (a reload between two loads cannot pair one
// policy's checks with another's keys). It does not consult revocations.
func (d *Decider) Verify(token string, now time.Time) (*Token, *VerifyError) {
	return d.verifier.Load().Verify(token, now)
}

// Env is the environment this Decider enforces.
func (d *Decider) Env() string { return d.env }

// Decide answers a request. It fails closed: anything it cannot establish
// is a denial with the precise reason.
func (d *Decider) Decide(req Request, now time.Time) Decision {
	v := d.verifier.Load()
	if v.Policy == nil || d.revocations == nil {
		return deny(ReasonInternalError)
	}
	var route *Route
	var ok bool
	if req.Service != "" {
		route, ok = v.Policy.MatchService(req.Service, req.Method, req.Host, req.Path)
	} else {
		route, ok = v.Policy.Match(req.Method, req.Host, req.Path)
	}
	if !ok {
		return deny(ReasonNoMatchingRoute)
	}
	if route.Public {
		return Decision{Allow: true, Status: 200, Reason: ReasonPublicRoute, Rule: route.ID}
	}
	if req.Token == "" {
		dec := deny(ReasonMissingToken)
		dec.Rule = route.ID
		return dec
	}
	tok, reason := d.verified(v, req.Token, now)
	if reason != "" {
		dec := deny(reason)
		dec.Rule = route.ID
		return dec
	}
	dec := Decision{
		Status: 200, Reason: ReasonAllowed, TokenID: tok.ID, Subject: tok.Subject,
		Tenant: tok.Tenant, Scopes: tok.Scopes, Rule: route.ID, WireHash: tok.WireHash,
	}
	if d.revocations.Revoked(tok, now) {
		return denyToken(dec, ReasonRevoked)
	}
	if cnf := tok.Cnf; cnf != nil {
		if r := d.checkSender(cnf, &req, &dec, now); r != "" {
			return denyToken(dec, r)
		}
	} else if req.DPoP {
		// The DPoP scheme carries DPoP-bound tokens only (RFC 9449 7.1).
		return denyToken(dec, ReasonDPoPInvalid)
	}
	for _, s := range route.Scopes {
		if !tok.HasScope(s) {
			return denyToken(dec, ReasonInsufficientScope)
		}
	}
	dec.Allow = true
	return dec
}

// checkSender checks a bound token's sender; Verify refused a cnf that
// names no method, or two.
func (d *Decider) checkSender(cnf *Confirmation, req *Request, dec *Decision, now time.Time) Reason {
	if cnf.JKT != "" {
		dec.Bound = "jkt:" + cnf.JKT
		if !req.DPoP {
			return ReasonDPoPInvalid
		}
		return d.dpop.Check(req.Proof, cnf.JKT, ProofRequest{
			Method: req.Method, Scheme: req.Scheme, Host: req.Host, Path: req.Path, Token: req.Token,
		}, now)
	}
	// Identities are public: a plain compare leaks nothing.
	dec.Bound = cnf.SPIFFEID
	if req.Principal == "" || req.Principal != cnf.SPIFFEID || req.DPoP {
		return ReasonSenderMismatch
	}
	return ""
}

// verified returns the verified token, from the cache when seen before.
func (d *Decider) verified(v *Verifier, token string, now time.Time) (*Token, Reason) {
	if d.cache != nil {
		// A token verified under another policy or key set (a reload since,
		// or a check that raced one and cached its token after the caller
		// purged the cache) is verified again: its lifetime, class and key
		// may no longer pass.
		if t, ok := d.cache.Get(token, now); ok && t.verifiedBy == v {
			// The signature and claims were checked under this very policy
			// and key set; what can change since is time.
			d.counted(true)
			if r := checkTimes(&t.Claims, now, v.Policy); r != "" {
				return nil, r
			}
			return t, ""
		}
		// Not cached, or cached under another policy or key set: the
		// signature is checked, so this is a miss.
		d.counted(false)
	}
	t, err := v.Verify(token, now)
	if err != nil {
		return nil, err.Reason
	}
	if d.cache != nil {
		t.verifiedBy = v
		d.cache.Add(token, t)
	}
	return t, ""
}

func (d *Decider) counted(hit bool) {
	switch {
	case d.stats == nil:
	case hit:
		d.stats.CacheHit()
	default:
		d.stats.CacheMiss()
	}
}

func deny(r Reason) Decision { return Decision{Status: r.Status(), Reason: r} }

func denyToken(dec Decision, r Reason) Decision {
	dec.Allow, dec.Status, dec.Reason = false, r.Status(), r
	return dec
}

// DPoPToken extracts the token of an Authorization header value of the
// DPoP scheme ("DPoP <token>", RFC 9449 section 7.1), read as BearerToken
// reads its scheme; "" for any other.
func DPoPToken(authorization string) string {
	const scheme = "dpop "
	if len(authorization) <= len(scheme) || !strings.EqualFold(authorization[:len(scheme)], scheme) {
		return ""
	}
	return strings.TrimRight(strings.TrimLeft(authorization[len(scheme):], " "), " \t")
}

// BearerToken extracts the token of an Authorization header value
// ("Bearer <token>", scheme case-insensitive). It returns "" when the header
// is absent or of another scheme.
//
// It reads the header as RFC 6750 writes it: "Bearer", one or more SP, the
// token. Only SP separates scheme and token, and only SP and HTAB (the OWS
// proxies drop) are trimmed after it. Any other leading byte (HTAB, NBSP,
// ...) stays and makes the token malformed. The kernel side accepts at
// least this much (it also skips HTAB), so every token allowed here is one
// the kernel finds, counts and can drop.
func BearerToken(authorization string) string {
	const scheme = "bearer "
	if len(authorization) <= len(scheme) || !strings.EqualFold(authorization[:len(scheme)], scheme) {
		return ""
	}
	return strings.TrimRight(strings.TrimLeft(authorization[len(scheme):], " "), " \t")
}
