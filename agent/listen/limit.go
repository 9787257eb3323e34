package listen

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"
)

// Limits bound the connections one listener holds open.
type Limits struct {
	// Conns is the most connections the listener holds at once; one over
	// it is accepted and closed at once. Required (> 0).
	Conns int
	// ConnsPerClient is the most connections one client holds at once: a
	// client is an IP address over TCP, a process (its pid) over a unix
	// socket. A unix peer whose pid is not visible from our pid namespace
	// is known to no client and bound by Conns only. 0 means Conns.
	ConnsPerClient int
}

// Refusal reasons, the values of the refused metric's reason label.
const (
	ReasonListenerFull    = "listener_full"     // Limits.Conns reached
	ReasonClientFull      = "client_full"       // Limits.ConnsPerClient reached
	ReasonFDExhausted     = "fd_exhausted"      // accept failed: EMFILE/ENFILE
	ReasonCallsFull       = "calls_full"        // CallLimits.InFlight reached
	ReasonClientCallsFull = "client_calls_full" // CallLimits.PerClient reached
)

// Limit wraps lis so that it never holds more than l allows: a connection
// over a limit is closed as soon as it is accepted, before the server sees
// a byte of it, and counted in m (which may be nil) under name.
func Limit(lis net.Listener, name string, l Limits, m *Metrics, log *slog.Logger) net.Listener {
	if l.ConnsPerClient <= 0 || l.ConnsPerClient > l.Conns {
		l.ConnsPerClient = l.Conns
	}
	if log == nil {
		log = slog.Default()
	}
	ll := &limited{Listener: lis, name: name, limits: l, clients: map[string]int{}, log: log}
	if m != nil {
		ll.obs = m.listener(name, l.Conns)
	}
	return ll
}

type limited struct {
	net.Listener
	name   string
	limits Limits
	obs    *listenerMetrics
	log    *slog.Logger

	mu      sync.Mutex
	open    int
	clients map[string]int // open connections per client; no zero entries
	warned  time.Time      // last "limit reached" warning
}

// Accept returns the next connection within the limits.
func (l *limited) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				l.obs.refuse(ReasonFDExhausted)
				l.warn("listener: out of file descriptors; connections wait in the backlog", "err", err)
			}
			return nil, err
		}
		client := clientOf(c)
		if reason := l.admit(client); reason != "" {
			// Counted first: whoever sees the close also sees the count.
			l.obs.refuse(reason)
			c.Close()
			l.warn("listener: connection refused over the limit", "reason", reason,
				"limit", l.limits.Conns, "per_client", l.limits.ConnsPerClient)
			continue
		}
		cc := &counted{Conn: c, remote: c.RemoteAddr(), release: func() { l.release(client) }}
		if _, isUnix := c.(*net.UnixConn); isUnix && client != "" {
			cc.remote = processAddr(client)
		}
		return cc, nil
	}
}

func (l *limited) admit(client string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.open >= l.limits.Conns:
		return ReasonListenerFull
	case client != "" && l.clients[client] >= l.limits.ConnsPerClient:
		return ReasonClientFull
	}
	l.open++
	if client != "" {
		l.clients[client]++
	}
	l.obs.opened()
	return ""
}

func (l *limited) release(client string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if client != "" {
		if l.clients[client]--; l.clients[client] <= 0 {
			delete(l.clients, client)
		}
	}
	l.obs.closed()
}

// warnEvery rate-limits the warning a refusal logs: a flood must not turn
// into a log flood. The metric counts every refusal.
const warnEvery = 10 * time.Second

func (l *limited) warn(msg string, args ...any) {
	l.mu.Lock()
	now := time.Now()
	quiet := now.Sub(l.warned) < warnEvery
	if !quiet {
		l.warned = now
	}
	l.mu.Unlock()
	if !quiet {
		l.log.Warn(msg, append([]any{"listener", l.name}, args...)...)
	}
}

// counted is an admitted connection; closing it frees its place once.
type counted struct {
	net.Conn
	remote  net.Addr
	once    sync.Once
	release func()
}

// RemoteAddr is the peer's address; over a unix socket, where the address
// is empty, it names the peer process so that per-client call limits can
// tell sidecars apart.
func (c *counted) RemoteAddr() net.Addr { return c.remote }

// processAddr is a unix socket peer named by clientOf ("pid:42").
type processAddr string

func (processAddr) Network() string  { return "unix" }
func (a processAddr) String() string { return string(a) }

func (c *counted) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// clientOf names the client of c for the per-client limit: the peer's IP
// address over TCP, the peer process over a unix socket; "" when unknown.
func clientOf(c net.Conn) string {
	switch a := c.RemoteAddr().(type) {
	case *net.TCPAddr:
		return a.IP.String()
	}
	if uc, ok := c.(*net.UnixConn); ok {
		return peerProcess(uc)
	}
	return ""
}
