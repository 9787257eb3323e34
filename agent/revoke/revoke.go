// Package revoke is the one way this node revokes. Every revocation - the
// admin API's (by token, subject, tenant or key), a reported leak's, a
// secret-scanning alert's, an anomaly trigger's, the exposed admin token's -
// comes here and takes one path: the rule is completed without the store
// (Storer.Prepare), enforced on this node from memory, written to a local
// journal (fsync'd) and only then written to the store. The store write is
// tried for at most Deadline on the caller's time; a rule the store has not
// taken by then is answered as replicating and stored by Run, retrying until
// it lands. The journal is replayed at start: a rule this node acknowledged
// is enforced here again and stored, whatever happened to the store
// meanwhile. (Rotation's retirement of a predecessor is stored by the issuer
// itself, inside the rotation.)
package revoke

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// Retry pacing of rules the store could not take: the wait before the first
// retry, and the most it grows to.
const (
	DefaultRetryFirst = time.Second
	DefaultRetryMax   = 30 * time.Second
	// DefaultDeadline is how long Submit waits for the store before it
	// answers that the rule is enforced here and replicating.
	DefaultDeadline = 2 * time.Second
	// attemptTimeout bounds each retry of Run.
	attemptTimeout = 10 * time.Second
	// SampleSize bounds the token ids a preview lists.
	SampleSize = 20
)

// Storer completes, stores and counts rules (the issuer).
type Storer interface {
	// Prepare completes a request into a rule (id, times, expiry) without
	// the store, or refuses it; it is idempotent.
	Prepare(r policy.Revocation) (policy.Revocation, error)
	// Revoke stores a prepared rule (keeping its id) and reports the live
	// tokens it covers.
	Revoke(ctx context.Context, r policy.Revocation) (policy.Revocation, int, error)
	// Coverage lists the live tokens a prepared rule covers.
	Coverage(ctx context.Context, r policy.Revocation) ([]store.TokenRecord, error)
	// TokenByLeakHash finds the token a leak report names.
	TokenByLeakHash(ctx context.Context, h [32]byte) (store.TokenRecord, error)
}

// Enforcer enforces a rule on this node, from memory (the replica).
type Enforcer interface {
	Enforce(r policy.Revocation)
}

// Config configures a Revoker.
type Config struct {
	Store   Storer
	Enforce Enforcer
	// Revocations is the live set (what checks consult): a request that
	// adds nothing to it is answered as existing.
	Revocations policy.RevocationChecker
	// Journal is the local journal of rules not yet stored (OpenJournal);
	// nil keeps them in memory only (tests).
	Journal    *Journal
	Deadline   time.Duration // DefaultDeadline when zero
	RetryFirst time.Duration // DefaultRetryFirst when zero
	RetryMax   time.Duration // DefaultRetryMax when zero
	Now        func() time.Time
	Logger     *slog.Logger
}

// Revoker revokes.
type Revoker struct {
	cfg     Config
	mu      sync.Mutex
	pending []policy.Revocation // enforced and journaled, not yet stored
	kick    chan struct{}
}

// Result is the outcome of a revocation.
type Result struct {
	Rule    policy.Revocation
	Covered int // live tokens covered; -1 when not known yet
	// Stored: the store has the rule, so every node enforces it. When
	// false the rule is enforced on this node and journaled, and Run
	// stores it when the store answers.
	Stored bool
	// Existed: the live set already revoked everything the rule would;
	// nothing was added, and Rule is the request as prepared.
	Existed bool
}

// Preview is what a rule would cover.
type Preview struct {
	Rule    policy.Revocation
	Covered int
	Sample  []string // at most SampleSize token ids, sorted
	// Existed: the live set already revokes everything the rule would.
	Existed bool
}

// ErrStoreUnavailable wraps a store fault that kept a look-up from
// answering (a leak report's, a preview's).
var ErrStoreUnavailable = errors.New("store unavailable")

