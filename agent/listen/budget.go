package listen

import (
	"fmt"
	"os"
)

// The file-descriptor budget. Every connection costs a descriptor; a
// process out of them can accept nothing, health checks included. The
// enforcement listeners (ext_authz, xDS), which any pod on the node can
// reach, share what is left after a reserve; the operator listeners
// (admin with /healthz, metrics) have small fixed limits inside that
// reserve, so a flood of the former never starves the latter.
const (
	// fdReserve is kept for the process itself beyond its listeners:
	// store and audit files opened later (rotation, audit segments),
	// connections to etcd and to rotation webhooks, and the descriptors
	// the Go runtime and BPF loader open on demand.
	fdReserve = 64
	// maxConnsPerListener caps an enforcement listener however high
	// RLIMIT_NOFILE is: a node's sidecars need a few connections each,
	// and every idle gRPC connection costs tens of KiB.
	maxConnsPerListener = 4096
	// minConnsPerListener is the least an enforcement listener gets: below
	// it the agent warns that RLIMIT_NOFILE is too low to serve a node.
	minConnsPerListener = 16
	// DefaultConnsPerClient bounds one client (IP address or process) on an
	// enforcement listener. Envoy opens one connection per worker thread
	// to a cluster, nginx keeps a keepalive pool per worker: 64 covers a
	// 64-core gateway. It is lowered to a quarter of the listener's share
	// when descriptors are scarce, so that one client never holds it all.
	DefaultConnsPerClient = 64
)

// Operator listeners have fixed limits, inside the reserve.
var (
	// AdminLimits: CLI calls, kubelet probes and audit streams. A client
	// gets half, so a local flood leaves room for the kubelet's probes.
	AdminLimits = Limits{Conns: 64, ConnsPerClient: 32}
	// MetricsLimits: a Prometheus server or two.
	MetricsLimits = Limits{Conns: 16, ConnsPerClient: 8}
)

// Budget is the process's file-descriptor allowance when the listeners
// open.
type Budget struct {
	Limit int // RLIMIT_NOFILE (soft; Go raises it to the hard limit at start)
	InUse int // descriptors already open
}

// FDBudget reads the budget of the running process.
func FDBudget() (Budget, error) {
	limit, err := fdLimit()
	if err != nil {
		return Budget{}, fmt.Errorf("read RLIMIT_NOFILE: %w", err)
	}
	b := Budget{Limit: limit}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		b.InUse = len(fds)
	}
	return b, nil
}

// Enforcement returns the limits of each of n enforcement listeners: an
// equal share of the descriptors left after the reserve and the operator
// listeners, capped at maxConnsPerListener. It errors when the share would
// fall below minConnsPerListener, saying how to raise the limit.
func (b Budget) Enforcement(n int) (Limits, error) {
	if n <= 0 {
		return Limits{}, nil
	}
	left := b.Limit - b.InUse - fdReserve - AdminLimits.Conns - MetricsLimits.Conns
	share := min(left/n, maxConnsPerListener)
	if share < minConnsPerListener {
		need := b.InUse + fdReserve + AdminLimits.Conns + MetricsLimits.Conns + n*minConnsPerListener
		return Limits{}, fmt.Errorf("RLIMIT_NOFILE %d leaves %d connections to each of %d enforcement listeners (want at least %d): raise it to %d or more (ulimit -n, LimitNOFILE=, or the container runtime's nofile)",
			b.Limit, max(share, 0), n, minConnsPerListener, need)
	}
	return Limits{Conns: share, ConnsPerClient: min(DefaultConnsPerClient, max(share/4, 1))}, nil
}

// Names of the operator listeners, which have fixed limits.
const (
	AdminListener   = "admin"
	MetricsListener = "metrics"
)

// Plan is the limits of each of the agent's listeners.
type Plan struct {
	enforcement Limits
}

// NewPlan shares b among n enforcement listeners. Fields of override that
// are set (an operator's --max-conns, --max-conns-per-client) replace the
// derived ones; with override.Conns set, a budget too small is the
// operator's call and not an error.
func NewPlan(b Budget, n int, override Limits) (Plan, error) {
	l, err := b.Enforcement(n)
	if err != nil && override.Conns == 0 {
		return Plan{}, err
	}
	if override.Conns > 0 {
		l.Conns = override.Conns
		l.ConnsPerClient = min(DefaultConnsPerClient, max(l.Conns/4, 1))
	}
	if override.ConnsPerClient > 0 {
		l.ConnsPerClient = override.ConnsPerClient
	}
	return Plan{enforcement: l}, nil
}

// For returns the limits of the listener name.
func (p Plan) For(name string) Limits {
	switch name {
	case AdminListener:
		return AdminLimits
	case MetricsListener:
		return MetricsLimits
	}
	return p.enforcement
}
