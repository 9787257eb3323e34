package policy

import (
	"fmt"
	"strings"
)

// BindingWorkload is the class binding that ties a token to one workload
// identity (a SPIFFE ID): the token is honoured only when the peer identity
// its enforcement point establishes (Envoy's source.principal over mTLS)
// is that identity. See docs/binding.md.
const BindingWorkload = "workload"

// MaxSPIFFEIDBytes bounds a SPIFFE ID, as the SPIFFE standard does.
const MaxSPIFFEIDBytes = 2048

const spiffeScheme = "spiffe://"

// Confirmation is the token's cnf claim (RFC 7800): how its sender proves
// it is the party the token was issued to. SPIFFEID (member "spiffe_id",
// defined by tokenwarden) binds it to a workload identity. A cnf whose
// members this node does not enforce is refused: a token never works
// unbound because a verifier did not understand its binding.
type Confirmation struct {
	SPIFFEID string `json:"spiffe_id,omitempty"`
	// JKT is the RFC 7638 SHA-256 thumbprint of the client's key (RFC
	// 9449): requests must carry a DPoP proof signed by it.
	JKT string `json:"jkt,omitempty"`
}

// ValidSPIFFEID reports why id is not a SPIFFE ID ("" when it is):
// spiffe://, a lower-case trust domain, then a path of one or more
// segments of letters, digits, '.', '-' and '_', no "." or "..", no query,
// fragment, port or user info.
func ValidSPIFFEID(id string) string {
	if len(id) > MaxSPIFFEIDBytes {
		return fmt.Sprintf("longer than %d bytes", MaxSPIFFEIDBytes)
	}
	rest, ok := strings.CutPrefix(id, spiffeScheme)
	if !ok {
		return "does not start with spiffe://"
	}
	td, path, _ := strings.Cut(rest, "/")
	if why := validTrustDomain(td); why != "" {
		return why
	}
	if path == "" {
		return "names no workload: add a path such as /ns/ci/sa/deployer"
	}
	for _, seg := range strings.Split(path, "/") {
		if why := validIDSegment(seg); why != "" {
			return why
		}
	}
	return ""
}

func validTrustDomain(td string) string {
	if td == "" {
		return "has no trust domain"
	}
	for i := 0; i < len(td); i++ {
		switch c := td[i]; {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '.', c == '-', c == '_':
		default:
			return fmt.Sprintf("trust domain %q: only lower-case letters, digits, '.', '-' and '_'", td)
		}
	}
	return ""
}

func validIDSegment(seg string) string {
	if seg == "" || seg == "." || seg == ".." {
		return "has an empty, \".\" or \"..\" path segment"
	}
	for i := 0; i < len(seg); i++ {
		switch c := seg[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '-', c == '_':
		default:
			return fmt.Sprintf("path segment %q: only letters, digits, '.', '-' and '_'", seg)
		}
	}
	return ""
}

// workloadPattern is a compiled entry of a class's workloads: a SPIFFE ID
// whose path segments may be "*" (exactly one segment) or, as the last
// segment, "**" (one or more segments). The trust domain is always literal.
type workloadPattern struct {
	trustDomain string
	segments    []string
}

// parseWorkloadPattern compiles a workloads entry.
func parseWorkloadPattern(p string) (workloadPattern, error) {
	if len(p) > MaxSPIFFEIDBytes {
		return workloadPattern{}, fmt.Errorf("longer than %d bytes", MaxSPIFFEIDBytes)
	}
	rest, ok := strings.CutPrefix(p, spiffeScheme)
	if !ok {
		return workloadPattern{}, fmt.Errorf("%q does not start with spiffe://", p)
	}
	td, path, _ := strings.Cut(rest, "/")
	if why := validTrustDomain(td); why != "" {
		return workloadPattern{}, fmt.Errorf("%q: %s (the trust domain is matched literally)", p, why)
	}
	if path == "" {
		return workloadPattern{}, fmt.Errorf("%q names no workload: add a path such as /ns/ci/sa/* or /ns/ci/**", p)
	}
	segs := strings.Split(path, "/")
	for i, s := range segs {
		switch {
		case s == "*":
		case s == "**":
			if i != len(segs)-1 {
				return workloadPattern{}, fmt.Errorf("%q: ** may only be the last segment", p)
			}
		default:
			if why := validIDSegment(s); why != "" {
				return workloadPattern{}, fmt.Errorf("%q %s: use literal segments, * (one segment) or a trailing ** (any number)", p, why)
			}
		}
	}
	return workloadPattern{trustDomain: td, segments: segs}, nil
}

// matches reports whether the valid SPIFFE ID id matches the pattern.
func (w workloadPattern) matches(id string) bool {
	rest, ok := strings.CutPrefix(id, spiffeScheme)
	if !ok {
		return false
	}
	td, path, _ := strings.Cut(rest, "/")
	if td != w.trustDomain {
		return false
	}
	for i, p := range w.segments {
		if p == "**" {
			return path != ""
		}
		if path == "" && i < len(w.segments) {
			return false
		}
		seg, more, _ := strings.Cut(path, "/")
		if p != "*" && p != seg {
			return false
		}
		path = more
	}
	return path == ""
}

// AllowsWorkload reports whether a token of this class may be bound to the
// SPIFFE ID id: the class binds to workloads and id matches one of its
// workloads patterns (any valid ID when it lists none).
func (c *Class) AllowsWorkload(id string) bool {
	if c.Binding != BindingWorkload || ValidSPIFFEID(id) != "" {
		return false
	}
	if len(c.workloads) == 0 {
		return true
	}
	for _, w := range c.workloads {
		if w.matches(id) {
			return true
		}
	}
	return false
}

// checkBinding checks a token's cnf against its class under the policy in
// force: a bound token must name a confirmation this node enforces, and a
// token of a workload-bound class must be bound to a workload the class
// still allows (so narrowing workloads, or adding binding to a class, cuts
// off tokens issued before, as a lifetime cut does).
func (c *Class) checkBinding(cnf *Confirmation) *VerifyError {
	if cnf != nil && (cnf.SPIFFEID == "") == (cnf.JKT == "") {
		return reject(ReasonMalformedToken, "cnf must name exactly one confirmation method this node enforces")
	}
	switch c.Binding {
	case BindingDPoP:
		if cnf == nil || cnf.JKT == "" {
			return reject(ReasonSenderMismatch, fmt.Sprintf("class %q binds tokens to a DPoP key; this token is not", c.Name))
		}
		return nil
	case BindingWorkload:
	default:
		return nil
	}
	if cnf == nil || cnf.SPIFFEID == "" {
		return reject(ReasonSenderMismatch, fmt.Sprintf("class %q binds tokens to a workload; this token is not", c.Name))
	}
	if !c.AllowsWorkload(cnf.SPIFFEID) {
		return reject(ReasonSenderMismatch, fmt.Sprintf("bound to a workload class %q no longer allows", c.Name))
	}
	return nil
}
