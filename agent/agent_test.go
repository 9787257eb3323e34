package agent

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/kernel"

	"github.com/tokenwarden/tokenwarden/policy"
)

// startAgent runs an agent on loopback ports in a temp data dir; it stops
// when the test ends.
func startAgent(t *testing.T, dataDir string) Ready {
	t.Helper()
	r := startAgentOnce(t, dataDir)
	t.Cleanup(r.stop)
	return r.Ready
}

func call(t *testing.T, method, url, token, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func readToken(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", path, st.Mode().Perm())
	}
	return strings.TrimSpace(string(b))
}

func TestAdminAuthentication(t *testing.T) {
	r := startAgent(t, t.TempDir())
	base := "http://" + r.AdminAddr
	admin := readToken(t, r.AdminTokenFile)

	status, out := call(t, "POST", base+"/v1/tokens", admin, `{"subject":"svc","class":"service","scopes":["orders:read"]}`)
	if status != http.StatusCreated {
		t.Fatalf("issue: %d %v", status, out)
	}
	service := out["token"].(string)
	status, out = call(t, "POST", base+"/v1/tokens", admin, `{"subject":"ops","class":"admin"}`)
	if status != http.StatusCreated {
		t.Fatalf("issue admin: %d %v", status, out)
	}
	revokedAdmin, revokedID := out["token"].(string), out["id"].(string)
	if status, out := call(t, "POST", base+"/v1/tokens/"+revokedID+"/revoke", admin, `{"reason":"test"}`); status != http.StatusCreated {
		t.Fatalf("revoke: %d %v", status, out)
	}

	tests := map[string]struct {
		token      string
		wantStatus int
		wantError  string
	}{
		"missing token":   {"", 401, "missing_token"},
		"garbage":         {"tw_not.a.token", 401, "malformed_token"},
		"no prefix":       {strings.TrimPrefix(admin, "tw_"), 401, "malformed_token"},
		"tampered":        {admin[:len(admin)-4] + "AAAA", 401, "bad_signature"},
		"non-admin scope": {service, 403, "insufficient_scope"},
		"revoked admin":   {revokedAdmin, 401, "revoked"},
		"valid admin":     {admin, 200, ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			status, out := call(t, "GET", base+"/v1/keys", tc.token, "")
			if status != tc.wantStatus {
				t.Fatalf("status %d, want %d (%v)", status, tc.wantStatus, out)
			}
			if tc.wantError != "" && out["error"] != tc.wantError {
				t.Errorf("error %v, want %s", out["error"], tc.wantError)
			}
		})
	}
}

func TestIssuanceRefusals(t *testing.T) {
	r := startAgent(t, t.TempDir())
	base := "http://" + r.AdminAddr
	admin := readToken(t, r.AdminTokenFile)
	tests := map[string]struct {
		body string
		want string
	}{
		"scope outside class": {`{"subject":"a","class":"service","scopes":["deploy:write"]}`, "outside class"},
		"ttl above limit":     {`{"subject":"a","class":"service","ttl":"25h"}`, "above the limit"},
		"class not in env":    {`{"subject":"a","class":"ci-deploy"}`, "may not be issued in dev"},
		"unknown class":       {`{"subject":"a","class":"nope"}`, "unknown class"},
		"missing subject":     {`{"class":"service"}`, "subject is required"},
		"unknown field":       {`{"subject":"a","class":"service","scope":"x"}`, "unknown field"},
		"bad ttl":             {`{"subject":"a","class":"service","ttl":"soon"}`, "Go duration"},
		"not json":            {`subject=a`, "request body"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			status, out := call(t, "POST", base+"/v1/tokens", admin, tc.body)
			if status != http.StatusBadRequest {
				t.Fatalf("status %d, want 400 (%v)", status, out)
			}
			if msg, _ := out["message"].(string); !strings.Contains(msg, tc.want) {
				t.Errorf("message %q does not say %q", msg, tc.want)
			}
		})
	}
}

// TestRestartKeepsState checks that keys, tokens and revocations survive a
// restart: a revoked token stays revoked, a live one still verifies.
func TestRestartKeepsState(t *testing.T) {
	dir := t.TempDir()
	var live, revoked string
	func() {
		r := startAgentOnce(t, dir)
		defer r.stop()
		admin := readToken(t, r.AdminTokenFile)
		base := "http://" + r.AdminAddr
		_, out := call(t, "POST", base+"/v1/tokens", admin, `{"subject":"a","class":"service"}`)
		live = out["token"].(string)
		_, out = call(t, "POST", base+"/v1/tokens", admin, `{"subject":"b","class":"service"}`)
		revoked = out["token"].(string)
		id := out["id"].(string)
		if status, _ := call(t, "POST", base+"/v1/tokens/"+id+"/revoke", admin, `{"reason":"test"}`); status != 201 {
			t.Fatal("revoke failed")
		}
	}()
	r := startAgentOnce(t, dir)
	defer r.stop()
	d := r.agent.Decider()
	now := time.Now()
	if dec := d.Decide(policy.Request{Token: live, Method: "GET", Host: "orders", Path: "/orders/1"}, now); !dec.Allow {
		t.Errorf("live token after restart: %s", dec.Reason)
	}
	if dec := d.Decide(policy.Request{Token: revoked, Method: "GET", Host: "orders", Path: "/orders/1"}, now); dec.Reason != policy.ReasonRevoked {
		t.Errorf("revoked token after restart: %s", dec.Reason)
	}
	if _, err := os.Stat(filepath.Join(dir, "kek")); err != nil {
		t.Error(err)
	}
}

type runningAgent struct {
	Ready
	agent *Agent
	stop  func()
}

func startAgentOnce(t *testing.T, dataDir string) runningAgent {
	return startAgentWith(t, Config{DataDir: dataDir})
}

// startAgentWith starts an agent on loopback ports; empty fields of cfg
// take test defaults (example policy, env dev, kernel side off).
func startAgentWith(t *testing.T, cfg Config) runningAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	readyc := make(chan Ready, 1)
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.PolicyPath == "" {
		cfg.PolicyPath = "../deploy/policy.example.yaml"
	}
	if cfg.Env == "" {
		cfg.Env = "dev"
	}
	if cfg.BPF == "" {
		cfg.BPF = kernel.ModeOff
	}
	cfg.AdminAddr, cfg.MetricsAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.OnReady = func(r Ready) { readyc <- r }
	a, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent run: %v", err)
			}
			a.Close()
		})
	}
	t.Cleanup(stop) // idempotent: tests may stop an agent earlier
	select {
	case r := <-readyc:
		return runningAgent{Ready: r, agent: a, stop: stop}
	case err := <-done:
		t.Fatalf("agent stopped before ready: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("agent not ready after 10s")
	}
	return runningAgent{}
}
