package agent

import (
	"bufio"
	"errors"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/tokenwarden/tokenwarden/buildinfo"
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
	// As `tokenwarden serve` does (cli/serve.go).
	if err := r.agent.Registry().Register(buildinfo.Collector()); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
		t.Fatal(err)
	}
	names, raw := scrapeNames(t, "http://"+r.MetricsAddr+"/metrics")

	for _, file := range []string{"../deploy/prometheus/rules.yaml", "../deploy/grafana/tokenwarden-dashboard.json"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range metricNameRe.FindAllString(string(b), -1) {
			base := histogramBase(name)
			if strings.HasPrefix(base, "tokenwarden_kernel_") && r.agent.kernel == nil {
				continue // checked where BPF loads (always in CI)
			}
			if strings.HasPrefix(base, "tokenwarden_tls_") && r.agent.tls == nil {
				continue // exported with TLS on: TestTLSMetricsExported
			}
			if !names[base] && !registered(r.agent.Registry(), base) {
				t.Errorf("%s uses %s, which the agent does not export", file, name)
			}
		}
	}

	testEveryMetricIsPanelledOrListed(t, r, names)

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

// unpanelledFile lists the metrics deliberately on no dashboard panel.
const unpanelledFile = "../deploy/grafana/unpanelled.yaml"

// testEveryMetricIsPanelledOrListed: every tokenwarden_* family the agent
// exports (scraped, plus those registered without a series yet) is used by
// a dashboard panel or listed in unpanelledFile with a reason; every listed
// one is exported and on no panel, so the list cannot go stale.
func testEveryMetricIsPanelledOrListed(t *testing.T, r runningAgent, scraped map[string]bool) {
	t.Helper()
	dash, err := os.ReadFile("../deploy/grafana/tokenwarden-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	panelled := map[string]bool{}
	for _, name := range metricNameRe.FindAllString(string(dash), -1) {
		panelled[histogramBase(name)] = true
	}
	raw, err := os.ReadFile(unpanelledFile)
	if err != nil {
		t.Fatal(err)
	}
	var unpanelled map[string]string
	if err := yaml.Unmarshal(raw, &unpanelled); err != nil {
		t.Fatalf("%s: %v", unpanelledFile, err)
	}
	exported := maps.Clone(scraped)
	for _, name := range describedNames(r.agent.Registry()) {
		exported[name] = true
	}
	for name := range exported {
		if !strings.HasPrefix(name, "tokenwarden_") {
			continue
		}
		if !panelled[name] && unpanelled[name] == "" {
			t.Errorf("%s is exported but on no dashboard panel and not in %s (add a panel, or a line saying why not)", name, unpanelledFile)
		}
	}
	for name, why := range unpanelled {
		switch {
		case strings.TrimSpace(why) == "":
			t.Errorf("%s: %s has no reason", unpanelledFile, name)
		case panelled[name]:
			t.Errorf("%s: %s is on a panel; drop it from the list", unpanelledFile, name)
		case !exported[name] && !(strings.HasPrefix(name, "tokenwarden_kernel_") && r.agent.kernel == nil):
			t.Errorf("%s: %s is not exported", unpanelledFile, name)
		}
	}
}

func histogramBase(name string) string {
	return strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
}

// describedNames lists the metric names reg describes, with or without
// series.
func describedNames(reg *prometheus.Registry) []string {
	descs := make(chan *prometheus.Desc, 256)
	go func() { reg.Describe(descs); close(descs) }()
	var out []string
	for d := range descs {
		if m := fqNameRe.FindStringSubmatch(d.String()); m != nil {
			out = append(out, m[1])
		}
	}
	return out
}

var fqNameRe = regexp.MustCompile(`fqName: "([^"]+)"`)

// registered reports whether reg holds a metric named name, with or without
// series: per-token kernel series appear only with traffic on the attach
// point, which the dummy interface never sees, and a labelled vector (say,
// introspection answers) only once it has counted something.
func registered(reg *prometheus.Registry, name string) bool {
	descs := make(chan *prometheus.Desc, 256)
	go func() { reg.Describe(descs); close(descs) }()
	found := false
	for d := range descs {
		found = found || strings.Contains(d.String(), `fqName: "`+name+`"`)
	}
	return found
}
