package listen

import (
	"context"
	"log/slog"
	"net"
	"sync"
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
type CallGate struct {
	limits CallLimits
	obs    *listenerMetrics
	log    *slog.Logger

	mu       sync.Mutex
	inFlight int
	clients  map[string]int
	warned   time.Time
}

// NewCallGate returns a gate for the listener name; m and log may be nil.
func NewCallGate(name string, l CallLimits, m *Metrics, log *slog.Logger) *CallGate {
	if l.PerClient <= 0 || l.PerClient > l.InFlight {
		l.PerClient = l.InFlight
	}
	if log == nil {
		log = slog.Default()
	}
	g := &CallGate{limits: l, log: log.With("listener", name), clients: map[string]int{}}
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
	client := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		client = addrClient(p.Addr)
	}
	if reason := g.admit(client); reason != "" {
		g.obs.refuse(reason)
		g.warn(reason)
		if reason == ReasonCallsFull {
			return nil, errCallsFull
		}
		return nil, errClientCallsFull
	}
	cancel := func() {}
	if g.limits.Deadline > 0 {
		ctx, cancel = context.WithTimeout(ctx, g.limits.Deadline)
	}
	// The call's context ends when the call does (gRPC cancels it) or at
	// the deadline, whichever comes first: either frees its place.
	context.AfterFunc(ctx, func() {
		cancel()
		g.release(client)
	})
	return ctx, nil
}

func (g *CallGate) admit(client string) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.inFlight >= g.limits.InFlight:
		return ReasonCallsFull
	case client != "" && g.clients[client] >= g.limits.PerClient:
		return ReasonClientCallsFull
	}
	g.inFlight++
	if client != "" {
		g.clients[client]++
	}
	return ""
}

func (g *CallGate) release(client string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.inFlight--
	if client != "" {
		if g.clients[client]--; g.clients[client] <= 0 {
			delete(g.clients, client)
		}
	}
}

// InFlight is the number of calls in flight now.
func (g *CallGate) InFlight() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.inFlight
}

func (g *CallGate) warn(reason string) {
	g.mu.Lock()
	now := time.Now()
	quiet := now.Sub(g.warned) < warnEvery
	if !quiet {
		g.warned = now
	}
	g.mu.Unlock()
	if !quiet {
		g.log.Warn("listener: gRPC call refused over the limit", "reason", reason,
			"in_flight", g.limits.InFlight, "per_client", g.limits.PerClient)
	}
}

// addrClient names the client behind a connection's remote address, as
// clientOf does for the connection itself.
func addrClient(a net.Addr) string {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.IP.String()
	case processAddr:
		return string(a)
	}
	return ""
}
