// Package revocation holds what an enforcement point consults on every
// request: the exact in-memory RevocationSet (never forgets a rule that can
// still match a valid token) and the bounded LRU of verified tokens.
package revocation

import (
	"math"
	"sync"
	"time"

	"github.com/tokenwarden/tokenwarden/policy"
)

// window is when a rule applies and when it may be forgotten, in Unix
// nanoseconds (0 = never forgotten). Kept small: the set may hold millions.
type window struct {
	effective int64
	expires   int64
}

type issuedBefore struct {
	window
	before int64 // unix seconds: tokens with iat <= before are covered
	id     string
}

// Set is the exact revocation set. A rule leaves it only through Prune,
// once no token it could match can still be valid, or through Remove.
// It is safe for concurrent use; look-ups take a read lock.
type Set struct {
	mu       sync.RWMutex
	byID     map[[16]byte]window // jtis minted by policy.NewTokenID
	byIDText map[string]window   // any other jti shape
	subjects map[string][]issuedBefore
	tenants  map[string][]issuedBefore
	keys     map[string]window
	listed   int // entries in subjects and tenants
}

// NewSet returns an empty set.
func NewSet() *Set {
	return &Set{
		byID:     map[[16]byte]window{},
		byIDText: map[string]window{},
		subjects: map[string][]issuedBefore{},
		tenants:  map[string][]issuedBefore{},
		keys:     map[string]window{},
	}
}

// Times outside the range of UnixNano (1678 to 2262) are clamped: UnixNano
// is undefined there, and a far expiry that wrapped to a negative number
// would have Prune drop a rule at once.
func nanos(t time.Time) int64 {
	switch {
	case t.IsZero():
		return 0
	case t.After(maxNanos):
		return math.MaxInt64
	case t.Before(minNanos):
		return math.MinInt64
	}
	return t.UnixNano()
}

var (
	maxNanos = time.Unix(0, math.MaxInt64)
	minNanos = time.Unix(0, math.MinInt64)
)

// merge combines two rules on one jti or key: the union applies from the
// earlier effective time until the later expiry (0 = never), so neither
// rule is shortened by the other.
func merge(old window, had bool, w window) window {
	if !had {
		return w
	}
	old.effective = min(old.effective, w.effective)
	if old.expires != 0 && (w.expires == 0 || w.expires > old.expires) {
		old.expires = w.expires
	}
	return old
}

// Add inserts a rule (idempotent). Token and key rules are keyed by their
// target: a second rule on the same jti or key widens the first (earlier
// effective time, later expiry). Subject and tenant rules are kept apart;
// a rule with the id of one already held replaces it, as the store does.
func (s *Set) Add(r policy.Revocation) {
	w := window{effective: nanos(r.EffectiveAt), expires: nanos(r.Expires)}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch r.Kind {
	case policy.RevokeToken:
		if k, ok := policy.TokenIDKey(r.Target); ok {
			old, had := s.byID[k]
			s.byID[k] = merge(old, had, w)
		} else {
			old, had := s.byIDText[r.Target]
			s.byIDText[r.Target] = merge(old, had, w)
		}
	case policy.RevokeSubject, policy.RevokeTenant:
		m := s.subjects
		if r.Kind == policy.RevokeTenant {
			m = s.tenants
		}
		e := issuedBefore{window: w, before: r.IssuedBefore.Unix(), id: r.ID}
		list := m[r.Target]
		for i := range list {
			// Without an id a rule can only be told apart by its content:
			// two different id-less rules must both be kept.
			if list[i] == e || (r.ID != "" && list[i].id == r.ID) {
				list[i] = e
				return
			}
		}
		m[r.Target] = append(list, e)
		s.listed++
	case policy.RevokeKey:
		old, had := s.keys[r.Target]
		s.keys[r.Target] = merge(old, had, w)
	}
}

// Revoked implements policy.RevocationChecker: a few map look-ups.
func (s *Set) Revoked(t *policy.Token, now time.Time) bool {
	n := now.UnixNano()
	s.mu.RLock()
	defer s.mu.RUnlock()
	if k, ok := policy.TokenIDKey(t.ID); ok {
		if w, ok := s.byID[k]; ok && n >= w.effective {
			return true
		}
	} else if w, ok := s.byIDText[t.ID]; ok && n >= w.effective {
		return true
	}
	if w, ok := s.keys[t.KeyID]; ok && n >= w.effective {
		return true
	}
	for _, e := range s.subjects[t.Subject] {
		if n >= e.effective && t.IssuedAt <= e.before {
			return true
		}
	}
	if t.Tenant != "" {
		for _, e := range s.tenants[t.Tenant] {
			if n >= e.effective && t.IssuedAt <= e.before {
				return true
			}
		}
	}
	return false
}

// Remove drops a rule by its kind and target (and id, for subject and
// tenant rules), as when an operator lifts a revocation.
func (s *Set) Remove(r policy.Revocation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch r.Kind {
	case policy.RevokeToken:
		if k, ok := policy.TokenIDKey(r.Target); ok {
			delete(s.byID, k)
		} else {
			delete(s.byIDText, r.Target)
		}
	case policy.RevokeSubject, policy.RevokeTenant:
		m := s.subjects
		if r.Kind == policy.RevokeTenant {
			m = s.tenants
		}
		kept := m[r.Target][:0]
		for _, e := range m[r.Target] {
			if e.id != r.ID {
				kept = append(kept, e)
			} else {
				s.listed--
			}
		}
		if len(kept) == 0 {
			delete(m, r.Target)
		} else {
			m[r.Target] = kept
		}
	case policy.RevokeKey:
		delete(s.keys, r.Target)
	}
}

// Prune drops rules whose expiry has passed: no token they could match can
// still be valid. It returns how many it dropped.
func (s *Set) Prune(now time.Time) int {
	n := now.UnixNano()
	dropped := 0
	expired := func(w window) bool { return w.expires != 0 && n > w.expires }
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, w := range s.byID {
		if expired(w) {
			delete(s.byID, k)
			dropped++
		}
	}
	for k, w := range s.byIDText {
		if expired(w) {
			delete(s.byIDText, k)
			dropped++
		}
	}
	for _, m := range []map[string][]issuedBefore{s.subjects, s.tenants} {
		for target, list := range m {
			kept := list[:0]
			for _, e := range list {
				if expired(e.window) {
					s.listed--
					dropped++
					continue
				}
				kept = append(kept, e)
			}
			if len(kept) == 0 {
				delete(m, target)
			} else {
				m[target] = kept
			}
		}
	}
	for k, w := range s.keys {
		if expired(w) {
			delete(s.keys, k)
			dropped++
		}
	}
	return dropped
}

// Len is the number of rules held.
func (s *Set) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.byID) + len(s.byIDText) + s.listed + len(s.keys)
}

var _ policy.RevocationChecker = (*Set)(nil)
