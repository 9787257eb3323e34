package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/tokenwarden/tokenwarden/agent/anomaly"
	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/authz"
	"github.com/tokenwarden/tokenwarden/agent/issuer"
	"github.com/tokenwarden/tokenwarden/policy"
)

// observeCheck sees every ext_authz decision on the hot path: it feeds the
// audit of use, the anomaly detector and the hash index. Everything here is
// counters or a non-blocking queue.
func (a *Agent) observeCheck(ev authz.Event) {
	d := &ev.Decision
	if d.Allow {
		if d.TokenID != "" {
			a.use.Allow(d.TokenID, d.Subject, d.Tenant, d.Rule, ev.Source)
		}
	} else {
		a.use.Deny(string(d.Reason), d.TokenID, d.Subject, d.Rule, ev.Source)
	}
	if d.TokenID == "" {
		return
	}
	if ev.WireHash != 0 && d.WireHash == 0 {
		d.WireHash = ev.WireHash
	}
	a.tokens.learn(d, a.cfg.Now().Add(a.policy.Load().MaxLifetime()))
	src, _ := netip.ParseAddr(hostOf(ev.Source))
	a.anomaly.Observe(d.TokenID, d.Subject, src)
}

// hostOf strips a port from an address, if it has one.
func hostOf(addr string) string {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return ap.Addr().String()
	}
	return addr
}

// onAnomaly acts on a detector trigger: the evidence goes to the audit log,
// and with action revoke a rule with reason anomaly:<rule> retires the token
// everywhere (the kernel's revoked map included).
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
	_, _, err := a.issuer.Revoke(context.Background(), policy.Revocation{
		Kind: policy.RevokeToken, Target: t.TokenID, Reason: "anomaly:" + string(t.Rule), Actor: issuer.ActorSystem,
	})
	if err != nil {
		a.log.Error("anomaly revocation failed", "token_id", t.TokenID, "err", fmt.Errorf("revoke: %w", err))
	}
}
