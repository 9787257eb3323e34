package authz

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"reflect"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/tokenwarden/tokenwarden/agent/revocation"
	"github.com/tokenwarden/tokenwarden/agent/usage"
	"github.com/tokenwarden/tokenwarden/policy"
)

func newRegistry() *prometheus.Registry { return prometheus.NewPedanticRegistry() }

// metricsFixture is a server whose Decider counts cache hits, with every
// authz metric and the revocation gauge on one registry.
func metricsFixture(t *testing.T) (*fixture, *Server, *Metrics, *prometheus.Registry) {
	t.Helper()
	f := newFixture(t)
	reg := newRegistry()
	m, err := NewMetrics(reg, MetricsConfig{TopTokens: 2, TokenLabels: usage.LabelsIDSubject})
	if err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(revocation.RulesGauge(f.set))
	f.decider = policy.NewDecider(policy.DeciderConfig{
		Env: "prod", Policy: f.policy, Keys: f.decider.Keys(), Cache: f.cache, CacheStats: m, Revocations: f.set,
	})
	return f, f.server(t, Config{Metrics: m}), m, reg
}

func gather(t *testing.T, reg *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

func TestMetrics(t *testing.T) {
	f, s, m, reg := metricsFixture(t)
	busy, busyClaims := f.mint(t, policy.IssueRequest{Subject: "busy", Scopes: []string{"orders:read"}}, fixedNow)
	quiet, _ := f.mint(t, policy.IssueRequest{Subject: "quiet", Scopes: []string{"orders:read"}}, fixedNow)
	rare, _ := f.mint(t, policy.IssueRequest{Subject: "rare", Scopes: []string{"orders:read"}}, fixedNow)
	f.revoke("aaaaaaaaaaaaaaaaaaaaaaaaaa", fixedNow)
	check := func(tok string, method string) {
		if _, err := s.Check(context.Background(), checkRequest(method, "orders", "/orders/1", bearer(tok))); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		check(busy, "GET")
	}
	check(busy, "POST") // denied, still a request of the token
	for range 3 {
		check(quiet, "GET")
	}
	check(rare, "GET")
	check("", "GET")
	m.Flush()

	mfs := gather(t, reg)
	counts := map[string]float64{}
	for _, mm := range mfs["tokenwarden_authz_checks_total"].GetMetric() {
		l := labels(mm)
		counts[l["decision"]+"/"+l["reason"]] = mm.GetCounter().GetValue()
	}
	if len(counts) != len(policy.Reasons) {
		t.Errorf("%d check series, want every reason pre-registered (%d)", len(counts), len(policy.Reasons))
	}
	for k, want := range map[string]float64{"allow/allowed": 9, "deny/insufficient_scope": 1, "deny/missing_token": 1, "deny/revoked": 0} {
		if counts[k] != want {
			t.Errorf("checks{%s} = %v, want %v", k, counts[k], want)
		}
	}
	if got := mfs["tokenwarden_authz_check_duration_seconds"].GetMetric()[0].GetHistogram().GetSampleCount(); got != 11 {
		t.Errorf("duration samples = %d, want 11", got)
	}
	hits := mfs["tokenwarden_authz_cache_hits_total"].GetMetric()[0].GetCounter().GetValue()
	misses := mfs["tokenwarden_authz_cache_misses_total"].GetMetric()[0].GetCounter().GetValue()
	if misses != 3 || hits != 7 {
		t.Errorf("cache hits %v misses %v, want 7 and 3 (one miss per token)", hits, misses)
	}
	if got := mfs["tokenwarden_revocation_rules"].GetMetric()[0].GetGauge().GetValue(); got != 1 {
		t.Errorf("revocation rules = %v, want 1", got)
	}
	perToken := map[string]float64{}
	for _, mm := range mfs["tokenwarden_authz_token_requests_total"].GetMetric() {
		l := labels(mm)
		perToken[l["subject"]] = mm.GetCounter().GetValue()
		if l["subject"] == "busy" && l["token_id"] != busyClaims.ID {
			t.Errorf("busy's token_id = %q, want %q", l["token_id"], busyClaims.ID)
		}
	}
	if len(perToken) != 2 || perToken["busy"] != 6 || perToken["quiet"] != 3 {
		t.Errorf("per-token series = %v, want the top 2: busy 6, quiet 3", perToken)
	}

	problems, err := promlint.NewWithMetricFamilies(mfsList(mfs)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	promtoolCheck(t, reg)
}

func mfsList(m map[string]*dto.MetricFamily) []*dto.MetricFamily {
	var out []*dto.MetricFamily
	for _, mf := range m {
		out = append(out, mf)
	}
	return out
}

// promtoolCheck runs the registry's exposition through `promtool check
// metrics`. Without promtool it skips, unless CI=true.
func promtoolCheck(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool not found (apt-get install -y prometheus); required when CI=true")
		}
		t.Skip("promtool not found (apt-get install -y prometheus); skipping the exposition check")
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	enc := expfmt.NewEncoder(&text, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = &text
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

func TestMetricsRegisterTwiceFails(t *testing.T) {
	reg := newRegistry()
	if _, err := NewMetrics(reg, MetricsConfig{}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewMetrics(reg, MetricsConfig{}); err == nil {
		t.Fatal("second registration on one registry succeeded")
	}
}

// TestTokenLabels: per-token series say which tokens are busy and whose
// they are to whoever scrapes /metrics. By default (none) there are none;
// id leaves the subject out; id+subject has both. An unknown mode is an
// error, not a silent default.
func TestTokenLabels(t *testing.T) {
	tests := map[usage.TokenLabels][]map[string]string{
		"":                    nil,
		usage.LabelsNone:      nil,
		usage.LabelsID:        {{"token_id": "tok1", "subject": ""}}, // an empty label is no label to Prometheus
		usage.LabelsIDSubject: {{"token_id": "tok1", "subject": "alice"}},
	}
	for mode, want := range tests {
		t.Run(string(mode), func(t *testing.T) {
			reg := prometheus.NewRegistry()
			m, err := NewMetrics(reg, MetricsConfig{TokenLabels: mode})
			if err != nil {
				t.Fatal(err)
			}
			m.observe(&policy.Decision{Allow: true, Reason: policy.ReasonAllowed, TokenID: "tok1", Subject: "alice"}, time.Microsecond)
			m.Flush()
			var got []map[string]string
			for _, mm := range gather(t, reg)["tokenwarden_authz_token_requests_total"].GetMetric() {
				got = append(got, labels(mm))
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("per-token series %v, want %v", got, want)
			}
		})
	}
	if _, err := NewMetrics(prometheus.NewRegistry(), MetricsConfig{TokenLabels: "subject"}); err == nil {
		t.Error("NewMetrics accepted token labels \"subject\"")
	}
}
