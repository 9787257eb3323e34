package listen

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
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
