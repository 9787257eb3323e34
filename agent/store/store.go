// Package store is tokenwarden's durable state behind one interface: signing
// keys (private halves sealed), token records (never the token itself),
// revocation rules, and Watch for changes so every part of the agent (and,
// with a shared backend, every node) reacts to a write made anywhere.
// A write has reached stable storage when the call returns.
package store

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"

	"github.com/tokenwarden/tokenwarden/policy"
)

// ErrNotFound is returned for a key, token or rule that is not stored.
var ErrNotFound = errors.New("not found")

// NotFoundError is ErrNotFound naming what was not found. The store names
// the record; callers wrap it with what they were doing and do not name
// the record again (an error says each thing once).
type NotFoundError struct {
	Kind string // "token"
	ID   string
}

func (e *NotFoundError) Error() string { return e.Kind + " " + e.ID + " not found" }

// Is makes a NotFoundError ErrNotFound.
func (e *NotFoundError) Is(target error) bool { return target == ErrNotFound }

// ErrUnavailable marks a call the store could not answer in time (the
// cluster is down, partitioned or without quorum): retry later.
var ErrUnavailable = errors.New("the store is unavailable")

// ErrClosed is returned by calls on a closed store.
var ErrClosed = errors.New("store is closed")

// KeyState is where a signing key is in its life.
type KeyState string

const (
	KeyPending   KeyState = "pending"   // published to verifiers; signs from ActivateAt on
	KeyActive    KeyState = "active"    // signs new tokens (one at a time)
	KeyVerifying KeyState = "verifying" // no longer signs; its tokens still verify
	KeyRetired   KeyState = "retired"   // verifies nothing
)

// Key is a signing key record. Sealed is the private key sealed with
// Seal under the node's key-encryption key.
type Key struct {
	ID        string            `json:"id"`
	Public    ed25519.PublicKey `json:"public"`
	Sealed    []byte            `json:"sealed,omitempty"`
	State     KeyState          `json:"state"`
	CreatedAt time.Time         `json:"created_at"`
	RetiredAt time.Time         `json:"retired_at,omitzero"`
	// ActivateAt is when a pending key starts signing (a rotation publishes
	// the key ahead of it); zero for a key that signed from CreatedAt.
	ActivateAt time.Time `json:"activate_at,omitzero"`
}

// SignsFrom is when k starts (or started) signing.
func (k Key) SignsFrom() time.Time {
	if k.ActivateAt.IsZero() {
		return k.CreatedAt
	}
	return k.ActivateAt
}

// KeysAt returns the key records as they stand at now. A stored rotation
// is lazy: the pending key becomes active once its ActivateAt has passed,
// and the key it supersedes becomes verifying from that instant, whether or
// not a node has written the change back yet. Every node computes the same
// states from the same records (up to clock skew). Of the keys that may
// sign at now, the one that signs from the latest instant is active.
func KeysAt(keys []Key, now time.Time) []Key {
	out := make([]Key, len(keys))
	copy(out, keys)
	signer := -1
	for n, k := range out {
		if (k.State != KeyActive && k.State != KeyPending) || k.SignsFrom().After(now) {
			continue
		}
		if signer < 0 || k.SignsFrom().After(out[signer].SignsFrom()) ||
			(k.SignsFrom().Equal(out[signer].SignsFrom()) && k.CreatedAt.After(out[signer].CreatedAt)) {
			signer = n
		}
	}
	for n, k := range out {
		switch {
		case n == signer:
			out[n].State = KeyActive
		case k.State == KeyActive || (k.State == KeyPending && !k.SignsFrom().After(now)):
			// Superseded: it stopped signing when the signer started.
			out[n].State = KeyVerifying
			if out[n].RetiredAt.IsZero() && signer >= 0 {
				out[n].RetiredAt = out[signer].SignsFrom()
			}
		}
	}
	return out
}

// TokenStatus is where a token is in its life.
type TokenStatus string

const (
	TokenActive  TokenStatus = "active"
	TokenRotated TokenStatus = "rotated" // a successor exists; valid until its grace ends
	TokenRevoked TokenStatus = "revoked"
)

