package agent

import (
	"bufio"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

var metricNameRe = regexp.MustCompile(`tokenwarden_[a-z0-9_]+`)

// scrapeNames returns the metric family names of a /metrics exposition and
// the raw text.
func scrapeNames(t *testing.T, url string) (map[string]bool, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	names := map[string]bool{}
	var raw strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		raw.WriteString(line + "\n")
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			names[strings.Fields(rest)[0]] = true
		}
	}
	return names, []byte(raw.String())
}

// testDashboardAndRulesUseExportedMetrics takes a full agent (ext_authz,
// xDS and, where BPF loads, the kernel side), makes its per-token series
// exist, scrapes /metrics and checks that every tokenwarden_* metric the
// Grafana dashboard and the Prometheus rules name is exported, and that
// promtool accepts the exposition.
func testDashboardAndRulesUseExportedMetrics(t *testing.T, r runningAgent) {
	token, id := issue(t, r, `{"subject":"svc","class":"service","scopes":["orders:read"]}`)
	if st, err := check(http.DefaultClient, r.Listeners["authz-http"], token); err != nil || st != 200 {
		t.Fatalf("check: %d %v", st, err)
	}
	r.agent.metrics.Flush()
	_ = id
	names, raw := scrapeNames(t, "http://"+r.MetricsAddr+"/metrics")

	for _, file := range []string{"../deploy/prometheus/rules.yaml", "../deploy/grafana/tokenwarden-dashboard.json"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range metricNameRe.FindAllString(string(b), -1) {
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
			if strings.HasPrefix(base, "tokenwarden_kernel_") && r.agent.kernel == nil {
				continue // checked where BPF loads (always in CI)
			}
			if strings.HasPrefix(base, "tokenwarden_tls_") && r.agent.tls == nil {
				continue // exported with TLS on: TestTLSMetricsExported
			}
			if !names[base] && !(base == "tokenwarden_kernel_requests_total" && registered(r.agent.Registry(), base)) {
				t.Errorf("%s uses %s, which the agent does not export", file, name)
			}
		}
	}

	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool not found; CI installs it (apt-get install -y prometheus)")
		}
		t.Skip("promtool not found (apt-get install -y prometheus)")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(string(raw))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// registered reports whether reg holds a metric named name, with or without
// series: per-token kernel series appear only with traffic on the attach
// point, which the dummy interface never sees.
func registered(reg *prometheus.Registry, name string) bool {
	descs := make(chan *prometheus.Desc, 256)
	go func() { reg.Describe(descs); close(descs) }()
	found := false
	for d := range descs {
		found = found || strings.Contains(d.String(), `fqName: "`+name+`"`)
	}
	return found
}
