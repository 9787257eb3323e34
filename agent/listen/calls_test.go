package listen

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// Calls that stay open (health Watch streams here, half-sent checks in
// the wild) fill a client's share, then the server's; the deadline ends
// them all and frees their places.
func TestCallGateBoundsCallsInFlight(t *testing.T) {
	m, err := NewMetrics(prometheusRegistry())
	if err != nil {
		t.Fatal(err)
	}
	gate := NewCallGate("authz-grpc", CallLimits{InFlight: 3, PerClient: 2, Deadline: 3 * time.Second}, m, nil)
	gs := grpc.NewServer(gate.ServerOption())
	healthpb.RegisterHealthServer(gs, health.NewServer())
	lis, err := Open("127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)

	client := func(from string) healthpb.HealthClient {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return healthpb.NewHealthClient(cc)
	}
	a, b := client("127.0.0.1"), client("127.0.0.2")
	// watch opens a stream and returns the code of its first answer: OK
	// (the serving status) when admitted.
	watch := func(c healthpb.HealthClient) (healthpb.Health_WatchClient, codes.Code) {
		w, err := c.Watch(context.Background(), &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = w.Recv()
		return w, status.Code(err)
	}
	steps := []struct {
		client healthpb.HealthClient
		want   codes.Code
		reason string
	}{
		{a, codes.OK, ""},
		{a, codes.OK, ""},
		{a, codes.ResourceExhausted, ReasonClientCallsFull},
		{b, codes.OK, ""},
		{b, codes.ResourceExhausted, ReasonCallsFull},
	}
	start := time.Now()
	var open []healthpb.Health_WatchClient
	for i, s := range steps {
		w, code := watch(s.client)
		if code != s.want {
			t.Fatalf("step %d: %v, want %v", i, code, s.want)
		}
		if code == codes.OK {
			open = append(open, w)
		}
	}
	for _, reason := range []string{ReasonCallsFull, ReasonClientCallsFull} {
		if got := value(m.refused.WithLabelValues("authz-grpc", reason)); got != 1 {
			t.Errorf("refused{%s} %v, want 1", reason, got)
		}
	}
	for _, w := range open {
		// The health server answers its ended context with CANCELLED.
		if _, err := w.Recv(); status.Code(err) != codes.DeadlineExceeded && status.Code(err) != codes.Canceled {
			t.Errorf("held call ended with %v, want it ended by the deadline", err)
		}
	}
	if held := time.Since(start); held < 3*time.Second-100*time.Millisecond {
		t.Errorf("calls ended after %v, before their deadline", held)
	}
	for deadline := time.Now().Add(30 * time.Second); gate.InFlight() > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d calls in flight after the deadline", gate.InFlight())
		}
	}
	if _, code := watch(a); code != codes.OK {
		t.Fatalf("after the deadline: %v, want OK", code)
	}
}

// A flood of calls from ever new addresses (an IPv6 /64 has plenty) must
// not grow the gate without bound, and sweeping idle clients out must not
// let a client with calls in flight past its share.
func TestCallGateSweepBoundsClients(t *testing.T) {
	g := NewCallGate("test", CallLimits{InFlight: 4, PerClient: 2}, nil, nil)
	victim := clientKey{ip: netip.MustParseAddr("2001:db8::1")}
	for range 2 {
		if r := g.admit(g.client(victim)); r != "" {
			t.Fatalf("victim's call refused: %s", r)
		}
	}
	for i := range 10_000 {
		var b [16]byte
		b[0], b[1], b[14], b[15] = 0x20, 0x01, byte(i>>8), byte(i)
		c := g.client(clientKey{ip: netip.AddrFrom16(b)})
		if r := g.admit(c); r != "" {
			t.Fatalf("call %d refused: %s", i, r)
		}
		c.done()
	}
	g.mu.RLock()
	n := len(g.clients)
	g.mu.RUnlock()
	if n > g.sweepAt+g.limits.InFlight {
		t.Fatalf("%d clients held after a flood of 10,000 addresses; want at most %d", n, g.sweepAt+g.limits.InFlight)
	}
	if r := g.admit(g.client(victim)); r != ReasonClientCallsFull {
		t.Fatalf("victim's third call: %q, want %s (its count survived the sweeps)", r, ReasonClientCallsFull)
	}
	if got := g.InFlight(); got != 2 {
		t.Fatalf("in flight %d, want 2", got)
	}
}

