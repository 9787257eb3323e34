// Package issuer mints tokens within policy and records them: it is the one
// place a token string exists, and it leaves only the token's id and hashes
// behind (store record, audit line). It also owns the signing keys (sealed
// at rest, one active at a time) and turns revocation requests into rules.
package issuer

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/wellknown"
	"github.com/tokenwarden/tokenwarden/policy"
)

// Auditor records audit records; *audit.Log implements it.
type Auditor interface {
	Append(r audit.Record) (audit.Record, error)
}

// Config configures an Issuer.
type Config struct {
	Store  store.Store
	KEK    []byte // key-encryption key sealing private keys
	Env    string
	Policy func() *policy.Policy // the policy in force (reloads swap it)
	Audit  Auditor
	// Keys, when not nil, are the key records New starts from instead of
	// reading the store (a local snapshot while the store is unreachable);
	// no first key is created. Reload reads the store.
	Keys   []store.Key
	Now    func() time.Time
	Logger *slog.Logger
}

// Issuer issues, rotates and revokes tokens and rotates signing keys.
type Issuer struct {
	cfg Config

	// rotateMu makes checking that a token has no successor and linking
	// one a single step, so concurrent rotations of one token (the
	// scheduler and an operator) cannot both issue a successor.
	rotateMu sync.Mutex
	// rotateKeysMu admits one key rotation (or key reload) at a time; mu
	// guards the keys in memory only and is never held across I/O.
	rotateKeysMu sync.Mutex

	mu      sync.Mutex
	signers map[string]policy.SigningKey // unsealed active and pending keys by id
	keys    []store.Key
}

// KeyLead is how long a rotated-in key is published before it signs: the
// JWK Set's cache lifetime (wellknown.MaxAge, its Cache-Control max-age)
// plus a margin for clock skew and slow fetches. A verifier that honours
// Cache-Control has the new key before any token signed by it exists.
// MaxAge must never exceed KeyLead (TestKeyLeadCoversJWKSCache).
const KeyLead = wellknown.MaxAge + time.Minute

// Issued is a freshly minted token. Token is shown once, to the caller, and
// never stored or logged.
type Issued struct {
	Token  string            `json:"token"`
	Record store.TokenRecord `json:"record"`
}

// String names the token by id; the token string never reaches %v.
func (i Issued) String() string { return "token " + i.Record.ID }

// LogValue keeps the token string out of structured logs.
func (i Issued) LogValue() slog.Value {
	return slog.GroupValue(slog.String("token_id", i.Record.ID), slog.String("subject", i.Record.Subject))
}

