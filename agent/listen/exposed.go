package listen

import (
	"log/slog"
	"net"
	"net/netip"
)

// WarnIfExposed logs a warning when a listener that answers in plain HTTP
// (name, at addr) is reachable from beyond the node; carriesTokens says
// whether admin tokens cross it.
func WarnIfExposed(log *slog.Logger, name, addr string, carriesTokens bool) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return // not listening, or a unix socket
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		return
	}
	if carriesTokens {
		log.Warn("listener is reachable beyond loopback and speaks plain HTTP: admin tokens cross the network in clear text; bind it to 127.0.0.1 or put a TLS proxy in front",
			"listener", name, "address", addr)
		return
	}
	log.Warn("listener is reachable beyond loopback", "listener", name, "address", addr)
}
