package agent

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMetricsLeastExposure: by default /metrics names no token (no
// per-token series), and with MetricsBearerFile a scrape without the token
// is refused 401 and sees nothing, while Prometheus with it sees every
// family.
func TestMetricsLeastExposure(t *testing.T) {
	const bearer = "metrics-scrape-token-0123456789"
	path := filepath.Join(t.TempDir(), "metrics.token")
	if err := os.WriteFile(path, []byte(bearer+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := startAgentWith(t, Config{AuthzHTTPAddr: "127.0.0.1:0", MetricsBearerFile: path})
	token, id := issue(t, r, `{"subject":"svc","class":"service","scopes":["orders:read"]}`)
	if st, err := check(http.DefaultClient, r.Listeners["authz-http"], token); err != nil || st != 200 {
		t.Fatalf("check: %d %v", st, err)
	}
	r.agent.metrics.Flush()

	scrape := func(auth string) (int, string) {
		t.Helper()
		req, err := http.NewRequest("GET", "http://"+r.MetricsAddr+"/metrics", nil)
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, auth := range []string{"", "Bearer wrong-token-0123456789abc", "Basic " + bearer} {
		if st, body := scrape(auth); st != 401 || strings.Contains(body, "tokenwarden_") {
			t.Errorf("scrape with %q: %d %q, want 401 and no metrics", auth, st, body)
		}
	}
	st, body := scrape("Bearer " + bearer)
	if st != 200 || !strings.Contains(body, "tokenwarden_authz_checks_total") {
		t.Fatalf("scrape with the token: %d", st)
	}
	if strings.Contains(body, id) || strings.Contains(body, `subject="svc"`) || strings.Contains(body, "tokenwarden_authz_token_requests_total{") {
		t.Error("/metrics names a token by default")
	}
}