// New loads the signing keys, creating the first one on a new store.
func New(ctx context.Context, cfg Config) (*Issuer, error) {
	if cfg.Store == nil || cfg.Policy == nil || cfg.Audit == nil {
		return nil, errors.New("issuer: Store, Policy and Audit are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	i := &Issuer{cfg: cfg}
	if cfg.Keys != nil {
		i.mu.Lock()
		err := i.adopt(slices.Clone(cfg.Keys))
		i.mu.Unlock()
		if err != nil {
			return nil, err
		}
		return i, nil
	}
	if err := i.Reload(ctx); err != nil {
		return nil, err
	}
	if len(i.signers) == 0 {
		// A new store: no verifier has a key set to be out of date.
		if _, err := i.RotateKeysNow(ctx, audit.ActorSystem); err != nil {
			return nil, err
		}
	}
	return i, nil
}

// Reload reads the key records from the store (another node may have
// rotated keys) and unseals the active one.
//
// It holds the key-rotation lock (not the issuing lock) while it reads, so
// a reload can never adopt a snapshot older than this issuer's own
// rotation, and issuing goes on meanwhile.
func (i *Issuer) Reload(ctx context.Context) error {
	i.rotateKeysMu.Lock()
	defer i.rotateKeysMu.Unlock()
	keys, err := i.cfg.Store.Keys(ctx)
	if err != nil {
		return fmt.Errorf("load signing keys: %w", err)
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.adopt(keys)
}

func (i *Issuer) adopt(keys []store.Key) error {
	signers := map[string]policy.SigningKey{}
	for _, k := range keys {
		if (k.State != store.KeyActive && k.State != store.KeyPending) || len(k.Sealed) == 0 {
			continue
		}
		priv, err := store.Unseal(i.cfg.KEK, k.ID, k.Sealed)
		if err != nil {
			return err
		}
		signers[k.ID] = policy.SigningKey{ID: k.ID, Private: priv}
	}
	i.keys, i.signers = keys, signers
	return nil
}

// signer returns the key that signs at now: the active key of
// store.KeysAt. A pending key signs once its activation time has passed,
// on every node at once (up to clock skew), with no store write.
func (i *Issuer) signer(now time.Time) policy.SigningKey {
	i.mu.Lock()
	defer i.mu.Unlock()
	for _, k := range store.KeysAt(i.keys, now) {
		if k.State == store.KeyActive {
			return i.signers[k.ID]
		}
	}
	return policy.SigningKey{}
}

// KeySet is the set of keys that verify tokens: pending, active and
// verifying ones.
func (i *Issuer) KeySet() *policy.KeySet {
	i.mu.Lock()
	defer i.mu.Unlock()
	return KeySetOf(i.keys)
}

// KeySetOf builds the verification key set from key records.
func KeySetOf(keys []store.Key) *policy.KeySet {
	m := map[string]ed25519.PublicKey{}
	for _, k := range keys {
		if k.State == store.KeyPending || k.State == store.KeyActive || k.State == store.KeyVerifying {
			m[k.ID] = k.Public
		}
	}
	return policy.NewKeySet(m)
}

// Keys lists the key records (public halves only) as they stand now
// (store.KeysAt): a pending key whose activation time has passed is listed
// active.
func (i *Issuer) Keys() []store.Key {
	now := i.cfg.Now()
	i.mu.Lock()
	defer i.mu.Unlock()
	out := store.KeysAt(i.keys, now)
	for n := range out {
		out[n].Sealed = nil
	}
	return out
}

// Issue checks req against policy, mints the token, stores its record and
// audits the issuance before returning the token.
func (i *Issuer) Issue(ctx context.Context, req policy.IssueRequest, actor string) (Issued, error) {
	if err := requireActor(actor); err != nil {
		return Issued{}, err
	}
	if req.Env == "" {
		req.Env = i.cfg.Env
	}
	now := i.cfg.Now()
	claims, err := i.cfg.Policy().Issue(req, now)
	if err != nil {
		return Issued{}, err
	}
	key := i.signer(now)
	if key.ID == "" {
		return Issued{}, errors.New("no active signing key: run `tokenwarden keys rotate`")
	}
	tok, err := policy.Mint(key, claims)
	if err != nil {
		return Issued{}, err
	}
	rec := store.TokenRecord{
		ID: claims.ID, Subject: claims.Subject, Class: claims.Class, Env: claims.Env,
		Tenant: claims.Tenant, Scopes: splitScopes(claims.Scope), KeyID: key.ID,
		IssuedAt: time.Unix(claims.IssuedAt, 0).UTC(), ExpiresAt: time.Unix(claims.Expires, 0).UTC(),
		LeakHash: policy.LeakHash(tok), WireHash: policy.WireHash(tok),
		Rotated: claims.Rotated, Status: store.TokenActive, Actor: actor,
	}
	if claims.Cnf != nil {
		rec.Workload, rec.JKT = claims.Cnf.SPIFFEID, claims.Cnf.JKT
	}
	if err := i.cfg.Store.PutToken(ctx, rec); err != nil {
		return Issued{}, fmt.Errorf("record token %s: %w", rec.ID, err)
	}
	if _, err := i.cfg.Audit.Append(audit.Record{
		Action: audit.ActionTokenIssue, Actor: actor, TokenID: rec.ID, Subject: rec.Subject, Tenant: rec.Tenant,
		Details: audit.Details(issueDetails(rec)),
	}); err != nil {
		return Issued{}, fmt.Errorf("audit issuance of %s: %w", rec.ID, err)
	}
	return Issued{Token: tok, Record: rec}, nil
}

// Rotate issues a successor of token id (same subject, class and tenant,
// the scopes its class still grants; rot claim linking them) and retires
// the predecessor after the class's rotation_grace with a future-effective
// revocation rule.
//
// A revocation pending on the predecessor (by jti, subject or tenant, with
// effective_at still to come) is carried forward: the successor gets a
// revocation of its own, effective at the same time, stored before the
// successor is returned, so rotating cannot outlive a scheduled revocation.
// A pending key revocation is not carried: the successor is signed by the
// active key, and re-issuing under it is how tokens leave a retiring key.
func (i *Issuer) Rotate(ctx context.Context, id, actor string) (Issued, error) {
	if err := requireActor(actor); err != nil {
		return Issued{}, err
	}
	i.rotateMu.Lock()
	defer i.rotateMu.Unlock()
	pred, err := i.cfg.Store.Token(ctx, id)
	if err != nil {
		return Issued{}, err // names the token
	}
	now := i.cfg.Now()
	if !pred.Live(now) {
		return Issued{}, &policy.Refusal{Msg: fmt.Sprintf("token %s is %s; only live tokens can be rotated", id, liveness(pred, now))}
	}
	if pred.Successor != "" {
		return Issued{}, &policy.Refusal{Msg: fmt.Sprintf("token %s was already rotated to %s", id, pred.Successor)}
	}
	// A rule that took effect after it was made (a future effective_at)
	// left the record active; a successor would outlive the revocation.
	rules, err := i.cfg.Store.Revocations(ctx)
	if err != nil {
		return Issued{}, fmt.Errorf("load revocations: %w", err)
	}
	if r, ok := revokedBy(rules, pred, now); ok {
		return Issued{}, &policy.Refusal{Msg: fmt.Sprintf("token %s is revoked (rule %s, effective %s); only live tokens can be rotated", id, r.ID, r.EffectiveAt.UTC().Format(time.RFC3339))}
	}
	var grace time.Duration
	scopes := pred.Scopes
	if c, ok := i.cfg.Policy().Class(pred.Class); ok {
		grace = c.RotationGrace.D()
		// A scope since withdrawn from the class is not passed on (and
		// would have the issuance refused); none left is no token at all,
		// as an empty list would ask for every scope of the class.
		scopes = slices.DeleteFunc(slices.Clone(pred.Scopes), func(s string) bool { return !c.AllowsScope(s) })
		if len(pred.Scopes) > 0 && len(scopes) == 0 {
			return Issued{}, &policy.Refusal{Msg: fmt.Sprintf("token %s holds no scope class %s still grants (%s); issue a new token instead", id, pred.Class, strings.Join(pred.Scopes, " "))}
		}
	}
	succ, err := i.Issue(ctx, policy.IssueRequest{
		Subject: pred.Subject, Class: pred.Class, Env: pred.Env, Scopes: scopes,
		Tenant: pred.Tenant, Rotated: pred.ID, BindWorkload: pred.Workload, BindJKT: pred.JKT,
	}, actor)
	if err != nil {
		return Issued{}, err
	}
	// The pending revocations are carried before the predecessor is
	// linked: should that fail, the successor is linked to nothing and
	// handed to nobody, and the predecessor is rotated again later.
	carried := map[string]string{} // rule id -> its copy on the successor
	if err := i.carry(ctx, rules, pred, succ.Record, carried, actor); err != nil {
		return Issued{}, err
	}
	pred.Successor, pred.Status = succ.Record.ID, store.TokenRotated
	if err := i.cfg.Store.PutToken(ctx, pred); err != nil {
		return Issued{}, fmt.Errorf("link %s to its successor: %w", pred.ID, err)
	}
	// A rule stored since the first read (here or on another node) whose
	// writer read the predecessor before it was linked has not followed
	// the link: carry it now. One stored later sees the link (Revoke).
	if rules, err = i.cfg.Store.Revocations(ctx); err != nil {
		return Issued{}, fmt.Errorf("successor %s issued; reload revocations: %w", succ.Record.ID, err)
	}
	if err := i.carry(ctx, rules, pred, succ.Record, carried, actor); err != nil {
		return Issued{}, err
	}
	rule := policy.Revocation{
		Kind: policy.RevokeToken, Target: pred.ID, EffectiveAt: now.Add(grace),
		Reason: "rotated", Actor: actor,
	}
	if _, _, err := i.revoke(ctx, rule, false); err != nil {
		return Issued{}, err
	}
	i.auditDone(audit.Record{
		Action: audit.ActionTokenRotate, Actor: actor, TokenID: pred.ID, Subject: pred.Subject, Tenant: pred.Tenant,
		Details: audit.Details(rotateDetails(succ.Record.ID, rule.EffectiveAt, slices.Sorted(maps.Values(carried)))),
	})
	return succ, nil
}

// carry gives the successor a token revocation of its own for every rule
// among rules that will revoke the predecessor but not the successor by
// itself, effective at the same time; done maps the rules carried already
// to their copies, and is extended. Key rules are not carried (see Rotate).
func (i *Issuer) carry(ctx context.Context, rules []policy.Revocation, pred, succ store.TokenRecord, done map[string]string, actor string) error {
	for _, r := range rules {
		if _, ok := done[r.ID]; ok || r.Kind == policy.RevokeKey || !covers(r, pred) || covers(r, succ) {
			continue
		}
		c, _, err := i.revoke(ctx, policy.Revocation{
			Kind: policy.RevokeToken, Target: succ.ID, EffectiveAt: r.EffectiveAt,
			Reason: fmt.Sprintf("%s (carried from rule %s on %s)", r.Reason, r.ID, pred.ID), Actor: actor,
		}, true)
		if err != nil {
			return fmt.Errorf("carry revocation %s of %s to its successor %s: %w", r.ID, pred.ID, succ.ID, err)
		}
		done[r.ID] = c.ID
	}
	return nil
}

func rotateDetails(successor string, retiredAt time.Time, carried []string) map[string]any {
	d := map[string]any{"successor": successor, "retired_at": retiredAt.UTC()}
	if len(carried) > 0 {
		d["revocations_carried"] = carried
	}
	return d
}

// Revoke stores a revocation rule and returns it with the number of live
// tokens it covers. Rules take effect at EffectiveAt (now when zero).
//
// A revocation covers the successors of the tokens it covers: each live
// successor (and its successors) that the rule does not match by itself
// gets a token revocation of its own with the same effective_at, each
// audited. Key rules are the exception (see Rotate). A subject or tenant
// rule covers tokens issued until its effective_at (or now, if that has
// passed), so tokens issued while it is pending, successors included, are
// covered too.
func (i *Issuer) Revoke(ctx context.Context, r policy.Revocation) (policy.Revocation, int, error) {
	stored, covered, err := i.revoke(ctx, r, true)
	if err != nil || r.Kind == policy.RevokeKey {
		// Not stored, or no successors to follow. (A rule whose audit
		// record could not be written is stored and in force: revoke does
		// not fail for it, and its successors are covered below.)
		return stored, len(covered), err
	}
	n := len(covered)
	ids := make([]string, 0, len(covered)+1)
	seen := map[string]bool{}
	for _, rec := range covered {
		ids = append(ids, rec.ID)
		seen[rec.ID] = true
	}
	if r.Kind == policy.RevokeToken && len(covered) == 0 {
		// An expired or revoked token can still have a live successor.
		ids = append(ids, r.Target)
		seen[r.Target] = true
	}
	now := i.cfg.Now()
	for _, id := range ids {
		// Read again now that the rule is stored: a rotation that linked
		// a successor since the first read either shows here, or reads
		// the rule after linking and carries it itself (Rotate).
		rec, err := i.cfg.Store.Token(ctx, id)
		if err != nil {
			return stored, n, fmt.Errorf("rule %s stored; look up %s for its successors: %w", stored.ID, id, err)
		}
		succs, err := i.successors(ctx, rec, stored, now, seen)
		if err != nil {
			return stored, n, fmt.Errorf("rule %s stored; %w", stored.ID, err)
		}
		for _, s := range succs {
			if _, _, err := i.revoke(ctx, policy.Revocation{
				Kind: policy.RevokeToken, Target: s.ID, EffectiveAt: stored.EffectiveAt,
				Reason: fmt.Sprintf("%s (successor of %s, rule %s)", stored.Reason, rec.ID, stored.ID), Actor: stored.Actor,
			}, true); err != nil {
				return stored, n, fmt.Errorf("rule %s stored; revoking successor %s of %s: %w", stored.ID, s.ID, rec.ID, err)
			}
			n++
		}
	}
	return stored, n, nil
}

// TokenByLeakHash returns the record of the token whose SHA-256
// (policy.LeakHash) is h: the look-up behind a leak report
// (revoke.Revoker.RevokeLeak).
func (i *Issuer) TokenByLeakHash(ctx context.Context, h [32]byte) (store.TokenRecord, error) {
	return i.cfg.Store.TokenByLeakHash(ctx, h)
}

// maxLineage bounds how far a revocation follows successors. A chain is
// short in practice (a predecessor is retired a rotation_grace after its
// successor is issued, and expires soon after); the bound keeps a corrupt
// store from looping.
const maxLineage = 64

// successors returns the live successors of rec, nearest first, that rule
// r does not cover by itself and that are not in seen (which it extends).
func (i *Issuer) successors(ctx context.Context, rec store.TokenRecord, r policy.Revocation, now time.Time, seen map[string]bool) ([]store.TokenRecord, error) {
	var out []store.TokenRecord
	for next, hops := rec.Successor, 0; next != "" && hops < maxLineage; hops++ {
		if seen[next] {
			return out, nil
		}
		seen[next] = true
		s, err := i.cfg.Store.Token(ctx, next)
		if err != nil {
			return out, fmt.Errorf("successor %s of %s: %w", next, rec.ID, err)
		}
		if s.Live(now) && !covers(r, s) {
			out = append(out, s)
		}
		next = s.Successor
	}
	return out, nil
}

// Prepare completes a revocation request into the rule to enforce and
// store, reading nothing from the store: its id, creation and effective
// times, the issue time a subject or tenant rule covers up to, and when it
// may be forgotten. A token rule is kept, until the store has its token's
// record, for the policy's longest lifetime. Prepare refuses what no store
// would take (no actor, an unknown kind, the active or next signing key).
// A rule prepared before keeps what it has: Prepare is idempotent.
func (i *Issuer) Prepare(r policy.Revocation) (policy.Revocation, error) {
	if r.Actor == "" {
		// Checked before anything is stored: the audit log refuses a record
		// without an actor, which would leave a rule in force unaudited.
		return r, &policy.Refusal{Msg: fmt.Sprintf("revocation needs an actor: the admin token's jti, or %q", audit.ActorSystem)}
	}
	// A reason is free text: a token pasted into it (the leaked one, say)
	// would be stored, answered and audited. It is redacted here, once, so
	// the rule, the API's answer and the audit record all say the same.
	r.Reason = audit.Redact(r.Reason)
	now := i.cfg.Now()
	p := i.cfg.Policy()
	if r.ID == "" {
		r.ID = policy.NewRevocationID()
	}
	if r.CreatedAt.IsZero() {
		r.CreatedAt = now.UTC()
	}
	if r.EffectiveAt.IsZero() {
		r.EffectiveAt = now.UTC()
	}
	skew := policy.MaxClockSkew
	switch r.Kind {
	case policy.RevokeToken:
		if r.Expires.IsZero() {
			r.Expires = r.CreatedAt.Add(p.MaxLifetime() + skew).UTC()
		}
	case policy.RevokeSubject, policy.RevokeTenant:
		if r.IssuedBefore.IsZero() {
			// Until the rule takes effect: a token issued while it is
			// pending (a successor, a fresh one) is covered too.
			r.IssuedBefore = r.EffectiveAt
			if r.IssuedBefore.Before(now) {
				r.IssuedBefore = now
			}
			r.IssuedBefore = r.IssuedBefore.UTC()
		}
		if r.Expires.IsZero() {
			r.Expires = r.IssuedBefore.Add(p.MaxLifetime() + skew).UTC()
		}
	case policy.RevokeKey:
		if err := i.revocableKey(r.Target, now); err != nil {
			return r, err
		}
	}
	if err := r.Validate(); err != nil {
		return r, &policy.Refusal{Msg: err.Error()}
	}
	return r, nil
}

// revocableKey refuses a key revocation that would revoke what is signed
// from here on.
func (i *Issuer) revocableKey(kid string, now time.Time) error {
	known := false
	for _, k := range i.Keys() {
		known = known || k.ID == kid
	}
	if !known {
		return &policy.Refusal{Msg: fmt.Sprintf("no signing key %q (see `tokenwarden keys list`)", kid)}
	}
	if kid == i.signer(now).ID {
		// Every token minted from here on would be revoked on arrival.
		return &policy.Refusal{Msg: fmt.Sprintf("key %s is the active signing key: run `tokenwarden keys rotate --now` first, then revoke it", kid)}
	}
	for _, k := range i.Keys() {
		if k.ID == kid && k.State == store.KeyPending {
			// It would sign revoked tokens once it activates.
			return &policy.Refusal{Msg: fmt.Sprintf("key %s is the next signing key: run `tokenwarden keys rotate --now` first, then revoke it", kid)}
		}
	}
	return nil
}

// Coverage returns the live tokens rule r (prepared) covers at now, read
// from the store's indexes (by subject, tenant or key id): the cost is the
// target's tokens, not every stored record.
func (i *Issuer) Coverage(ctx context.Context, r policy.Revocation) ([]store.TokenRecord, error) {
	now := i.cfg.Now()
	f := store.TokenFilter{LiveAt: now}
	switch r.Kind {
	case policy.RevokeToken:
		rec, err := i.cfg.Store.Token(ctx, r.Target)
		if err != nil {
			return nil, err // the store names the token
		}
		if rec.Live(now) {
			return []store.TokenRecord{rec}, nil
		}
		return nil, nil
	case policy.RevokeSubject:
		f.Subject = r.Target
	case policy.RevokeTenant:
		f.Tenant = r.Target
	case policy.RevokeKey:
		f.KeyID = r.Target
	default:
		return nil, nil
	}
	recs, err := i.cfg.Store.Tokens(ctx, f)
	if err != nil {
		return nil, err
	}
	if r.Kind == policy.RevokeSubject || r.Kind == policy.RevokeTenant {
		recs = slices.DeleteFunc(recs, func(rec store.TokenRecord) bool { return rec.IssuedAt.After(r.IssuedBefore) })
	}
	return recs, nil
}

// revoke stores one rule (prepared, or prepared here) and audits it; it
// returns the live tokens the rule covers. The rule is stored before its
// coverage is read. markRecords marks them revoked when the rule is in
// effect.
func (i *Issuer) revoke(ctx context.Context, r policy.Revocation, markRecords bool) (policy.Revocation, []store.TokenRecord, error) {
	r, err := i.Prepare(r)
	if err != nil {
		return r, nil, err
	}
	now := i.cfg.Now()
	var covered []store.TokenRecord
	if r.Kind == policy.RevokeToken {
		rec, err := i.cfg.Store.Token(ctx, r.Target)
		if err != nil {
			return r, nil, err // the store names the token
		}
		r.Expires = rec.ExpiresAt.Add(policy.MaxClockSkew).UTC()
		if rec.Live(now) {
			covered = append(covered, rec)
		}
	}
	if err := i.cfg.Store.PutRevocation(ctx, r); err != nil {
		return r, nil, fmt.Errorf("store revocation: %w", err)
	}
	if r.Kind != policy.RevokeToken {
		if covered, err = i.Coverage(ctx, r); err != nil {
			// The rule is stored and in force; only its count is missing.
			i.cfg.Logger.Warn("revocation stored; counting the tokens it covers failed", "rule", r.ID, "err", err)
		}
	}
	if markRecords && !r.EffectiveAt.After(now) {
		for _, rec := range covered {
			rec.Status = store.TokenRevoked
			if err := i.cfg.Store.PutToken(ctx, rec); err != nil {
				i.cfg.Logger.Warn("mark token revoked", "token_id", rec.ID, "err", err)
			}
		}
	}
	ar := audit.Record{
		Action: audit.ActionRevocationCreate, Actor: r.Actor, Reason: r.Reason,
		Details: audit.Details(map[string]any{"rule": r.ID, "kind": r.Kind, "target": r.Target, "effective_at": r.EffectiveAt, "covered": len(covered)}),
	}
	switch r.Kind {
	case policy.RevokeToken:
		ar.Action, ar.TokenID = audit.ActionTokenRevoke, r.Target
		if len(covered) == 1 {
			ar.Subject, ar.Tenant = covered[0].Subject, covered[0].Tenant
		}
	case policy.RevokeSubject:
		ar.Subject = r.Target
	case policy.RevokeTenant:
		ar.Tenant = r.Target
	}
	i.auditDone(ar)
	return r, covered, nil
}

// RotateKeys makes a new signing key and publishes it ahead: it is stored
// pending, in the JWK Set at once, and signs from KeyLead on, when every
// verifier that honours the set's Cache-Control has it. The active key
// signs until then and afterwards keeps verifying its tokens until they
// have all expired (policy max lifetime), after which a later rotation
// retires it. A rotation while another is pending is refused: the pending
// key is already the next one.
func (i *Issuer) RotateKeys(ctx context.Context, actor string) (store.Key, error) {
	return i.rotateKeys(ctx, actor, false)
}

// RotateKeysNow is the emergency rotation (the active key is compromised):
// the new key signs at once, and a pending key, if any, is demoted too.
// Verifiers that cached the JWK Set see tokens with a kid they do not know
// until they fetch it again (docs/verifiers.md: refetch on an unknown kid).
func (i *Issuer) RotateKeysNow(ctx context.Context, actor string) (store.Key, error) {
	return i.rotateKeys(ctx, actor, true)
}

// rotateKeys stores the new key and the demotions in one transaction, the
// new key first: the store is never without a key that signs. Issuing goes
// on meanwhile: the issuing lock is held only to read and to swap the
// keys, not across store or audit I/O.
func (i *Issuer) rotateKeys(ctx context.Context, actor string, immediate bool) (store.Key, error) {
	if err := requireActor(actor); err != nil {
		return store.Key{}, err
	}
	sk, err := policy.NewSigningKey()
	if err != nil {
		return store.Key{}, err
	}
	sealed, err := store.Seal(i.cfg.KEK, sk.ID, sk.Private)
	if err != nil {
		return store.Key{}, err
	}
	i.rotateKeysMu.Lock() // one key rotation at a time
	defer i.rotateKeysMu.Unlock()
	now := i.cfg.Now().UTC()
	maxLife := i.cfg.Policy().MaxLifetime() + policy.MaxClockSkew
	i.mu.Lock()
	stored := slices.Clone(i.keys)
	i.mu.Unlock()
	// Write back the states as they stand now (a pending key that has
	// started signing, the key it superseded), then rotate from there.
	keys := store.KeysAt(stored, now)
	nk := store.Key{ID: sk.ID, Public: sk.Private.Public().(ed25519.PublicKey), Sealed: sealed, State: store.KeyPending, CreatedAt: now, ActivateAt: now.Add(KeyLead)}
	if immediate {
		nk.State, nk.ActivateAt = store.KeyActive, time.Time{}
	}
	changed := []store.Key{nk}
	for n, k := range keys {
		switch {
		case k.State == store.KeyPending && !immediate:
			return store.Key{}, &policy.Refusal{Msg: fmt.Sprintf("key %s is already rotating in (signs from %s): wait, or rotate now (--now) if a key is compromised", k.ID, k.ActivateAt.Format(time.RFC3339))}
		case k.State == store.KeyPending || (k.State == store.KeyActive && immediate):
			k.State, k.RetiredAt = store.KeyVerifying, now
		case k.State == store.KeyVerifying && now.Sub(k.RetiredAt) > maxLife:
			// Every token it signed has expired: it verifies nothing now.
			k.State, k.Sealed = store.KeyRetired, nil
		case k.State != stored[n].State || !k.RetiredAt.Equal(stored[n].RetiredAt):
		default:
			continue
		}
		keys[n] = k
		changed = append(changed, k)
	}
	if err := i.cfg.Store.PutKeys(ctx, changed...); err != nil {
		return store.Key{}, fmt.Errorf("store key %s: %w", nk.ID, err)
	}
	i.mu.Lock()
	i.keys = append(keys, nk)
	i.signers[sk.ID] = sk
	for _, k := range keys {
		if k.State != store.KeyActive && k.State != store.KeyPending {
			delete(i.signers, k.ID) // signs nothing again: drop its private half
		}
	}
	i.mu.Unlock()
	d := map[string]any{"kid": nk.ID, "state": nk.State}
	if !nk.ActivateAt.IsZero() {
		d["activate_at"] = nk.ActivateAt
	}
	i.auditDone(audit.Record{Action: audit.ActionKeyRotate, Actor: actor, Details: audit.Details(d)})
	nk.Sealed = nil
	return nk, nil
}

// auditDone audits an action that has already taken effect (stored, and
// for a revocation enforced). Its audit record comes last on purpose: a
// revocation must never fail, nor be reported failed, because the audit
// log cannot grow (a full disk, a flood). A record that cannot be written
// is logged here and counted by the audit log (the
// tokenwarden_audit_records_lost_total metric, alerted on); the action
// stands.
func (i *Issuer) auditDone(r audit.Record) {
	if _, err := i.cfg.Audit.Append(r); err != nil {
		i.cfg.Logger.Error("action taken but not audited: the audit log refused its record",
			"action", r.Action, "actor", r.Actor, "token_id", r.TokenID, "err", err)
	}
}

// revokedBy returns a rule among rules that revokes the token of rec at now.
func revokedBy(rules []policy.Revocation, rec store.TokenRecord, now time.Time) (policy.Revocation, bool) {
	t := recordToken(rec)
	for _, r := range rules {
		if r.Covers(&t, now) {
			return r, true
		}
	}
	return policy.Revocation{}, false
}

// covers reports whether rule r matches the token of rec, whenever it
// takes effect.
func covers(r policy.Revocation, rec store.TokenRecord) bool {
	t := recordToken(rec)
	return r.Covers(&t, r.EffectiveAt)
}

// recordToken is what a revocation rule matches of a stored token.
func recordToken(rec store.TokenRecord) policy.Token {
	return policy.Token{
		Claims: policy.Claims{ID: rec.ID, Subject: rec.Subject, Tenant: rec.Tenant, IssuedAt: rec.IssuedAt.Unix()},
		KeyID:  rec.KeyID,
	}
}

func issueDetails(rec store.TokenRecord) map[string]any {
	d := map[string]any{"class": rec.Class, "scopes": rec.Scopes, "expires_at": rec.ExpiresAt, "kid": rec.KeyID}
	if rec.Rotated != "" {
		d["rotated"] = rec.Rotated
	}
	if rec.Workload != "" {
		d["workload"] = rec.Workload
	}
	if rec.JKT != "" {
		d["jkt"] = rec.JKT
	}
	return d
}

// requireActor refuses an action without an actor before it changes
// anything: its audit record, written last, would be refused, leaving the
// change made but unaudited and reported as failed.
func requireActor(actor string) error {
	if actor == "" {
		return fmt.Errorf("issuer: no actor: pass the admin token's jti, or %q", audit.ActorSystem)
	}
	return nil
}

func splitScopes(s string) []string { return strings.Fields(s) }

func liveness(r store.TokenRecord, now time.Time) string {
	if r.Status == store.TokenRevoked {
		return "revoked"
	}
	if !now.Before(r.ExpiresAt) {
		return "expired"
	}
	return string(r.Status)
}
