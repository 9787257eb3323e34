package listen

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// CallLimits bound the gRPC calls a server holds in flight. Each call, from
// its headers until it ends, may hold up to the server's MaxRecvMsgSize of
// buffered request: these limits and the deadline bound that memory for the
// whole server, whatever the number of connections.
type CallLimits struct {
	// InFlight is the most calls in flight across the server. Required.
	InFlight int
	// PerClient is the most calls one client (as Limits.ConnsPerClient:
	// an IP address, or a process over a unix socket) has in flight; 0
	// means InFlight.
	PerClient int
	// Deadline, when not 0, ends a call this long after its headers
	// arrived, whether or not the client set a shorter one: a request still
	// half-sent by then fails with DEADLINE_EXCEEDED and its buffers are
	// freed. Long-lived streams (ADS) have none.
	Deadline time.Duration
}

// CallGate admits gRPC calls within CallLimits. Install it with
// ServerOption; a refused call fails with RESOURCE_EXHAUSTED before its
// message is read.
//
// It runs once per call, so it costs a handful of atomic operations and no
// lock in the usual case: the counts are atomic, a client's count is found
// by its address without building a string, and the deadline costs a timer
// only when the client did not ask for a shorter one (Envoy always does).
type CallGate struct {
	limits CallLimits
	obs    *listenerMetrics
	log    *slog.Logger

	inFlight atomic.Int64

	// mu guards clients: read-locked to find a client's count, locked
	// to add one or to sweep the idle ones out.
	mu      sync.RWMutex
	clients map[clientKey]*clientCalls
	// sweepAt is the size at which adding a client first removes the
	// clients with no call in flight: at most limits.InFlight have one,
	// so the map stays below sweepAt + limits.InFlight entries whatever
	// the number of clients seen.
	sweepAt int

	warnMu sync.Mutex
	warned time.Time
}

// clientKey names a client as addrClient does, without a string to build:
// an IP address, or a process over a unix socket.
type clientKey struct {
	ip   netip.Addr
	proc processAddr
}

// clientCalls is one client's calls in flight. A swept entry holds
// callsDead: an increment that finds it negative looks the client up again.
type clientCalls struct {
	calls atomic.Int64
	done  func() // releases one call of this client
}

const callsDead = -1 << 40

// NewCallGate returns a gate for the listener name; m and log may be nil.
func NewCallGate(name string, l CallLimits, m *Metrics, log *slog.Logger) *CallGate {
	if l.PerClient <= 0 || l.PerClient > l.InFlight {
		l.PerClient = l.InFlight
	}
	if log == nil {
		log = slog.Default()
	}
	g := &CallGate{limits: l, log: log.With("listener", name), clients: map[clientKey]*clientCalls{}, sweepAt: l.InFlight + 64}
	if m != nil {
		g.obs = m.listener(name, 0)
	}
	return g
}

// ServerOption installs the gate on a gRPC server (as its InTapHandle).
func (g *CallGate) ServerOption() grpc.ServerOption { return grpc.InTapHandle(g.tap) }

var (
	errCallsFull       = status.Error(codes.ResourceExhausted, "too many calls in flight; retry")
	errClientCallsFull = status.Error(codes.ResourceExhausted, "too many calls in flight from this client; retry")
)

// tap runs when a call's headers arrive, under the transport's lock: it
// only counts.
func (g *CallGate) tap(ctx context.Context, _ *tap.Info) (context.Context, error) {
	var client *clientCalls
	key, named := clientKey{}, false
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		key, named = keyOf(p.Addr)
	}
	if named {
		client = g.client(key)
	}
	reason := g.admit(client)
	for reason == reasonSwept {
		// Swept between the look-up and the count: it is out of the map
		// now, so a second look-up finds or adds the live entry.
		client = g.client(key)
		reason = g.admit(client)
	}
	if reason != "" {
		g.obs.refuse(reason)
		g.warn(reason)
		if reason == ReasonCallsFull {
			return nil, errCallsFull
		}
		return nil, errClientCallsFull
	}
	release := g.release
	if client != nil {
		release = client.done
	}
	// A call ends no later than Deadline after its headers: a client's own
	// deadline (grpc-timeout; Envoy sends its ext_authz timeout) when it is
	// at least as near, or a timer of ours.
	if g.limits.Deadline > 0 {
		if d, ok := ctx.Deadline(); !ok || time.Until(d) > g.limits.Deadline {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, g.limits.Deadline)
			done := release
			release = func() { cancel(); done() }
		}
	}
	// The call's context ends when the call does (gRPC cancels it) or at
	// the deadline, whichever comes first: either frees its place.
	context.AfterFunc(ctx, release)
	return ctx, nil
}

// client returns the count of the client named key, adding it if new.
func (g *CallGate) client(key clientKey) *clientCalls {
	g.mu.RLock()
	c := g.clients[key]
	g.mu.RUnlock()
	if c != nil {
		return c
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if c = g.clients[key]; c != nil {
		return c
	}
	if len(g.clients) >= g.sweepAt {
		for k, idle := range g.clients {
			if idle.calls.CompareAndSwap(0, callsDead) {
				delete(g.clients, k)
			}
		}
	}
	c = &clientCalls{}
	c.done = func() {
		c.calls.Add(-1)
		g.release()
	}
	g.clients[key] = c
	return c
}

// admit takes a place for a call of client (nil when unknown), or returns
// why not. Counts go up first and back down on refusal: racing calls may
// be refused at the limit, never admitted over it.
func (g *CallGate) admit(client *clientCalls) string {
	if g.inFlight.Add(1) > int64(g.limits.InFlight) {
		g.inFlight.Add(-1)
		return ReasonCallsFull
	}
	if client == nil {
		return ""
	}
	n := client.calls.Add(1)
	if n > 0 && n <= int64(g.limits.PerClient) {
		return ""
	}
	client.calls.Add(-1)
	g.inFlight.Add(-1)
	if n < 0 {
		return reasonSwept
	}
	return ReasonClientCallsFull
}

// reasonSwept is admit's answer for a client entry swept out of the map.
const reasonSwept = "swept"

// release frees the server-wide place of a call.
func (g *CallGate) release() { g.inFlight.Add(-1) }

// InFlight is the number of calls in flight now.
func (g *CallGate) InFlight() int { return int(g.inFlight.Load()) }

func (g *CallGate) warn(reason string) {
	g.warnMu.Lock()
	now := time.Now()
	quiet := now.Sub(g.warned) < warnEvery
	if !quiet {
		g.warned = now
	}
	g.warnMu.Unlock()
	if !quiet {
		g.log.Warn("listener: gRPC call refused over the limit", "reason", reason,
			"in_flight", g.limits.InFlight, "per_client", g.limits.PerClient)
	}
}

// keyOf names the client behind a connection's remote address, as
// clientOf does for the connection itself; false when it has no name.
func keyOf(a net.Addr) (clientKey, bool) {
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, ok := netip.AddrFromSlice(a.IP)
		return clientKey{ip: ip.Unmap()}, ok
	case processAddr:
		return clientKey{proc: a}, a != ""
	}
	return clientKey{}, false
}
