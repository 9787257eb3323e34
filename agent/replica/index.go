package replica

import (
	"sync"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// index knows the live tokens of the node by id and by wire hash: it
// names kernel counters by token id and subject, and tells the kernel side
// which hashes a subject, tenant or key revocation covers. It is filled from
// the store (at start and through Watch) and learns hashes from checks.
type index struct {
	mu     sync.RWMutex
	byID   map[string]*policy.Token
	byHash map[uint64]*policy.Token
}

func newIndex() *index {
	return &index{byID: map[string]*policy.Token{}, byHash: map[uint64]*policy.Token{}}
}

// tokenOf rebuilds the verified-token shape of a record, for revocation
// look-ups.
func tokenOf(r *store.TokenRecord) *policy.Token {
	return &policy.Token{
		Claims: policy.Claims{
			ID: r.ID, Subject: r.Subject, Tenant: r.Tenant, Class: r.Class, Env: r.Env,
			IssuedAt: r.IssuedAt.Unix(), Expires: r.ExpiresAt.Unix(),
		},
		KeyID: r.KeyID, Scopes: r.Scopes, WireHash: r.WireHash,
	}
}

// put records t, replacing what was known of its id. Entries are never
// modified once put (readers use them outside the lock).
func (x *index) put(t *policy.Token) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if old, ok := x.byID[t.ID]; ok && old.WireHash != t.WireHash && x.byHash[old.WireHash] == old {
		delete(x.byHash, old.WireHash)
	}
	x.byID[t.ID] = t
	if t.WireHash != 0 {
		x.byHash[t.WireHash] = t
	}
}

func (x *index) remove(id string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if t, ok := x.byID[id]; ok {
		delete(x.byID, id)
		if x.byHash[t.WireHash] == t {
			delete(x.byHash, t.WireHash)
		}
	}
}

// learn records a hash seen at check time for a token the store does not
// list (its record was lost or not yet replicated). Such an entry is kept no
// longer than until() (called only then: the hot path pays for a look-up
// alone), as its exp is not in the decision. It reports whether the hash
// was new.
func (x *index) learn(dec *policy.Decision, until func() time.Time) bool {
	if dec.WireHash == 0 || dec.TokenID == "" {
		return false
	}
	x.mu.RLock()
	_, known := x.byHash[dec.WireHash]
	x.mu.RUnlock()
	if known {
		return false
	}
	t := &policy.Token{Claims: policy.Claims{ID: dec.TokenID, Subject: dec.Subject, Tenant: dec.Tenant, Expires: until().Unix()}, WireHash: dec.WireHash}
	x.mu.Lock()
	defer x.mu.Unlock()
	if _, known := x.byHash[dec.WireHash]; known {
		return false // learned meanwhile, or its record arrived
	}
	if old, ok := x.byID[t.ID]; ok && old.WireHash != t.WireHash {
		delete(x.byHash, old.WireHash)
	}
	x.byID[t.ID] = t
	x.byHash[t.WireHash] = t
	return true
}

// lookup names a wire hash.
func (x *index) lookup(hash uint64) (id, subject string, ok bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	t, ok := x.byHash[hash]
	if !ok {
		return "", "", false
	}
	return t.ID, t.Subject, true
}

// revokedHashes lists the wire hashes of known tokens that rev revokes at
// now: what the kernel's revoked map must hold. The index is only read
// under its lock; the revocation checks run outside it, so the hot path's
// learn is never held up by a scan of every token.
func (x *index) revokedHashes(rev policy.RevocationChecker, now time.Time) []uint64 {
	x.mu.RLock()
	all := make([]*policy.Token, 0, len(x.byHash))
	for _, t := range x.byHash {
		all = append(all, t)
	}
	x.mu.RUnlock()
	var out []uint64
	for _, t := range all {
		if rev.Revoked(t, now) {
			out = append(out, t.WireHash)
		}
	}
	return out
}

// prune forgets tokens past their exp (plus skew): no enforcement point
// accepts them, so the kernel needs no entry either.
func (x *index) prune(now time.Time) (dropped int) {
	limit := now.Add(-policy.MaxClockSkew).Unix()
	x.mu.Lock()
	defer x.mu.Unlock()
	for id, t := range x.byID {
		if t.Expires != 0 && t.Expires < limit {
			delete(x.byID, id)
			if x.byHash[t.WireHash] == t {
				delete(x.byHash, t.WireHash)
			}
			dropped++
		}
	}
	return dropped
}

func (x *index) get(id string) (*policy.Token, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	t, ok := x.byID[id]
	return t, ok
}

// expired reports whether no enforcement point accepts r's token any more,
// revoked or not.
func expired(r *store.TokenRecord, now time.Time) bool {
	return !now.Before(r.ExpiresAt.Add(policy.MaxClockSkew))
}
