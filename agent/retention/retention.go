// Package retention deletes from the store what can no longer matter, so
// the store (and every start's full load) stays bounded by issuance rate
// times lifetime: revocation rules once no token they cover can be valid
// (their Expires), and token records a while after they expire (kept for
// `token list` and leak look-ups). The audit log keeps the history.
package retention

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

const (
	// DefaultEvery is how often the agent prunes.
	DefaultEvery = 10 * time.Minute
	// DefaultTokenRetention is how long a token record is kept after its
	// token expired.
	DefaultTokenRetention = 7 * 24 * time.Hour
)

// Pruned counts what one Prune deleted.
type Pruned struct{ Rules, Tokens int }

// Prune deletes, at now, the rules past their expiry and the token records
// expired more than keep ago. With many nodes each may prune; a record
// another node deleted first is not an error.
func Prune(ctx context.Context, st store.Store, now time.Time, keep time.Duration) (Pruned, error) {
	var out Pruned
	rules, err := st.Revocations(ctx)
	if err != nil {
		return out, fmt.Errorf("list revocations: %w", err)
	}
	var errs []error
	for _, r := range rules {
		if !r.Expires.IsZero() && now.After(r.Expires) {
			if err := st.DeleteRevocation(ctx, r.ID); err == nil {
				out.Rules++
			} else if !errors.Is(err, store.ErrNotFound) {
				errs = append(errs, fmt.Errorf("delete revocation %s: %w", r.ID, err))
			}
		}
	}
	recs, err := st.Tokens(ctx, store.TokenFilter{})
	if err != nil {
		return out, errors.Join(append(errs, fmt.Errorf("list tokens: %w", err))...)
	}
	for _, t := range recs {
		if now.Sub(t.ExpiresAt) > keep {
			if err := st.DeleteToken(ctx, t.ID); err == nil {
				out.Tokens++
			} else if !errors.Is(err, store.ErrNotFound) {
				errs = append(errs, fmt.Errorf("delete token %s: %w", t.ID, err))
			}
		}
	}
	return out, errors.Join(errs...)
}

// Pruner prunes one store and logs what it did; the agent calls Prune every
// DefaultEvery.
type Pruner struct {
	Store  store.Store
	Keep   time.Duration // DefaultTokenRetention when zero
	Now    func() time.Time
	Logger *slog.Logger
}

// Prune prunes the store once.
func (p Pruner) Prune(ctx context.Context) {
	done, err := Prune(ctx, p.Store, p.Now(), cmp.Or(p.Keep, DefaultTokenRetention))
	if err != nil {
		p.Logger.Warn("prune store", "err", err)
	}
	if done.Rules+done.Tokens > 0 {
		p.Logger.Info("pruned store", "revocation_rules", done.Rules, "token_records", done.Tokens)
	}
}
