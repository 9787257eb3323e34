package anomaly

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tokenwarden/tokenwarden/policy"
)

const window = 10 * time.Second

var start = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// examplePolicy is the anomaly section of deploy/policy.example.yaml.
func examplePolicy(action string) policy.AnomalySpec {
	return policy.AnomalySpec{
		Window: policy.Duration(window), MaxRPS: 200, SpikeFactor: 8, MaxSourceIPs: 20, Action: action,
	}
}

// traffic is one token's load during one window.
type traffic struct {
	authzRPS  float64 // checks per second through Observe
	kernelRPS float64 // requests per second through AddRequests
	sources   int     // distinct client addresses (at least 1 when authzRPS > 0)
}

func authz(rps float64) traffic  { return traffic{authzRPS: rps, sources: 1} }
func kernel(rps float64) traffic { return traffic{kernelRPS: rps} }

func repeat(n int, tr traffic) []traffic {
	out := make([]traffic, n)
	for i := range out {
		out[i] = tr
	}
	return out
}

func concat(parts ...[]traffic) []traffic {
	var out []traffic
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// harness drives a Detector with an injected clock, one window at a time.
type harness struct {
	t     testing.TB
	d     *Detector
	reg   *prometheus.Registry
	now   time.Time
	fired []fired
	n     int // windows evaluated
}

type fired struct {
	window int // 0-based index of the window that triggered
	Trigger
}

func newHarness(t testing.TB, cfg Config) *harness {
	t.Helper()
	h := &harness{t: t, reg: prometheus.NewRegistry(), now: start}
	cfg.Registerer = h.reg
	cfg.Now = func() time.Time { return h.now }
	cfg.OnTrigger = func(tr Trigger) { h.fired = append(h.fired, fired{window: h.n, Trigger: tr}) }
	d, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.d = d
	return h
}

// play sends one window of traffic per token and evaluates it.
func (h *harness) play(load map[string]traffic) []Trigger {
	for id, tr := range load {
		subject := "sub-" + id
		n := int(math.Round(tr.authzRPS * window.Seconds()))
		for i := range n {
			h.d.Observe(id, subject, sourceAddr(i%max(tr.sources, 1)))
		}
		if k := uint64(math.Round(tr.kernelRPS * window.Seconds())); k > 0 {
			h.d.AddRequests(id, subject, k)
		}
	}
	h.now = h.now.Add(window)
	out := h.d.Evaluate(h.now)
	h.n++
	return out
}

func sourceAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
}

