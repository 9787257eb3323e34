package admin

import (
	"context"
	"errors"
	"net/http"

	"github.com/tokenwarden/tokenwarden/agent/revoke"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// defaultRevoker is the revocation path of an API configured without one:
// over the issuer, with no journal, enforcing through cfg.Revocations when
// it can take rules (a *revocation.Set), else through the store's watch.
func defaultRevoker(cfg Config) (*revoke.Revoker, error) {
	var enf revoke.Enforcer = enforceByWatch{}
	if set, ok := cfg.Revocations.(interface{ Add(policy.Revocation) }); ok {
		enf = enforceInSet{set}
	}
	return revoke.New(revoke.Config{Store: cfg.Issuer, Enforce: enf, Revocations: cfg.Revocations, Now: cfg.Now, Logger: cfg.Logger})
}

type enforceInSet struct {
	set interface{ Add(policy.Revocation) }
}

func (e enforceInSet) Enforce(r policy.Revocation) { e.set.Add(r) }

type enforceByWatch struct{}

func (enforceByWatch) Enforce(policy.Revocation) {}

// storeUnavailable: err is the store's not answering (or the request's
// deadline running out while waiting on it), not the caller's fault.
func storeUnavailable(r *http.Request, err error) bool {
	return errors.Is(err, store.ErrUnavailable) || errors.Is(err, revoke.ErrStoreUnavailable) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(r.Context().Err(), context.DeadlineExceeded)
}
