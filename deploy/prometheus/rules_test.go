package prometheus_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const (
	rulesFile     = "rules.yaml"
	ruleTestsFile = "rules.test.yaml"
	dashboardFile = "../grafana/tokenwarden-dashboard.json"
)

// exported lists the metric names the agent exports that the dashboard and
// the alerting rules may use (histograms by their base name). The agent's
// own test checks a live /metrics against the same two files, so a metric
// renamed in code breaks a test instead of silently emptying a panel.
var exported = []string{
	"tokenwarden_build_info",
	"tokenwarden_policy_reload_total",
	"tokenwarden_policy_generation",
	"tokenwarden_authz_cache_hits_total",
	"tokenwarden_authz_cache_misses_total",
	"tokenwarden_token_cache_entries",
	"tokenwarden_introspect_answers_total",
	"tokenwarden_rotation_leader",
	"tokenwarden_anomaly_tracked_tokens",
	"tokenwarden_xds_unknown_nodes_total",
	"tokenwarden_kernel_revoked_hashes",
	"tokenwarden_kernel_revoked_syncs_total",
	"tokenwarden_kernel_packets_total",
	"tokenwarden_kernel_parsed_requests_total",
	"tokenwarden_kernel_tokens_total",
	"tokenwarden_kernel_tokens_truncated_total",
	"tokenwarden_kernel_unknown_token_requests_total",
	"tokenwarden_kernel_events_lost_total",
	"tokenwarden_listener_connections",
	"tokenwarden_listener_connection_limit",
	"tokenwarden_listener_refused_total",
	"tokenwarden_authz_checks_total",
	"tokenwarden_authz_check_duration_seconds",
	"tokenwarden_authz_token_requests_total",
	"tokenwarden_kernel_requests_total",
	"tokenwarden_kernel_drops_total",
	"tokenwarden_kernel_attached",
	"tokenwarden_kernel_revoked_overflow",
	"tokenwarden_kernel_revoked_sync_errors_total",
	"tokenwarden_anomalies_total",
	"tokenwarden_revocation_rules",
	"tokenwarden_store_staleness_seconds",
	"tokenwarden_rotations_total",
	"tokenwarden_rotation_deliveries_total",
	"tokenwarden_tokens_expiring",
	"tokenwarden_xds_connected_nodes",
	"tokenwarden_xds_nacks_total",
	"tokenwarden_audit_records_lost_total",
	"tokenwarden_audit_denies_suppressed_total",
	"tokenwarden_audit_fields_rewritten_total",
	"tokenwarden_audit_files_removed_total",
	"tokenwarden_audit_gaps_total",
	"tokenwarden_audit_head_errors_total",
	"tokenwarden_audit_head_recorded_seq",
	"tokenwarden_audit_subscribers_cut_off_total",
	"tokenwarden_xds_refused_streams_total",
	"tokenwarden_tls_certificate_expiry_timestamp_seconds",
	"tokenwarden_tls_reloads_total",
}

var (
	metricName      = regexp.MustCompile(`tokenwarden_[a-z0-9_]+`)
	histogramSuffix = regexp.MustCompile(`_(bucket|sum|count)$`)
)

// promtool finds promtool (Debian package prometheus). In CI a missing
// promtool fails the test; elsewhere the test is skipped.
func promtool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool not found; CI must install it (apt-get install -y prometheus)")
		}
		t.Skip("promtool not found; install it (apt-get install -y prometheus) to check the rules")
	}
	return path
}

func TestPromtoolCheckRules(t *testing.T) {
	out, err := exec.Command(promtool(t), "check", "rules", rulesFile).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules %s: %v\n%s", rulesFile, err, out)
	}
}

// TestPromtoolRuleTests runs the alert unit tests: each alert fires on
// series shaped like the agent's, and stays quiet where it should.
func TestPromtoolRuleTests(t *testing.T) {
	out, err := exec.Command(promtool(t), "test", "rules", ruleTestsFile).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules %s: %v\n%s", ruleTestsFile, err, out)
	}
}