func TestRules(t *testing.T) {
	type want struct {
		window int
		rule   Rule
		action string
	}
	tests := map[string]struct {
		spec    policy.AnomalySpec
		windows []traffic
		want    []want
	}{
		"steady below every limit": {
			spec:    examplePolicy(ActionRevoke),
			windows: repeat(20, authz(150)),
		},
		"burst above max_rps in a whole window": {
			spec:    examplePolicy(ActionRevoke),
			windows: concat(repeat(5, authz(50)), repeat(3, authz(400))),
			want:    []want{{5, RuleMaxRPS, ActionRevoke}},
		},
		// The burst starts with 10% of window 5 left: that window averages
		// 85 rps, so the first whole window of it (6) is the one that fires.
		"burst starting late in a window fires in the next": {
			spec:    examplePolicy(ActionRevoke),
			windows: concat(repeat(5, authz(50)), []traffic{authz(0.9*50 + 0.1*400)}, repeat(3, authz(400))),
			want:    []want{{6, RuleMaxRPS, ActionRevoke}},
		},
		"spike over the token's baseline": {
			spec:    examplePolicy(ActionRevoke),
			windows: concat(repeat(10, authz(10)), []traffic{authz(100)}),
			want:    []want{{10, RuleSpike, ActionRevoke}},
		},
		"rise below spike_factor is normal": {
			spec:    examplePolicy(ActionRevoke),
			windows: concat(repeat(10, authz(10)), repeat(5, authz(70))),
		},
		"spike below the minimum rate is ignored": {
			spec:    examplePolicy(ActionRevoke),
			windows: concat(repeat(10, authz(0.3)), []traffic{authz(4)}),
		},
		"warm-up: no spike before three windows with traffic": {
			spec:    examplePolicy(ActionRevoke),
			windows: concat(repeat(2, authz(10)), []traffic{authz(150)}),
		},
		"warm-up counts only windows with traffic": {
			spec:    examplePolicy(ActionRevoke),
			windows: concat(repeat(2, authz(10)), repeat(5, traffic{}), []traffic{authz(10), authz(150)}),
			want:    []want{{8, RuleSpike, ActionRevoke}},
		},
		"max_rps applies during warm-up": {
			spec:    examplePolicy(ActionRevoke),
			windows: []traffic{authz(300)},
			want:    []want{{0, RuleMaxRPS, ActionRevoke}},
		},
		"many source addresses": {
			spec:    examplePolicy(ActionRevoke),
			windows: concat(repeat(3, authz(20)), []traffic{{authzRPS: 20, sources: 25}}),
			want:    []want{{3, RuleMaxSourceIPs, ActionRevoke}},
		},
		"source addresses at the limit are fine": {
			spec:    examplePolicy(ActionRevoke),
			windows: repeat(5, traffic{authzRPS: 20, sources: 20}),
		},
		"revoke fires once": {
			spec:    examplePolicy(ActionRevoke),
			windows: repeat(12, authz(300)),
			want:    []want{{0, RuleMaxRPS, ActionRevoke}},
		},
		"alert repeats every AlertEvery windows": {
			spec:    examplePolicy(ActionAlert),
			windows: repeat(12, authz(300)),
			want:    []want{{0, RuleMaxRPS, ActionAlert}, {5, RuleMaxRPS, ActionAlert}, {10, RuleMaxRPS, ActionAlert}},
		},
		"rules set to zero are off": {
			spec:    policy.AnomalySpec{Window: policy.Duration(window), Action: ActionRevoke},
			windows: concat(repeat(5, authz(1)), []traffic{{authzRPS: 1000, sources: 50}}),
		},
		"kernel counts alone": {
			spec:    examplePolicy(ActionRevoke),
			windows: concat(repeat(3, kernel(50)), []traffic{kernel(300)}),
			want:    []want{{3, RuleMaxRPS, ActionRevoke}},
		},
		// The attack of a token placed where the kernel's parser does not
		// look (after 8 KiB or 128 header lines, or split across
		// segments): the kernel counts nothing, ext_authz counts it all.
		"token hidden from the kernel is counted by ext_authz": {
			spec:    examplePolicy(ActionRevoke),
			windows: concat(repeat(3, traffic{authzRPS: 50, kernelRPS: 50, sources: 1}), []traffic{{authzRPS: 600, sources: 1}}),
			want:    []want{{3, RuleMaxRPS, ActionRevoke}},
		},
		"traffic bypassing the sidecar is counted by the kernel": {
			spec:    examplePolicy(ActionRevoke),
			windows: concat(repeat(3, traffic{authzRPS: 50, kernelRPS: 50, sources: 1}), []traffic{{authzRPS: 50, kernelRPS: 300, sources: 1}}),
			want:    []want{{3, RuleMaxRPS, ActionRevoke}},
		},
		// Both see the same requests: the rate is the larger count, not
		// the sum, so a token at 150 rps seen by both is not at 300.
		"requests seen by both are not counted twice": {
			spec:    examplePolicy(ActionRevoke),
			windows: repeat(10, traffic{authzRPS: 150, kernelRPS: 150, sources: 1}),
		},
		"kernel counts still take addresses from authz": {
			spec:    examplePolicy(ActionRevoke),
			windows: []traffic{{authzRPS: 3, kernelRPS: 50, sources: 30}},
			want:    []want{{0, RuleMaxSourceIPs, ActionRevoke}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, Config{Policy: tc.spec, AlertEvery: 5})
			for _, tr := range tc.windows {
				h.play(map[string]traffic{"tok": tr})
			}
			var got []want
			for _, f := range h.fired {
				got = append(got, want{f.window, f.Rule, f.Action})
				if f.TokenID != "tok" || f.Subject != "sub-tok" || f.Window != window || !f.At.Equal(start.Add(time.Duration(f.window+1)*window)) {
					t.Errorf("trigger %+v: wrong token, subject, window or time", f.Trigger)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("triggers = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestSteadyNoiseNeverTriggers plays 200 windows of noisy but steady traffic
// (uniform 50±15 rps, a fixed seed) on several tokens from a few clients:
// no rule may fire, however tight the spike factor a sane operator sets.
func TestSteadyNoiseNeverTriggers(t *testing.T) {
	for _, factor := range []float64{8, 2} {
		t.Run(fmt.Sprintf("spike_factor=%v", factor), func(t *testing.T) {
			spec := examplePolicy(ActionRevoke)
			spec.SpikeFactor = factor
			h := newHarness(t, Config{Policy: spec})
			rng := rand.New(rand.NewPCG(1, 2))
			for range 200 {
				load := map[string]traffic{}
				for tok := range 3 {
					load[fmt.Sprint("tok-", tok)] = traffic{authzRPS: 50 + (rng.Float64()*2-1)*15, sources: 1 + tok*4}
				}
				h.play(load)
			}
			if len(h.fired) != 0 {
				t.Fatalf("steady traffic triggered %d times, first %+v", len(h.fired), h.fired[0])
			}
			mean, sd, n, ok := h.d.Baseline("tok-0")
			if !ok || n != 200 || math.Abs(mean-50) > 10 || sd < 2 || sd > 20 {
				t.Errorf("baseline of tok-0 = %.1f ± %.1f over %d windows (tracked %v), want about 50 ± 8.7 over 200", mean, sd, n, ok)
			}
		})
	}
}

func TestSpikeTriggerCarriesBaseline(t *testing.T) {
	h := newHarness(t, Config{Policy: examplePolicy(ActionAlert)})
	for range 10 {
		h.play(map[string]traffic{"tok": authz(10)})
	}
	got := h.play(map[string]traffic{"tok": authz(120)})
	if len(got) != 1 {
		t.Fatalf("got %d triggers, want 1", len(got))
	}
	tr := got[0]
	if tr.Rule != RuleSpike || tr.Rate != 120 || math.Abs(tr.Baseline-10) > 1e-9 || tr.StdDev != 0 || tr.Sources != 1 {
		t.Errorf("trigger = %+v, want spike at 120 rps over a baseline of exactly 10 ± 0 from 1 source", tr)
	}
}

func TestRateUsesElapsedTime(t *testing.T) {
	// A late tick must not inflate the rate: 3000 requests over 20s is 150 rps.
	h := newHarness(t, Config{Policy: examplePolicy(ActionRevoke)})
	for range 3000 {
		h.d.Observe("tok", "sub", sourceAddr(1))
	}
	if got := h.d.Evaluate(start.Add(2 * window)); len(got) != 0 {
		t.Fatalf("triggered %+v; 150 rps is under max_rps", got)
	}
}

func TestSetPolicy(t *testing.T) {
	h := newHarness(t, Config{Policy: examplePolicy(ActionAlert)})
	if got := h.play(map[string]traffic{"tok": authz(300)}); len(got) != 1 || got[0].Action != ActionAlert {
		t.Fatalf("under alert: %+v", got)
	}
	spec := examplePolicy(ActionRevoke)
	spec.MaxRPS = 500
	h.d.SetPolicy(spec)
	if got := h.play(map[string]traffic{"other": authz(300)}); len(got) != 0 {
		t.Fatalf("300 rps under a 500 ceiling triggered: %+v", got)
	}
	// "tok" was alerted on a window ago; the alert's quiet period does not
	// hold back a revocation.
	got := h.play(map[string]traffic{"other": authz(600), "tok": authz(600)})
	if len(got) != 2 || got[0].Action != ActionRevoke || got[1].Action != ActionRevoke {
		t.Fatalf("after reload to revoke: %+v", got)
	}
}

func TestIdleTokensAreForgotten(t *testing.T) {
	h := newHarness(t, Config{Policy: examplePolicy(ActionRevoke), IdleWindows: 4})
	h.play(map[string]traffic{"a": authz(1), "b": authz(1)})
	if got := gauge(t, h.reg, "tokenwarden_anomaly_tracked_tokens"); got != 2 {
		t.Fatalf("tracked = %v, want 2", got)
	}
	for range 4 {
		h.play(map[string]traffic{"a": authz(1)})
	}
	if got := gauge(t, h.reg, "tokenwarden_anomaly_tracked_tokens"); got != 1 {
		t.Fatalf("tracked after b idled 4 windows = %v, want 1", got)
	}
	if _, _, _, ok := h.d.Baseline("b"); ok {
		t.Error("b is still tracked")
	}
}

func TestMaxTokens(t *testing.T) {
	h := newHarness(t, Config{Policy: examplePolicy(ActionRevoke), MaxTokens: 3})
	for i := range 10 {
		h.d.Observe(fmt.Sprint("tok-", i), "sub", sourceAddr(1))
	}
	if got := h.d.Tracked(); got != 3 {
		t.Fatalf("tracked = %d, want the cap of 3", got)
	}
}

// TestMaxTokensUnderConcurrentFirstSightings attacks the cap with many
// goroutines seeing new tokens at once: checking the count, then storing,
// then counting let every racing first sighting through. Neither the
// count nor the tokens actually held may exceed the cap.
func TestMaxTokensUnderConcurrentFirstSightings(t *testing.T) {
	const limit = 5
	h := newHarness(t, Config{Policy: examplePolicy(ActionRevoke), MaxTokens: limit})
	var wg sync.WaitGroup
	start := make(chan struct{})
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := range 200 {
				h.d.Observe(fmt.Sprint("tok-", g, "-", i), "sub", sourceAddr(1))
			}
		}()
	}
	close(start)
	wg.Wait()
	held := 0
	h.d.tokens.Range(func(any, any) bool { held++; return true })
	if got := h.d.Tracked(); got != limit || held != limit {
		t.Fatalf("tracked = %d, held = %d; want the cap of %d for both", got, held, limit)
	}
}

func TestAnomalyMetric(t *testing.T) {
	h := newHarness(t, Config{Policy: examplePolicy(ActionRevoke)})
	// Every (rule, action) series exists before the first anomaly.
	if got := countSeries(t, h.reg, "tokenwarden_anomalies_total"); got != 6 {
		t.Fatalf("%d anomaly series pre-registered, want 6", got)
	}
	h.play(map[string]traffic{"a": authz(300), "b": {authzRPS: 10, sources: 30}})
	if got := counter(t, h.reg, "tokenwarden_anomalies_total", "rule", "max_rps", "action", "revoke"); got != 1 {
		t.Errorf("max_rps/revoke = %v, want 1", got)
	}
	if got := counter(t, h.reg, "tokenwarden_anomalies_total", "rule", "max_source_ips", "action", "revoke"); got != 1 {
		t.Errorf("max_source_ips/revoke = %v, want 1", got)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for name, cfg := range map[string]Config{
		"alpha above 1": {Alpha: 1.5},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := New(cfg); err == nil {
				t.Fatal("New accepted it")
			}
		})
	}
}

// TestConcurrentCounting observes from many goroutines while windows are
// evaluated: every request lands in exactly one window. A ceiling near zero
// with AlertEvery 1 makes every active token report its count each window.
func TestConcurrentCounting(t *testing.T) {
	var counted uint64 // written by OnTrigger, which runs on the evaluating goroutine
	spec := examplePolicy(ActionAlert)
	spec.MaxRPS = 1e-9
	d, err := New(Config{Policy: spec, AlertEvery: 1, OnTrigger: func(tr Trigger) {
		counted += uint64(math.Round(tr.Rate * window.Seconds()))
	}})
	if err != nil {
		t.Fatal(err)
	}
	const workers, perWorker = 8, 5000
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				d.Observe(fmt.Sprint("tok-", i%7), "sub", sourceAddr(w*perWorker+i))
			}
		})
	}
	now := start
	evaluated := make(chan struct{})
	go func() {
		defer close(evaluated)
		for range 50 {
			now = now.Add(window)
			d.Evaluate(now)
			time.Sleep(100 * time.Microsecond)
		}
	}()
	wg.Wait()
	<-evaluated
	d.Evaluate(now.Add(window))
	if counted != workers*perWorker {
		t.Fatalf("windows counted %d requests, want %d", counted, workers*perWorker)
	}
}

