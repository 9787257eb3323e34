package agent

import (
	"net/netip"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/anomaly"
	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/authz"
	"github.com/tokenwarden/tokenwarden/policy"
)

// observeCheck sees every ext_authz decision on the hot path: it feeds the
// audit of use, the anomaly detector and the replica's hash index. Everything
// here is counters, a read-locked map look-up or a non-blocking queue;
// nothing allocates for a token seen before.
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
	a.replica.Learn(d, a.learnedUntil)
	a.anomaly.Observe(d.TokenID, d.Subject, sourceAddr(ev.Source))
}

// learnedUntil bounds how long a hash learned at check time is kept: no
// token can outlive the policy's longest lifetime.
func (a *Agent) learnedUntil() time.Time {
	return a.cfg.Now().Add(a.decider.Policy().MaxLifetime() + policy.MaxClockSkew)
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

// onAnomaly acts on a detector trigger: the evidence goes to the audit log,
// and with action revoke a rule with reason anomaly:<rule> retires the token
// everywhere (the kernel's revoked map included). The detector asks once per
// token, so the revocation goes through Insist: enforced here even when the
// store cannot take it, and stored later.
func (a *Agent) onAnomaly(t anomaly.Trigger) {
	reason := "anomaly:" + string(t.Rule)
	a.use.Record(audit.Record{
		Action: audit.ActionAnomaly, Actor: audit.ActorSystem, TokenID: t.TokenID, Subject: t.Subject, Reason: reason,
		Details: audit.Details(map[string]any{
			"rule": t.Rule, "action": t.Action, "rate_rps": t.Rate, "baseline_rps": t.Baseline,
			"stddev_rps": t.StdDev, "sources": t.Sources, "window": t.Window.String(),
		}),
	})
	a.log.Warn("token anomaly", "token_id", t.TokenID, "subject", t.Subject, "rule", t.Rule, "action", t.Action, "rate_rps", t.Rate)
	if t.Action == anomaly.ActionRevoke {
		a.revoker.Insist(policy.Revocation{Kind: policy.RevokeToken, Target: t.TokenID, Reason: reason, Actor: audit.ActorSystem})
	}
}
