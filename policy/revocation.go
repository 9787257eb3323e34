package policy

import (
	"fmt"
	"time"
)

// RevocationKind says what a revocation rule matches.
type RevocationKind string

const (
	RevokeToken   RevocationKind = "token"   // one token, by jti
	RevokeSubject RevocationKind = "subject" // a subject's tokens issued before a time
	RevokeTenant  RevocationKind = "tenant"  // a tenant's tokens issued before a time
	RevokeKey     RevocationKind = "key"     // every token signed by a key
)

// Revocation is a revocation rule. It takes effect at EffectiveAt (rotation
// grace uses a future time). Subject and tenant rules cover tokens issued
// before IssuedBefore, so tokens issued after a role change still work.
type Revocation struct {
	ID           string         `json:"id"`
	Kind         RevocationKind `json:"kind"`
	Target       string         `json:"target"`
	EffectiveAt  time.Time      `json:"effective_at"`
	IssuedBefore time.Time      `json:"issued_before,omitzero"`
	// Expires is when no token the rule could match can still be valid; the
	// rule may be dropped after it. Zero means never (key rules).
	Expires   time.Time `json:"expires,omitzero"`
	Reason    string    `json:"reason"`
	Actor     string    `json:"actor"`
	CreatedAt time.Time `json:"created_at"`
}

// Validate checks a rule before it is stored.
func (r *Revocation) Validate() error {
	switch r.Kind {
	case RevokeToken, RevokeSubject, RevokeTenant, RevokeKey:
	default:
		return fmt.Errorf("revocation kind %q: want token, subject, tenant or key", r.Kind)
	}
	if r.Target == "" {
		return fmt.Errorf("revocation of a %s needs a target", r.Kind)
	}
	if r.Reason == "" {
		return fmt.Errorf("revocation needs a reason")
	}
	if r.EffectiveAt.IsZero() {
		return fmt.Errorf("revocation needs effective_at")
	}
	if (r.Kind == RevokeSubject || r.Kind == RevokeTenant) && r.IssuedBefore.IsZero() {
		return fmt.Errorf("a %s revocation needs issued_before", r.Kind)
	}
	return nil
}

// Covers reports whether the rule revokes token t at now.
func (r *Revocation) Covers(t *Token, now time.Time) bool {
	if now.Before(r.EffectiveAt) {
		return false
	}
	switch r.Kind {
	case RevokeToken:
		return t.ID == r.Target
	case RevokeSubject:
		return t.Subject == r.Target && t.IssuedAt <= r.IssuedBefore.Unix()
	case RevokeTenant:
		return t.Tenant != "" && t.Tenant == r.Target && t.IssuedAt <= r.IssuedBefore.Unix()
	case RevokeKey:
		return t.KeyID == r.Target
	}
	return false
}

// NewRevocationID returns a fresh id for a rule.
func NewRevocationID() string { return "rv_" + NewTokenID()[:20] }
