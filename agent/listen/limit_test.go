package listen

import (
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// serveLimited accepts on a limited listener and greets every admitted
// connection with one byte, so that a client tells admitted (a byte) from
// refused (EOF) without waiting for anything to not happen.
func serveLimited(t *testing.T, lis net.Listener) <-chan net.Conn {
	t.Helper()
	accepted := make(chan net.Conn, 64)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			c.Write([]byte{'k'})
			accepted <- c
		}
	}()
	t.Cleanup(func() { lis.Close() })
	return accepted
}

// dialFrom connects to addr from the loopback address from (127.0.0.x), or
// over the unix socket addr when from is "unix", and reports whether the
// connection was admitted.
func dialFrom(t *testing.T, network, addr, from string) (net.Conn, bool) {
	t.Helper()
	d := net.Dialer{Timeout: 10 * time.Second}
	if network == "tcp" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b := make([]byte, 1)
	_, err = c.Read(b)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		var op *net.OpError
		if !errors.As(err, &op) { // ECONNRESET is a refusal too
			t.Fatalf("read: %v", err)
		}
	}
	return c, err == nil
}

// A flood from one address fills its own share, not the listener; a flood
// from many fills the listener, and a closed connection frees its place.
func TestLimitRefusesOverListenerAndClientLimits(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := Open("127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	lis := Limit(raw, "authz-grpc", Limits{Conns: 4, ConnsPerClient: 2}, m, nil)
	accepted := serveLimited(t, lis)
	addr := raw.Addr().String()

	steps := []struct {
		from   string
		admit  bool
		reason string
	}{
		{"127.0.0.1", true, ""},
		{"127.0.0.1", true, ""},
		{"127.0.0.1", false, ReasonClientFull},
		{"127.0.0.2", true, ""},
		{"127.0.0.2", true, ""},
		{"127.0.0.3", false, ReasonListenerFull},
	}
	for i, s := range steps {
		if _, ok := dialFrom(t, "tcp", addr, s.from); ok != s.admit {
			t.Fatalf("step %d from %s: admitted %v, want %v", i, s.from, ok, s.admit)
		}
	}
	if got := value(m.open.WithLabelValues("authz-grpc")); got != 4 {
		t.Errorf("open connections %v, want 4", got)
	}
	for _, reason := range []string{ReasonClientFull, ReasonListenerFull} {
		if got := value(m.refused.WithLabelValues("authz-grpc", reason)); got != 1 {
			t.Errorf("refused{%s} %v, want 1", reason, got)
		}
	}
	if got := value(m.limit.WithLabelValues("authz-grpc")); got != 4 {
		t.Errorf("limit %v, want 4", got)
	}
	// The server closes one: its place is free again.
	(<-accepted).Close()
	if _, ok := dialFrom(t, "tcp", addr, "127.0.0.3"); !ok {
		t.Fatal("a freed place was not given to the next client")
	}
}

// Over a unix socket a client is a process: this one, by its pid.
func TestLimitCountsUnixClientsByProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	raw, err := Open("unix://"+path, 0)
	if err != nil {
		t.Fatal(err)
	}
	lis := Limit(raw, "xds", Limits{Conns: 8, ConnsPerClient: 1}, nil, nil)
	serveLimited(t, lis)
	if _, ok := dialFrom(t, "unix", path, ""); !ok {
		t.Fatal("first connection refused")
	}
	if _, ok := dialFrom(t, "unix", path, ""); ok {
		t.Fatal("second connection of the same process admitted over ConnsPerClient 1")
	}
}

func TestPlan(t *testing.T) {
	tests := map[string]struct {
		budget   Budget
		n        int
		override Limits
		want     Limits
		wantErr  bool
	}{
		"low limit, three listeners": {budget: Budget{Limit: 256, InUse: 20}, n: 3, want: Limits{Conns: 30, ConnsPerClient: 7}},
		"high limit is capped":       {budget: Budget{Limit: 1 << 20, InUse: 20}, n: 3, want: Limits{Conns: maxConnsPerListener, ConnsPerClient: DefaultConnsPerClient}},
		"too low to serve":           {budget: Budget{Limit: 200, InUse: 20}, n: 3, wantErr: true},
		"operator decides":           {budget: Budget{Limit: 200, InUse: 20}, n: 3, override: Limits{Conns: 10}, want: Limits{Conns: 10, ConnsPerClient: 2}},
		"operator sets per client":   {budget: Budget{Limit: 256, InUse: 20}, n: 3, override: Limits{ConnsPerClient: 3}, want: Limits{Conns: 30, ConnsPerClient: 3}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p, err := NewPlan(tc.budget, tc.n, tc.override)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("NewPlan succeeded: %+v", p.For("xds"))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := p.For("authz-grpc"); got != tc.want {
				t.Errorf("enforcement limits %+v, want %+v", got, tc.want)
			}
			if got := p.For(AdminListener); got != AdminLimits {
				t.Errorf("admin limits %+v, want %+v", got, AdminLimits)
			}
		})
	}
}

func TestFDBudgetReadsTheProcess(t *testing.T) {
	b, err := FDBudget()
	if err != nil {
		t.Fatal(err)
	}
	if b.Limit <= 0 || b.InUse <= 0 || b.InUse > b.Limit {
		t.Fatalf("budget %+v", b)
	}
}

// value reads a gauge or counter.
func value(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	if g := m.GetGauge(); g != nil {
		return g.GetValue()
	}
	return m.GetCounter().GetValue()
}

func prometheusRegistry() *prometheus.Registry { return prometheus.NewRegistry() }
