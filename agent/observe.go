package agent

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/anomaly"
	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/authz"
	"github.com/tokenwarden/tokenwarden/agent/issuer"
	"github.com/tokenwarden/tokenwarden/policy"
)

// observeCheck sees every ext_authz decision on the hot path: it feeds the
// audit of use, the anomaly detector and the hash index. Everything here is
// counters, a read-locked map look-up or a non-blocking queue; nothing
// allocates for a token seen before.
func (a *Agent) observeCheck(ev authz.Event) {
	d := &ev.Decision
	if d.Allow {
		if d.TokenID != "" {
			a.use.Allow(d.TokenID, d.Subject, d.Tenant, d.Rule, ev.Source)
		}
	} else if d.Reason == policy.ReasonSenderMismatch {
		a.use.DenySender(d.TokenID, d.Subject, d.Rule, ev.Source, d.Bound, ev.Principal)
	} else {
		a.use.Deny(string(d.Reason), d.TokenID, d.Subject, d.Rule, ev.Source)
	}
	if d.TokenID == "" {
		return
	}
	if a.tokens.learn(d, a.learnedUntil) && d.Reason == policy.ReasonRevoked && a.kernel != nil {
		// A revoked token the index did not know: the kernel can drop it
		// now that its hash is known.
		a.kernel.reconcileSoon()
	}
	a.anomaly.Observe(d.TokenID, d.Subject, sourceAddr(ev.Source))
}

// learnedUntil bounds how long a hash learned at check time is kept: no
// token can outlive the policy's longest lifetime.
func (a *Agent) learnedUntil() time.Time {
	return a.cfg.Now().Add(a.policy.Load().MaxLifetime() + policy.ClockSkew)
}

// sourceAddr parses a client address with or without a port, without
// allocating; the zero Addr when it is neither.
func sourceAddr(addr string) netip.Addr {
	if addr == "" {
		return netip.Addr{}
	}
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return ap.Addr().Unmap()
	}
	ip, _ := netip.ParseAddr(addr)
	return ip.Unmap()
}

// The wait before the first retry of an anomaly revocation that could not
// be stored, and the most it grows to.
const (
	anomalyRetryFirst = time.Second
	anomalyRetryMax   = time.Minute
)

// onAnomaly acts on a detector trigger: the evidence goes to the audit log,
// and with action revoke a rule with reason anomaly:<rule> retires the token
// everywhere (the kernel's revoked map included).
//
// The detector asks once per token, so a revocation that cannot be stored
// (store fault, token record not on this node) must not be forgotten: the
// rule is enforced on this node at once, from memory, and storing it is
// retried in the background until it succeeds or the agent stops.
func (a *Agent) onAnomaly(t anomaly.Trigger) {
	evidence, _ := json.Marshal(map[string]any{
		"rule": t.Rule, "action": t.Action, "rate_rps": t.Rate, "baseline_rps": t.Baseline,
		"stddev_rps": t.StdDev, "sources": t.Sources, "window": t.Window.String(),
	})
	a.use.Record(audit.Record{
		Action: audit.ActionAnomaly, Actor: audit.ActorSystem, TokenID: t.TokenID, Subject: t.Subject,
		Reason: "anomaly:" + string(t.Rule), Details: evidence,
	})
	a.log.Warn("token anomaly", "token_id", t.TokenID, "subject", t.Subject, "rule", t.Rule, "action", t.Action, "rate_rps", t.Rate)
	if t.Action != anomaly.ActionRevoke {
		return
	}
	ctx := a.backgroundCtx()
	rule := policy.Revocation{
		Kind: policy.RevokeToken, Target: t.TokenID, Reason: "anomaly:" + string(t.Rule), Actor: issuer.ActorSystem,
	}
	_, _, err := a.issuer.Revoke(ctx, rule)
	if err == nil {
		return
	}
	now := a.cfg.Now()
	local := rule
	local.ID = policy.NewRevocationID()
	local.CreatedAt, local.EffectiveAt = now.UTC(), now.UTC()
	// No token this rule can match outlives the policy's longest lifetime.
	local.Expires = now.Add(a.policy.Load().MaxLifetime() + policy.ClockSkew).UTC()
	a.applyRevocation(local)
	var refused *policy.IssueError
	if errors.As(err, &refused) || ctx.Err() != nil {
		// Retrying cannot help, or the agent is stopping.
		a.log.Error("anomaly revocation not stored; enforced on this node only, from memory", "token_id", t.TokenID, "err", err)
		return
	}
	a.log.Error("anomaly revocation could not be stored; enforcing it on this node and retrying", "token_id", t.TokenID, "err", err)
	a.bg.Add(1)
	go func() {
		defer a.bg.Done()
		wait := anomalyRetryFirst
		for {
			select {
			case <-ctx.Done():
				a.log.Error("agent stopping with an anomaly revocation not stored; it was enforced on this node only", "token_id", t.TokenID)
				return
			case <-time.After(wait):
			}
			if a.cfg.Now().After(local.Expires) {
				return // the token has expired everywhere: nothing left to revoke
			}
			_, _, err := a.issuer.Revoke(ctx, rule)
			if err == nil {
				a.log.Info("anomaly revocation stored after retrying", "token_id", t.TokenID)
				return
			}
			if errors.As(err, &refused) {
				a.log.Error("anomaly revocation refused; enforced on this node only, from memory", "token_id", t.TokenID, "err", err)
				return
			}
			a.log.Error("anomaly revocation still not stored; retrying", "token_id", t.TokenID, "err", err, "in", wait)
			wait = min(2*wait, anomalyRetryMax)
		}
	}()
}

// backgroundCtx is the context of work started from callbacks: it ends when
// Run begins to shut down (or is already done when Run is not running).
func (a *Agent) backgroundCtx() context.Context {
	if p := a.runCtx.Load(); p != nil {
		return *p
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}