// New returns a Revoker holding the journal's pending rules, each enforced
// on this node again at once; Run stores them.
func New(cfg Config) (*Revoker, error) {
	if cfg.Store == nil || cfg.Enforce == nil {
		return nil, errors.New("revoke: Store and Enforce are required")
	}
	if cfg.Deadline <= 0 {
		cfg.Deadline = DefaultDeadline
	}
	if cfg.RetryFirst <= 0 {
		cfg.RetryFirst = DefaultRetryFirst
	}
	if cfg.RetryMax < cfg.RetryFirst {
		cfg.RetryMax = max(DefaultRetryMax, cfg.RetryFirst)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	v := &Revoker{cfg: cfg, kick: make(chan struct{}, 1)}
	if cfg.Journal != nil {
		v.pending = cfg.Journal.Pending()
		for _, r := range v.pending {
			cfg.Enforce.Enforce(r)
		}
		if n := len(v.pending); n > 0 {
			cfg.Logger.Warn("revocations from the journal not yet stored: enforced on this node, storing them", "rules", n)
			v.kick <- struct{}{}
		}
	}
	return v, nil
}

// Revoke is Submit for callers that need only the rule and its coverage
// (admintoken). A rule the store has not taken yet is no error: it is
// enforced here and stored by Run.
func (v *Revoker) Revoke(ctx context.Context, r policy.Revocation) (policy.Revocation, int, error) {
	res, err := v.Submit(ctx, r, Options{AllowEmpty: true})
	return res.Rule, max(res.Covered, 0), err
}

// Options are a caller's safety rails.
type Options struct {
	// AllowEmpty takes a subject, tenant or key rule that covers no live
	// token; without it such a rule is refused with ErrCoversNothing.
	AllowEmpty bool
	// CallerKey is the key that signed the caller's own admin token:
	// revoking it is refused with ErrOwnKey unless Force.
	CallerKey string
	Force     bool
}

// ErrOwnKey refuses a key rule on the key that signed the caller's own
// admin token (it would lock the caller out).
var ErrOwnKey = errors.New("the key signed the caller's own admin token")

// ErrCoversNothing refuses a subject, tenant or key rule that covers no
// live token (a typo in the target, most likely).
var ErrCoversNothing = errors.New("the rule covers no live token")

// Submit revokes: the rule is enforced on this node and journaled, then
// stored within the Deadline (or ctx's, if earlier). A request the live set
// already honours adds nothing (Existed). It fails only when the request is
// refused (policy, an unknown token, a target covering nothing) or when the
// rule could be neither stored nor journaled; in the latter case the rule
// is still enforced on this node until the agent stops.
//
// A subject, tenant or key rule is first counted (from the store's index,
// within half the Deadline) to tell an existing or empty rule; when the
// store does not answer in time it is enforced without that check: a
// revocation never waits for the store.
func (v *Revoker) Submit(ctx context.Context, r policy.Revocation, opt Options) (Result, error) {
	rule, err := v.cfg.Store.Prepare(r)
	if err != nil {
		return Result{Rule: rule, Covered: -1}, err
	}
	if v.existing(rule) {
		rule.ID = "" // nothing was made
		return Result{Rule: rule, Covered: 0, Existed: true, Stored: !v.pendingFor(rule)}, nil
	}
	if rule.Kind == policy.RevokeKey && opt.CallerKey == rule.Target && !opt.Force {
		return Result{Rule: rule, Covered: -1}, ErrOwnKey
	}
	if rule.Kind != policy.RevokeToken {
		pctx, cancel := context.WithTimeout(ctx, v.cfg.Deadline/2)
		p, err := v.preview(pctx, rule)
		cancel()
		switch {
		case err != nil:
			v.cfg.Logger.Warn("revocation: counting its coverage failed; enforcing it without the check", "kind", rule.Kind, "target", rule.Target, "err", err)
		case p.Existed:
			rule.ID = ""
			return Result{Rule: rule, Covered: 0, Existed: true, Stored: !v.pendingFor(rule)}, nil
		case p.Covered == 0 && !opt.AllowEmpty:
			return Result{Rule: rule, Covered: 0}, fmt.Errorf("%s %q: %w; check the target, or pass --allow-empty (allow_empty) to revoke it anyway", rule.Kind, rule.Target, ErrCoversNothing)
		}
	}
	v.cfg.Enforce.Enforce(rule)
	var jerr error
	if v.cfg.Journal != nil {
		if jerr = v.cfg.Journal.Add(rule); jerr != nil {
			v.cfg.Logger.Error("revocation enforced on this node but not journaled", "rule", rule.ID, "kind", rule.Kind, "target", rule.Target, "err", jerr)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, v.cfg.Deadline)
	stored, covered, err := v.cfg.Store.Revoke(sctx, rule)
	cancel()
	switch {
	case err == nil:
		v.done(rule.ID)
		return Result{Rule: stored, Covered: covered, Stored: true}, nil
	case refused(err):
		// Not a rule any store will take (a token never issued here): it
		// stays enforced here, from memory, and harms nothing.
		v.done(rule.ID)
		return Result{Rule: rule, Covered: -1}, err
	}
	// Not stored yet: Run retries it, from memory even when the journal
	// could not take it (then a restart before the store returns loses it,
	// and the caller is told so).
	v.mu.Lock()
	v.pending = append(v.pending, rule)
	v.mu.Unlock()
	select {
	case v.kick <- struct{}{}:
	default:
	}
	if jerr != nil {
		return Result{Rule: rule, Covered: -1}, fmt.Errorf("revocation %s is enforced on this node and retried from memory, but was not journaled (%v): a restart before the store returns loses it: %w", rule.ID, jerr, errors.Join(ErrStoreUnavailable, err))
	}
	v.cfg.Logger.Warn("revocation enforced on this node and journaled; the store has not taken it yet, retrying", "rule", rule.ID, "kind", rule.Kind, "target", rule.Target, "err", err)
	return Result{Rule: rule, Covered: -1}, nil
}

// pendingFor reports whether a rule with r's kind and target waits for the
// store: a repeated request for it is answered as existing but not yet
// stored.
func (v *Revoker) pendingFor(r policy.Revocation) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, p := range v.pending {
		if p.Kind == r.Kind && p.Target == r.Target {
			return true
		}
	}
	return false
}

// Insist revokes on the agent's own behalf, where nobody would retry or
// read the answer (an anomaly trigger): Submit, with the outcome logged.
func (v *Revoker) Insist(r policy.Revocation) {
	if _, err := v.Submit(context.Background(), r, Options{AllowEmpty: true}); err != nil {
		v.cfg.Logger.Error("automatic revocation: enforced on this node, not stored", "kind", r.Kind, "target", r.Target, "err", err)
	}
}

// existing reports whether the live set already revokes everything r
// would, from its effective time on. A token or key rule is matched
// exactly; a subject or tenant rule only when the set revokes every token
// of the target issued up to r's issued_before (a later rule on the same
// subject covers the tokens issued since the earlier one, and is new).
func (v *Revoker) existing(r policy.Revocation) bool {
	if v.cfg.Revocations == nil {
		return false
	}
	at := r.EffectiveAt
	if now := v.cfg.Now(); at.Before(now) {
		at = now
	}
	t := policy.Token{}
	switch r.Kind {
	case policy.RevokeToken:
		t.ID = r.Target
	case policy.RevokeKey:
		t.KeyID = r.Target
	case policy.RevokeSubject:
		t.Subject, t.IssuedAt = r.Target, r.IssuedBefore.Unix()
	case policy.RevokeTenant:
		t.Tenant, t.IssuedAt = r.Target, r.IssuedBefore.Unix()
	default:
		return false
	}
	return v.cfg.Revocations.Revoked(&t, at)
}

// Preview prepares r and counts what it would cover, storing nothing: a
// dry run.
func (v *Revoker) Preview(ctx context.Context, r policy.Revocation) (Preview, error) {
	rule, err := v.cfg.Store.Prepare(r)
	if err != nil {
		return Preview{Rule: rule}, err
	}
	return v.preview(ctx, rule)
}

// preview counts the live tokens rule covers that the live set does not
// revoke yet. It is Existed when the set already revokes the target
// exactly, or holds a rule on the same subject or tenant and leaves
// nothing for this one to add.
func (v *Revoker) preview(ctx context.Context, rule policy.Revocation) (Preview, error) {
	rule.ID = "" // a preview makes no rule
	p := Preview{Rule: rule, Existed: v.existing(rule)}
	recs, err := v.cfg.Store.Coverage(ctx, rule)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return p, err
		}
		return p, fmt.Errorf("count the tokens it covers: %w", errors.Join(ErrStoreUnavailable, err))
	}
	now := v.cfg.Now()
	for _, rec := range recs {
		if v.cfg.Revocations != nil && v.cfg.Revocations.Revoked(tokenOf(&rec), now) {
			continue // revoked already
		}
		p.Covered++
		if len(p.Sample) < SampleSize {
			p.Sample = append(p.Sample, rec.ID)
		}
	}
	slices.Sort(p.Sample)
	if !p.Existed && p.Covered == 0 && (rule.Kind == policy.RevokeSubject || rule.Kind == policy.RevokeTenant) {
		older := rule
		older.IssuedBefore = time.Unix(0, 0)
		p.Existed = v.existing(older)
	}
	return p, nil
}

