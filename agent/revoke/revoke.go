// Package revoke is the one way this node revokes. Every revocation - the
// admin API's, a reported leak's, an anomaly trigger's, the exposed admin
// token's, and rotation's retirement of a predecessor (inside the issuer) -
// is stored by the issuer through the replica's writer: it is enforced here
// before the call returns and on every node through the store's watch. A
// revocation the agent makes on its own (Insist) that the store cannot take
// is enforced here from memory at once and stored by Run later.
package revoke

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/tokenwarden/tokenwarden/policy"
)

// Retry pacing of Insist's revocations the store could not take: the wait
// before the first retry, and the most it grows to.
const (
	DefaultRetryFirst = time.Second
	DefaultRetryMax   = time.Minute
	// attemptTimeout bounds Insist's first attempt, made on the caller's
	// goroutine.
	attemptTimeout = 10 * time.Second
)

// Storer stores a rule and reports the live tokens it covers (the issuer).
type Storer interface {
	Revoke(ctx context.Context, r policy.Revocation) (policy.Revocation, int, error)
}

// Enforcer enforces a rule on this node, from memory (the replica).
type Enforcer interface {
	Enforce(r policy.Revocation)
}

// Config configures a Revoker.
type Config struct {
	Store   Storer
	Enforce Enforcer
	// MaxLifetime is the longest lifetime policy allows a token: a rule
	// enforced from memory is kept that long.
	MaxLifetime func() time.Duration
	RetryFirst  time.Duration // DefaultRetryFirst when zero
	RetryMax    time.Duration // DefaultRetryMax when zero
	Now         func() time.Time
	Logger      *slog.Logger
}

// Revoker revokes.
type Revoker struct {
	cfg     Config
	mu      sync.Mutex
	pending []policy.Revocation // enforced from memory, not yet stored
	kick    chan struct{}
}

// New returns a Revoker; Run retries what Insist could not store.
func New(cfg Config) (*Revoker, error) {
	if cfg.Store == nil || cfg.Enforce == nil || cfg.MaxLifetime == nil {
		return nil, errors.New("revoke: Store, Enforce and MaxLifetime are required")
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
	return &Revoker{cfg: cfg, kick: make(chan struct{}, 1)}, nil
}

// Revoke stores r; once it returns without error the rule is enforced on
// this node. It returns the stored rule and the live tokens it covers.
func (v *Revoker) Revoke(ctx context.Context, r policy.Revocation) (policy.Revocation, int, error) {
	return v.cfg.Store.Revoke(ctx, r)
}

// Insist revokes on the agent's own behalf, where nobody would retry: when
// the store cannot take r (a store fault, a token this node has no record
// of), r is enforced on this node at once, from memory, and storing it is
// retried by Run until it succeeds, is refused, or the token has expired
// everywhere.
func (v *Revoker) Insist(r policy.Revocation) {
	ctx, cancel := context.WithTimeout(context.Background(), attemptTimeout)
	_, _, err := v.cfg.Store.Revoke(ctx, r)
	cancel()
	if err == nil {
		return
	}
	now := v.cfg.Now()
	local := r
	local.ID = policy.NewRevocationID()
	local.CreatedAt, local.EffectiveAt = now.UTC(), now.UTC()
	// No token this rule can match outlives the policy's longest lifetime.
	local.Expires = now.Add(v.cfg.MaxLifetime() + policy.MaxClockSkew).UTC()
	v.cfg.Enforce.Enforce(local)
	if refused(err) {
		v.cfg.Logger.Error("revocation refused by the store; enforced on this node only, from memory", "kind", r.Kind, "target", r.Target, "err", err)
		return
	}
	v.cfg.Logger.Error("revocation could not be stored; enforcing it on this node and retrying", "kind", r.Kind, "target", r.Target, "err", err)
	r.Expires = local.Expires // when retrying stops helping
	v.mu.Lock()
	v.pending = append(v.pending, r)
	v.mu.Unlock()
	select {
	case v.kick <- struct{}{}:
	default:
	}
}

// Pending is the number of rules enforced from memory and not yet stored.
func (v *Revoker) Pending() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.pending)
}

// Run retries storing Insist's pending rules, backing off from RetryFirst
// to RetryMax, until ctx ends.
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
				v.cfg.Logger.Error("agent stopping with revocations not stored; they were enforced on this node only", "rules", n)
			}
			return
		case <-t.C:
		}
		v.retry(ctx)
		wait = min(2*wait, v.cfg.RetryMax)
	}
}

func (v *Revoker) retry(ctx context.Context) {
	// Only retry removes from pending and Insist only appends, so the
	// first len(todo) entries are still todo when it is done.
	v.mu.Lock()
	todo := slices.Clone(v.pending)
	v.mu.Unlock()
	var keep []policy.Revocation
	for _, r := range todo {
		if v.cfg.Now().After(r.Expires) {
			continue // every token it could cover has expired
		}
		stored := r
		stored.Expires = time.Time{} // the issuer sets it from the record
		_, _, err := v.cfg.Store.Revoke(ctx, stored)
		switch {
		case err == nil:
			v.cfg.Logger.Info("revocation stored after retrying", "kind", r.Kind, "target", r.Target)
		case refused(err):
			v.cfg.Logger.Error("revocation refused; enforced on this node only, from memory", "kind", r.Kind, "target", r.Target, "err", err)
		default:
			v.cfg.Logger.Error("revocation still not stored; retrying", "kind", r.Kind, "target", r.Target, "err", err)
			keep = append(keep, r)
		}
	}
	v.mu.Lock()
	v.pending = append(keep, v.pending[len(todo):]...)
	v.mu.Unlock()
}

func refused(err error) bool {
	var r *policy.Refusal
	return errors.As(err, &r)
}
