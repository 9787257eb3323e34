package policy

import "net/http"

// Reason is the stable snake_case code of a decision. It appears in deny
// bodies, metric labels and audit records, so codes are never renamed.
type Reason string

const (
	ReasonAllowed               Reason = "allowed"
	ReasonPublicRoute           Reason = "public_route"
	ReasonMissingToken          Reason = "missing_token"
	ReasonMalformedToken        Reason = "malformed_token"
	ReasonBadSignature          Reason = "bad_signature"
	ReasonUnknownKey            Reason = "unknown_key"
	ReasonExpired               Reason = "expired"
	ReasonNotYetValid           Reason = "not_yet_valid"
	ReasonLifetimeExceedsPolicy Reason = "lifetime_exceeds_policy"
	ReasonWrongEnvironment      Reason = "wrong_environment"
	ReasonUnknownClass          Reason = "unknown_class"
	ReasonRevoked               Reason = "revoked"
	ReasonInsufficientScope     Reason = "insufficient_scope"
	ReasonNoMatchingRoute       Reason = "no_matching_route"
	ReasonInternalError         Reason = "internal_error"
	// ReasonSenderMismatch: the token is bound to a sender (cnf) and the
	// request did not come from it, or came over a connection without a
	// peer identity.
	ReasonSenderMismatch Reason = "sender_mismatch"
	// ReasonDPoPInvalid: a DPoP-bound token without a valid proof for this
	// request (RFC 9449 section 4.3), or the DPoP scheme with a token that
	// is not DPoP-bound.
	ReasonDPoPInvalid Reason = "dpop_invalid"
	// ReasonDPoPReplayed: a DPoP proof whose jti this node has seen within
	// the proof window.
	ReasonDPoPReplayed Reason = "dpop_replayed"
	// ReasonProxyMisconfigured: an HTTP-mode check that does not say which
	// request it is about (an unknown endpoint, no service name, or a
	// missing or repeated original-request header): the proxy's auth
	// configuration is wrong, not the client's token.
	ReasonProxyMisconfigured Reason = "proxy_misconfigured"
	// ReasonStoreUnavailable: this node's view of the shared store is older
	// than its bound and its stale action is deny; nothing about the token
	// was checked. 503, so that a client and an operator tell it from a
	// token fault.
	ReasonStoreUnavailable Reason = "store_unavailable"
)

// Reasons lists every reason code, for metrics pre-registration and docs.
var Reasons = []Reason{
	ReasonAllowed, ReasonPublicRoute, ReasonMissingToken, ReasonMalformedToken,
	ReasonBadSignature, ReasonUnknownKey, ReasonExpired, ReasonNotYetValid,
	ReasonLifetimeExceedsPolicy, ReasonWrongEnvironment, ReasonUnknownClass,
	ReasonRevoked, ReasonInsufficientScope, ReasonNoMatchingRoute, ReasonInternalError,
	ReasonSenderMismatch, ReasonDPoPInvalid, ReasonDPoPReplayed, ReasonProxyMisconfigured,
	ReasonStoreUnavailable,
}

// Status is the HTTP status of a decision with this reason (RFC 6750):
// 401 for token faults (the client needs another token: missing, malformed,
// bad signature, unknown key, expired, not yet valid, living longer than
// policy allows, of a class the policy no longer has, revoked, presented by a
// sender it is not bound to), 403 for scope, environment and route faults (the
// token is fine but not for this request), 200 when allowed. An internal
// fault denies with 403. A node whose view of the store is too stale to
// decide answers 503.
func (r Reason) Status() int {
	switch r {
	case ReasonStoreUnavailable:
		return http.StatusServiceUnavailable
	case ReasonAllowed, ReasonPublicRoute:
		return http.StatusOK
	case ReasonInsufficientScope, ReasonWrongEnvironment, ReasonNoMatchingRoute:
		return http.StatusForbidden
	case ReasonInternalError, ReasonProxyMisconfigured:
		return http.StatusForbidden
	default:
		return http.StatusUnauthorized
	}
}

// Challenge is the WWW-Authenticate header value for a denial (RFC 6750).
// A request without a token, and an internal fault, get no error code: the
// client did nothing wrong that another token or scope would fix.
func (r Reason) Challenge() string {
	switch r {
	case ReasonDPoPInvalid, ReasonDPoPReplayed:
		return `DPoP algs="` + DPoPAlgs + `", error="invalid_dpop_proof", error_description="` + string(r) + `"`
	case ReasonSenderMismatch:
		// Workload- or key-bound: both schemes' challenges (RFC 9110
		// section 11.6.1 allows several in one field).
		return `Bearer realm="tokenwarden", error="invalid_token", error_description="sender_mismatch", DPoP algs="` + DPoPAlgs + `", error="invalid_token", error_description="sender_mismatch"`
	}
	switch {
	case r == ReasonMissingToken || r == ReasonInternalError || r == ReasonProxyMisconfigured:
		return `Bearer realm="tokenwarden"`
	case r.Status() == http.StatusUnauthorized:
		return `Bearer realm="tokenwarden", error="invalid_token", error_description="` + string(r) + `"`
	case r.Status() == http.StatusForbidden:
		return `Bearer realm="tokenwarden", error="insufficient_scope", error_description="` + string(r) + `"`
	}
	return ""
}

// Message is a short human sentence for a deny body.
func (r Reason) Message() string {
	switch r {
	case ReasonMissingToken:
		return "this route needs a bearer token"
	case ReasonMalformedToken:
		return "the bearer token is not a well-formed tokenwarden token"
	case ReasonBadSignature:
		return "the token's signature does not verify"
	case ReasonUnknownKey:
		return "the token was signed by a key this node does not trust"
	case ReasonExpired:
		return "the token has expired"
	case ReasonNotYetValid:
		return "the token is not valid yet"
	case ReasonLifetimeExceedsPolicy:
		return "the token lives longer than policy allows"
	case ReasonWrongEnvironment:
		return "the token was not minted for this environment"
	case ReasonUnknownClass:
		return "the token's class is no longer in the policy"
	case ReasonRevoked:
		return "the token has been revoked"
	case ReasonInsufficientScope:
		return "the token lacks a scope this route requires"
	case ReasonNoMatchingRoute:
		return "no policy route allows this request"
	case ReasonInternalError:
		return "the request could not be checked; denied"
	case ReasonSenderMismatch:
		return "the token is bound to another sender"
	case ReasonDPoPInvalid:
		return "the token needs a valid DPoP proof for this request"
	case ReasonDPoPReplayed:
		return "the DPoP proof was used before"
	case ReasonProxyMisconfigured:
		return "the proxy did not say which request to check; denied"
	case ReasonStoreUnavailable:
		return "this node cannot confirm it knows the latest revocations; denied, try again shortly"
	}
	return ""
}