// A swept entry is dead: a call that found it before the sweep looks the
// client up again and is counted on the live entry.
func TestCallGateSweptEntryIsRecounted(t *testing.T) {
	g := NewCallGate("test", CallLimits{InFlight: 4, PerClient: 1}, nil, nil)
	key := clientKey{ip: netip.MustParseAddr("192.0.2.7")}
	stale := g.client(key)
	g.mu.Lock()
	g.sweepAt = 0
	g.mu.Unlock()
	g.client(clientKey{ip: netip.MustParseAddr("192.0.2.8")}) // sweeps key out
	if r := g.admit(stale); r != reasonSwept {
		t.Fatalf("admit on a swept entry: %q, want %q", r, reasonSwept)
	}
	live := g.client(key)
	if live == stale {
		t.Fatal("the swept entry is still in the map")
	}
	if r := g.admit(live); r != "" {
		t.Fatalf("admit on the live entry: %q", r)
	}
	if r := g.admit(g.client(key)); r != ReasonClientCallsFull {
		t.Fatalf("second call: %q, want %s", r, ReasonClientCallsFull)
	}
	if got := g.InFlight(); got != 1 {
		t.Fatalf("in flight %d, want 1", got)
	}
}

// A client that asks for a deadline longer than the gate's still has its
// call ended at the gate's: the cheap path (no timer of ours) is taken
// only when the client's own deadline is at least as near.
func TestCallGateDeadlineCapsLongerClientDeadline(t *testing.T) {
	gate := NewCallGate("authz-grpc", CallLimits{InFlight: 8, Deadline: 300 * time.Millisecond}, nil, nil)
	gs := grpc.NewServer(gate.ServerOption())
	healthpb.RegisterHealthServer(gs, health.NewServer())
	lis, err := Open("127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	for _, clientDeadline := range []time.Duration{time.Hour, 100 * time.Millisecond} {
		ctx, cancel := context.WithTimeout(context.Background(), clientDeadline)
		start := time.Now()
		w, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Recv(); err != nil {
			t.Fatalf("client deadline %v: first answer: %v", clientDeadline, err)
		}
		_, err = w.Recv() // the stream stays open until a deadline ends it
		cancel()
		if c := status.Code(err); c != codes.DeadlineExceeded && c != codes.Canceled {
			t.Fatalf("client deadline %v: stream ended with %v, want the deadline to end it", clientDeadline, err)
		}
		if took := time.Since(start); took > 30*time.Second {
			t.Fatalf("client deadline %v: stream lasted %v", clientDeadline, took)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for gate.InFlight() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d calls still counted after both streams ended", gate.InFlight())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkCallGateTap is the gate's cost per call: look-up, counts, the
// deadline check and the release when the call's context ends. The call
// context carries a client deadline, as Envoy's checks do.
func BenchmarkCallGateTap(b *testing.B) {
	// Releases run when the context ends, on their own goroutine, and may
	// lag behind the loop: no limit is reached here.
	g := NewCallGate("bench", CallLimits{InFlight: 1 << 30, Deadline: 5 * time.Second}, nil, nil)
	base := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 40000}})
	conn, stop := context.WithCancel(base)
	defer stop()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ctx, cancel := context.WithTimeout(conn, 250*time.Millisecond)
			if _, err := g.tap(ctx, &tap.Info{}); err != nil {
				b.Fatal(err)
			}
			cancel()
		}
	})
}