// TestMetricNamesAreExported checks that every tokenwarden_* name in a
// PromQL expression of the rules or the dashboard is a metric the agent
// exports.
func TestMetricNamesAreExported(t *testing.T) {
	exprs := map[string][]string{
		rulesFile:     ruleExprs(t),
		dashboardFile: dashboardExprs(t),
	}
	for file, list := range exprs {
		t.Run(file, func(t *testing.T) {
			if len(list) == 0 {
				t.Fatal("no PromQL expressions found")
			}
			for _, expr := range list {
				for _, name := range metricName.FindAllString(expr, -1) {
					base := histogramSuffix.ReplaceAllString(name, "")
					if !slices.Contains(exported, base) && !slices.Contains(exported, name) {
						t.Errorf("%s uses %s, which the agent does not export (expression: %s)", file, name, oneLine(expr))
					}
				}
			}
		})
	}
}

// jobMatcher is a PromQL matcher on the job label.
var jobMatcher = regexp.MustCompile(`\bjob\s*(=|!=|=~|!~)\s*"[^"]*"`)

// TestJobIsATemplateVariable: the dashboard selects every series by the
// $job variable, so it works under any scrape job name; the rules name a
// job only where nothing else picks the agent's series out (up, in
// TokenwardenAgentDown), and there the chart substitutes monitoring.job
// (deploy/helm's TestMonitoring).
func TestJobIsATemplateVariable(t *testing.T) {
	for _, expr := range dashboardExprs(t) {
		if strings.HasPrefix(expr, "label_values(tokenwarden_authz_checks_total, job)") {
			continue // the $job variable itself
		}
		m := jobMatcher.FindAllString(expr, -1)
		if len(m) == 0 || slices.ContainsFunc(m, func(s string) bool { return s != `job=~"$job"` }) {
			t.Errorf("%s: expression does not select job=~\"$job\" (only): %s", dashboardFile, oneLine(expr))
		}
	}
	data, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			m := jobMatcher.FindAllString(r.Expr, -1)
			if r.Alert == "TokenwardenAgentDown" {
				if len(m) != 1 || m[0] != `job="tokenwarden"` {
					t.Errorf("%s: %s must select up{job=\"tokenwarden\"}, the string the chart replaces: %s", rulesFile, r.Alert, oneLine(r.Expr))
				}
				continue
			}
			if len(m) > 0 {
				t.Errorf("%s: %s matches a job (%v); select by metric name only", rulesFile, r.Alert, m)
			}
		}
	}
}

func ruleExprs(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert  string `yaml:"alert"`
				Record string `yaml:"record"`
				Expr   string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("parse %s: %v", rulesFile, err)
	}
	var out []string
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			if r.Expr == "" {
				t.Errorf("%s: rule %s%s in group %s has no expr", rulesFile, r.Alert, r.Record, g.Name)
			}
			out = append(out, r.Expr)
		}
	}
	return out
}

// dashboardExprs returns the PromQL of every panel target and every query
// variable of the dashboard.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("parse %s: %v", dashboardFile, err)
	}
	var out []string
	ids := map[int]bool{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if ids[p.ID] {
				t.Errorf("%s: panel id %d used twice", dashboardFile, p.ID)
			}
			ids[p.ID] = true
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no queries", dashboardFile, p.Title)
			}
			for _, tg := range p.Targets {
				if tg.Expr == "" {
					t.Errorf("%s: panel %q has a target without expr", dashboardFile, p.Title)
				}
				out = append(out, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		// Grafana stores a variable's query as a string or as {"query": ...}.
		var q struct {
			Query string `json:"query"`
		}
		var s string
		switch {
		case json.Unmarshal(v.Query, &s) == nil:
			out = append(out, s)
		case json.Unmarshal(v.Query, &q) == nil:
			out = append(out, q.Query)
		default:
			t.Errorf("%s: variable %s: unreadable query %s", dashboardFile, v.Name, v.Query)
		}
	}
	return out
}

type panel struct {
	ID      int    `json:"id"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's panels
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