func tokenOf(rec *store.TokenRecord) *policy.Token {
	return &policy.Token{
		Claims: policy.Claims{ID: rec.ID, Subject: rec.Subject, Tenant: rec.Tenant, IssuedAt: rec.IssuedAt.Unix()},
		KeyID:  rec.KeyID,
	}
}

// Leak is the outcome of RevokeLeak.
type Leak struct {
	Token store.TokenRecord
	Result
	// Already: the token was revoked before; no rule was added.
	Already bool
}

// MaxLeakSourceBytes bounds where a leak was found, as recorded.
const MaxLeakSourceBytes = 512

// RevokeLeak revokes, now, the token whose SHA-256 (policy.LeakHash) was
// found where it should not be (`scan`, POST /v1/leaks, GitHub secret
// scanning). Which token that is only the store knows: the look-up is
// bounded by the Deadline and a store that does not answer is
// ErrStoreUnavailable. store.ErrNotFound when no token issued here has that
// hash. A token revoked before is Already, and nothing is added.
func (v *Revoker) RevokeLeak(ctx context.Context, h [32]byte, source, actor string) (Leak, error) {
	if len(source) > MaxLeakSourceBytes {
		return Leak{}, &policy.Refusal{Msg: fmt.Sprintf("source: at most %d bytes", MaxLeakSourceBytes)}
	}
	lctx, cancel := context.WithTimeout(ctx, v.cfg.Deadline)
	rec, err := v.cfg.Store.TokenByLeakHash(lctx, h)
	cancel()
	switch {
	case errors.Is(err, store.ErrNotFound):
		return Leak{}, fmt.Errorf("no token issued here has that hash: %w", err)
	case err != nil:
		return Leak{}, fmt.Errorf("find the leaked token: %w", errors.Join(ErrStoreUnavailable, err))
	}
	if rec.Status == store.TokenRevoked || (v.cfg.Revocations != nil && v.cfg.Revocations.Revoked(tokenOf(&rec), v.cfg.Now())) {
		return Leak{Token: rec, Already: true, Result: Result{Covered: 0, Stored: true, Existed: true}}, nil
	}
	reason := "leak"
	if source != "" {
		reason = "leak: found in " + source
	}
	res, err := v.Submit(ctx, policy.Revocation{Kind: policy.RevokeToken, Target: rec.ID, Reason: reason, Actor: actor}, Options{})
	return Leak{Token: rec, Result: res}, err
}

