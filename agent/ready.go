package agent

import (
	"net"

	"github.com/tokenwarden/tokenwarden/agent/listen"
)

// Ready tells an operator where the running agent can be reached.
type Ready struct {
	Env            string
	AdminAddr      string
	MetricsAddr    string
	AdminTokenFile string
	Listeners      map[string]string // name -> address of every other listener
	TLS            bool              // TCP listeners serve TLS
}

// announce marks the agent ready and says where it listens.
func (a *Agent) announce(lis map[string]net.Listener) {
	addrs := map[string]string{}
	for name, l := range lis {
		addrs[name] = l.Addr().String()
	}
	listen.WarnIfExposed(a.log, listen.AdminListener, addrs[listen.AdminListener], a.tls == nil) // admin tokens cross it in clear without TLS
	listen.WarnIfExposed(a.log, listen.MetricsListener, addrs[listen.MetricsListener], false)
	a.ready.Store(true)
	r := Ready{Env: a.cfg.Env, AdminAddr: addrs["admin"], MetricsAddr: addrs["metrics"], AdminTokenFile: a.adminToken.Path(), Listeners: map[string]string{}, TLS: a.tls != nil}
	for name, addr := range addrs {
		if name != "admin" && name != "metrics" {
			r.Listeners[name] = addr
		}
	}
	if a.cfg.OnReady != nil {
		a.cfg.OnReady(r)
	}
	a.log.Info("tokenwarden agent ready", "env", a.cfg.Env, "listeners", addrs,
		"kernel_side", a.kernel != nil, "admin_token_file", r.AdminTokenFile, "policy", a.cfg.PolicyPath)
}
