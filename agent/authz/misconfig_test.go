package authz

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tokenwarden/tokenwarden/policy"
)

// syncBuffer is a log sink the server's goroutines write while a test
// reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// records parses the JSON log lines written so far.
func (b *syncBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(b.String()))
	for sc.Scan() {
		var r map[string]any
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

// TestProxyMisconfiguredWarnsWithinBudget attacks the log with a flood of
// incomplete checks, as any pod that reaches the HTTP-mode listener can
// send: every check is denied proxy_misconfigured and counted, but the
// warning is written once per kind and interval, with the count of those
// left out; a token sent with an incomplete check never reaches the log.
func TestProxyMisconfiguredWarnsWithinBudget(t *testing.T) {
	f := newFixture(t)
	tok, _ := f.mint(t, policy.IssueRequest{Subject: "svc", Scopes: []string{"orders:read"}}, fixedNow)
	var clock atomic.Int64
	clock.Store(fixedNow.UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	metrics, err := NewMetrics(prometheus.NewRegistry(), MetricsConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	base := serveHTTP(t, f.server(t, Config{Now: now, Metrics: metrics, Logger: slog.New(slog.NewJSONHandler(&logs, nil))}))

	send := func(headers http.Header) {
		t.Helper()
		req, err := http.NewRequest("GET", base+PathNginx+"/orders", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header = headers
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 403 {
			t.Fatalf("status %d, want 403", resp.StatusCode)
		}
		assertHTTPDenial(t, resp, body, policy.ReasonProxyMisconfigured)
	}
	noMethod := http.Header{"X-Original-Uri": {"/orders/1"}}
	noURI := http.Header{"X-Original-Method": {"GET"}}
	warnings := func(missing string) []map[string]any {
		var out []map[string]any
		for _, r := range logs.records(t) {
			if r["level"] == "WARN" && r["missing"] == missing {
				out = append(out, r)
			}
		}
		return out
	}

	const flood = 50
	for range flood {
		send(noMethod)
	}
	send(noURI)
	if got := testutil.ToFloat64(metrics.checks[policy.ReasonProxyMisconfigured]); got != flood+1 {
		t.Errorf("proxy_misconfigured checks counted %v, want %d", got, flood+1)
	}
	if got := testutil.ToFloat64(metrics.checks[policy.ReasonInternalError]); got != 0 {
		t.Errorf("internal_error checks counted %v, want 0: a misconfigured proxy must not page as an agent fault", got)
	}
	w := warnings("X-Original-Method")
	if len(w) != 1 {
		t.Fatalf("%d warnings for the flood, want 1:\n%s", len(w), logs.String())
	}
	if w[0]["endpoint"] != PathNginx || w[0]["path"] != PathNginx+"/orders" {
		t.Errorf("warning %v: want endpoint %s and path %s/orders", w[0], PathNginx, PathNginx)
	}
	if len(warnings("X-Original-Uri")) != 1 {
		t.Errorf("another kind of fault shares the flood's budget:\n%s", logs.String())
	}

	clock.Add(int64(MisconfiguredWarnEvery))
	send(noMethod)
	w = warnings("X-Original-Method")
	if len(w) != 2 {
		t.Fatalf("%d warnings after the interval, want 2", len(w))
	}
	if got := w[1]["since_last_warning"]; got != float64(flood-1) {
		t.Errorf("since_last_warning = %v, want %d", got, flood-1)
	}
	if strings.Contains(logs.String(), tok) {
		t.Fatal("the log holds the token of a misconfigured check")
	}
}

// TestProxyMisconfiguredPathIsBounded sends a check path of 8 KiB: the
// warning quotes at most maxLoggedPath bytes of it.
func TestProxyMisconfiguredPathIsBounded(t *testing.T) {
	f := newFixture(t)
	var logs syncBuffer
	base := serveHTTP(t, f.server(t, Config{Logger: slog.New(slog.NewJSONHandler(&logs, nil))}))
	resp, err := http.Get(base + "/" + strings.Repeat("a", 8<<10))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	recs := logs.records(t)
	if len(recs) != 1 {
		t.Fatalf("%d records, want 1:\n%s", len(recs), logs.String())
	}
	if p, _ := recs[0]["path"].(string); len(p) != maxLoggedPath || recs[0]["endpoint"] != "unknown" || recs[0]["missing"] != missingEndpoint {
		t.Errorf("record %v: want the path cut to %d bytes, endpoint unknown, missing %s", recs[0], maxLoggedPath, missingEndpoint)
	}
}