func (v *Revoker) done(id string) {
	if v.cfg.Journal == nil {
		return
	}
	if err := v.cfg.Journal.Done(id); err != nil {
		// The rule is stored; at the next start it is stored again
		// (idempotent by id).
		v.cfg.Logger.Warn("revocation stored; marking it done in the journal failed", "rule", id, "err", err)
	}
}

// Pending is the number of rules enforced here and not yet stored.
func (v *Revoker) Pending() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.pending)
}

// Run retries storing the pending rules, backing off from RetryFirst to
// RetryMax, until ctx ends.
func (v *Revoker) Run(ctx context.Context) {
	wait := v.cfg.RetryFirst
	for {
		if v.Pending() == 0 {
			wait = v.cfg.RetryFirst
			select {
			case <-ctx.Done():
				return
			case <-v.kick:
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			if n := v.Pending(); n > 0 {
				v.cfg.Logger.Error("agent stopping with revocations not stored; they are journaled and stored at the next start", "rules", n)
			}
			return
		case <-t.C:
		}
		v.retry(ctx)
		wait = min(2*wait, v.cfg.RetryMax)
	}
}

func (v *Revoker) retry(ctx context.Context) {
	// Only retry removes from pending and Submit only appends, so the
	// first len(todo) entries are still todo when it is done.
	v.mu.Lock()
	todo := slices.Clone(v.pending)
	v.mu.Unlock()
	var keep []policy.Revocation
	for _, r := range todo {
		if !r.Expires.IsZero() && v.cfg.Now().After(r.Expires) {
			v.done(r.ID) // every token it could cover has expired
			continue
		}
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		_, _, err := v.cfg.Store.Revoke(actx, r)
		cancel()
		switch {
		case err == nil:
			v.done(r.ID)
			v.cfg.Logger.Info("revocation stored after retrying", "rule", r.ID, "kind", r.Kind, "target", r.Target)
		case refused(err):
			v.done(r.ID)
			v.cfg.Logger.Error("revocation refused by the store; enforced on this node only, from memory", "rule", r.ID, "kind", r.Kind, "target", r.Target, "err", err)
		default:
			if ctx.Err() == nil {
				v.cfg.Logger.Error("revocation still not stored; retrying", "rule", r.ID, "kind", r.Kind, "target", r.Target, "err", err)
			}
			keep = append(keep, r)
		}
	}
	v.mu.Lock()
	v.pending = append(keep, v.pending[len(todo):]...)
	v.mu.Unlock()
}

// refused: the store answered, and will not take the rule (policy, or a
// token it has no record of). Retrying would not help.
func refused(err error) bool {
	var r *policy.Refusal
	return errors.As(err, &r) || errors.Is(err, store.ErrNotFound)
}