func TestRunEvaluatesEachWindow(t *testing.T) {
	var mu sync.Mutex
	var got []Trigger
	spec := examplePolicy(ActionAlert)
	spec.Window = policy.Duration(20 * time.Millisecond)
	d, err := New(Config{Policy: spec, OnTrigger: func(tr Trigger) {
		mu.Lock()
		got = append(got, tr)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	for range 1000 {
		d.Observe("tok", "sub", sourceAddr(1)) // 1000 in under a window is far above 200 rps
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not evaluate within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
}

func BenchmarkObserve(b *testing.B) {
	for _, bc := range []struct {
		name    string
		sources int
	}{{"one-client", 1}, {"many-clients", 64}} {
		b.Run(bc.name, func(b *testing.B) {
			d, err := New(Config{Policy: examplePolicy(ActionRevoke)})
			if err != nil {
				b.Fatal(err)
			}
			ids := make([]string, 1024)
			for i := range ids {
				ids[i] = fmt.Sprint("tok-", i)
				d.Observe(ids[i], "sub", sourceAddr(0))
			}
			addrs := make([]netip.Addr, bc.sources)
			for i := range addrs {
				addrs[i] = sourceAddr(i)
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					d.Observe(ids[i%len(ids)], "sub", addrs[i%len(addrs)])
					i++
				}
			})
		})
	}
}

// gather returns the metric family called name.
func gather(t *testing.T, reg *prometheus.Registry, name string) *dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf
		}
	}
	t.Fatalf("metric %s not registered", name)
	return nil
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	return gather(t, reg, name).GetMetric()[0].GetGauge().GetValue()
}

func countSeries(t *testing.T, reg *prometheus.Registry, name string) int {
	t.Helper()
	return len(gather(t, reg, name).GetMetric())
}

// counter returns the series of name whose labels include the given pairs.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	for _, m := range gather(t, reg, name).GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			match = match && have[labels[i]] == labels[i+1]
		}
		if match {
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no %s series with %v", name, labels)
	return 0
}