// TokenRecord is what is kept of an issued token: its claims and the hashes
// it is known by. The token string is never stored.
type TokenRecord struct {
	ID        string    `json:"id"`
	Subject   string    `json:"subject"`
	Class     string    `json:"class"`
	Env       string    `json:"env"`
	Tenant    string    `json:"tenant,omitempty"`
	Scopes    []string  `json:"scopes"`
	KeyID     string    `json:"kid"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
	LeakHash  [32]byte  `json:"leak_hash"` // sha256 of the token string
	// WireHash is policy.WireHash of the token: the first 64 bits of its
	// signature. Stored as wire_id: records written before the identity
	// was the signature hold FNV-1a of the whole token under wire_hash,
	// which cannot be re-derived (the token is not stored), so they read
	// as 0 (unknown) and the agent learns the identity at the token's
	// first check.
	WireHash uint64 `json:"wire_id"`
	Rotated  string `json:"rotated,omitempty"` // predecessor jti
	// Workload is the SPIFFE ID the token is bound to (its cnf.spiffe_id);
	// "" for a bearer token.
	Workload string `json:"workload,omitempty"`
	// JKT is the RFC 7638 thumbprint of the client key the token is bound
	// to (its cnf.jkt, DPoP); "" for a token not bound to a key.
	JKT       string      `json:"jkt,omitempty"`
	Successor string      `json:"successor,omitempty"` // successor jti
	Status    TokenStatus `json:"status"`
	Actor     string      `json:"actor"` // jti of the admin token that issued it, or "system"
	// ExpiryWarned and ExpiryRecorded mark that the near-expiry warning and
	// the expiry were audited, so each is recorded once.
	ExpiryWarned   bool `json:"expiry_warned,omitempty"`
	ExpiryRecorded bool `json:"expiry_recorded,omitempty"`
}

// Live reports whether the token can still be presented at now.
func (r *TokenRecord) Live(now time.Time) bool {
	return r.Status != TokenRevoked && now.Before(r.ExpiresAt.Add(policy.MaxClockSkew))
}

// TokenFilter selects token records; empty fields match everything.
type TokenFilter struct {
	Subject string
	Tenant  string
	KeyID   string
	Class   string
	// LiveAt, when set, keeps only tokens that are live at that time.
	LiveAt time.Time
}

// Match reports whether r passes the filter.
func (f TokenFilter) Match(r *TokenRecord) bool {
	return (f.Subject == "" || r.Subject == f.Subject) &&
		(f.Tenant == "" || r.Tenant == f.Tenant) &&
		(f.KeyID == "" || r.KeyID == f.KeyID) &&
		(f.Class == "" || r.Class == f.Class) &&
		(f.LiveAt.IsZero() || r.Live(f.LiveAt))
}

// EventKind says what changed.
type EventKind string

const (
	EventKey        EventKind = "key"
	EventToken      EventKind = "token"
	EventRevocation EventKind = "revocation"
	// EventProgress is a barrier, delivered only after a Progress call
	// (Progresser): every revocation rule and signing key change up to
	// Revision was delivered before it.
	EventProgress EventKind = "progress"
)

// Event is one change, delivered by Watch. Exactly one of Key, Token and
// Revocation is set, except for an EventProgress, which carries only
// Revision. Deleted is true when the object was removed.
type Event struct {
	Kind       EventKind
	Deleted    bool
	Key        *Key
	Token      *TokenRecord
	Revocation *policy.Revocation
	Revision   int64 // EventProgress only
}

// Progresser is a store whose watches may lag its writes (etcd: another
// node writes, the link to the cluster breaks). Progress reads the store's
// revision now, as a linearizable read, and returns it once every running
// watch has been sent an EventProgress at it, after every revocation rule
// and signing key change up to it: a watcher that reads that event has
// every rule and key written before Progress was called. A store without
// it (bolt: one node, every write seen at once) is always current.
type Progresser interface {
	Progress(ctx context.Context) (int64, error)
}

// AuditKey is the key of the audit log's hash chain, one per store: every
// node that shares the store keys its chain with it, so any of them can
// verify any node's log. Secret is sealed with SealSecret under the KEK.
type AuditKey struct {
	ID        string    `json:"id"`
	Sealed    []byte    `json:"sealed"`
	CreatedAt time.Time `json:"created_at"`
}

// EncodeAuditKey checks k and encodes it for CreateAuditKey (both backends).
func EncodeAuditKey(k AuditKey) ([]byte, error) {
	if k.ID == "" || len(k.Sealed) == 0 {
		return nil, errors.New("create audit key: empty id or secret")
	}
	v, err := EncodeRecord(k)
	if err != nil {
		return nil, fmt.Errorf("create audit key: %w", err)
	}
	return v, nil
}

// AuditHead is the last record of one node's audit chain, as that node
// recorded it: a log that no longer holds it, or ends before it, was cut.
type AuditHead struct {
	Node string    `json:"node"`
	Seq  uint64    `json:"seq"`
	Hash string    `json:"hash"`
	File string    `json:"file"` // the file that held it when recorded
	Time time.Time `json:"time"` // when it was recorded
}

// Store is durable state. Implementations: bolt (embedded default, one
// node) and etcd (many nodes).
type Store interface {
	// PutKeys stores keys in one transaction: a key rotation (the new
	// active key, the old one demoted) is seen whole or not at all.
	PutKeys(ctx context.Context, keys ...Key) error
	Keys(ctx context.Context) ([]Key, error)

	PutToken(ctx context.Context, t TokenRecord) error
	Token(ctx context.Context, id string) (TokenRecord, error)
	TokenByLeakHash(ctx context.Context, h [32]byte) (TokenRecord, error)
	Tokens(ctx context.Context, f TokenFilter) ([]TokenRecord, error)
	// DeleteToken forgets a token record (after it expired long ago).
	DeleteToken(ctx context.Context, id string) error

	PutRevocation(ctx context.Context, r policy.Revocation) error
	DeleteRevocation(ctx context.Context, id string) error
	Revocations(ctx context.Context) ([]policy.Revocation, error)

	// AuditKey returns the audit chain's key; ErrNotFound before one was
	// created.
	AuditKey(ctx context.Context) (AuditKey, error)
	// CreateAuditKey stores k unless a key exists already, and returns the
	// key in force: of agents racing to create one, all get the same.
	CreateAuditKey(ctx context.Context, k AuditKey) (AuditKey, error)
	// PutAuditHead records a node's chain head, replacing the one before.
	PutAuditHead(ctx context.Context, h AuditHead) error
	// AuditHead returns the head node recorded; ErrNotFound when none.
	AuditHead(ctx context.Context, node string) (AuditHead, error)

	// Watch streams every change committed after it is called, until ctx
	// ends or the store closes (the channel is then closed). Callers load
	// current state after calling Watch and apply events idempotently. A
	// watcher that falls far behind is dropped (channel closed) rather than
	// stalling writers; it must reload and watch again.
	Watch(ctx context.Context) (<-chan Event, error)

	Close() error
}

// EncodeKeys checks and encodes keys for PutKeys, in order.
func EncodeKeys(keys []Key) ([][]byte, error) {
	out := make([][]byte, len(keys))
	for n, k := range keys {
		if k.ID == "" {
			return nil, errors.New("put key: empty id")
		}
		b, err := EncodeRecord(k)
		if err != nil {
			return nil, fmt.Errorf("put key %s: %w", k.ID, err)
		}
		out[n] = b
	}
	return out, nil
}

// Leader is implemented by backends many agents share (etcd): Lead runs fn
// while this agent (named id) holds the named role, campaigning again after
// losing it, until ctx ends. Work that must happen once per mesh, such as
// scheduled rotation, runs under it; with a single-node backend the agent
// always leads.
type Leader interface {
	Lead(ctx context.Context, name, id string, fn func(ctx context.Context)) error
}
