package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/kernel"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tokenwarden/tokenwarden/policy"
)

// TestPolicyFileReload edits the policy file under a running agent: a valid
// change takes effect within a few seconds, a broken file is refused and the
// policy in force stays.
func TestPolicyFileReload(t *testing.T) {
	example, path := examplePolicyCopy(t)
	const poll = 20 * time.Millisecond
	r := startAgentWith(t, Config{PolicyPath: path, Timing: Timing{PolicyPoll: poll}})
	token, _ := issue(t, r, `{"subject":"svc","class":"service","scopes":["orders:read"]}`)
	decide := func() policy.Reason {
		return r.agent.Decider().Decide(policy.Request{Token: token, Method: "GET", Host: "orders", Path: "/items/1"}, time.Now()).Reason
	}
	waitFor := func(want policy.Reason) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for decide() != want {
			if time.Now().After(deadline) {
				t.Fatalf("decision %s, want %s after the policy file changed", decide(), want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if got := decide(); got != policy.ReasonNoMatchingRoute {
		t.Fatalf("before: %s", got)
	}

	// Give orders a GET /items/* route: the token's orders:read now allows it.
	edited := strings.Replace(string(example),
		`      - { path: /healthz, public: true }
  inventory:`,
		`      - { path: /healthz, public: true }
      - { methods: [GET], path: "/items/*", scopes: [orders:read] }
  inventory:`, 1)
	if edited == string(example) {
		t.Fatal("test edit did not apply to the example policy")
	}
	if err := os.WriteFile(path, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(policy.ReasonAllowed)
	if got := testutil.ToFloat64(r.agent.generation); got != 2 {
		t.Fatalf("policy generation = %v after one accepted reload, want 2", got)
	}

	// A broken file is refused: the edited policy stays in force.
	if err := os.WriteFile(path, []byte(edited+"\nbogus_field: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Wait for the refusal itself, not for time to pass.
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(r.agent.reloads.WithLabelValues("refused")) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the broken policy file was never refused")
		}
		time.Sleep(poll)
	}
	if got := decide(); got != policy.ReasonAllowed {
		t.Fatalf("after a broken edit: %s, want the previous policy to stay", got)
	}
	if got := testutil.ToFloat64(r.agent.generation); got != 2 {
		t.Fatalf("policy generation = %v after a refused reload, want it to stay 2", got)
	}
}

type failingPush struct{}

func (failingPush) SetPolicy(*policy.Policy) error { return errors.New("push refused") }

// TestReloadIsAllOrNothing attacks the old order of a reload: the new
// policy went to the Decider first and a failed push to the sidecars was
// only logged, so a route made private stayed unchecked at the sidecar.
// Now a failed push refuses the reload everywhere.
func TestReloadIsAllOrNothing(t *testing.T) {
	example, path := examplePolicyCopy(t)
	a, err := New(context.Background(), Config{
		DataDir: t.TempDir(), PolicyPath: path, Env: "dev", BPF: kernel.ModeOff, XDSAddr: "127.0.0.1:0",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	before := a.Decider().Policy()
	a.sidecars = failingPush{}
	edited := strings.Replace(string(example), "      - { path: /healthz, public: true }\n  inventory:",
		"      - { path: /healthz, public: true }\n      - { methods: [GET], path: \"/items/*\", scopes: [orders:read] }\n  inventory:", 1)
	if err := os.WriteFile(path, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(); err == nil {
		t.Fatal("a reload whose push to the sidecars failed was accepted")
	}
	if a.Decider().Policy() != before {
		t.Fatal("the Decider took the new policy although the sidecars did not")
	}
	if got := testutil.ToFloat64(a.reloads.WithLabelValues("refused")); got != 1 {
		t.Fatalf("refused reloads = %v, want 1", got)
	}
	if got := testutil.ToFloat64(a.generation); got != 1 {
		t.Fatalf("policy generation = %v after a refused reload, want 1", got)
	}
}

// examplePolicyCopy copies the example policy where a test may edit it.
func examplePolicyCopy(t *testing.T) ([]byte, string) {
	t.Helper()
	example, err := os.ReadFile("../deploy/policy.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, example, 0o600); err != nil {
		t.Fatal(err)
	}
	return example, path
}

// TestReloadNarrowsScopesOfIssuedTokens is the attack of a token issued
// before its class lost a scope: it keeps its claims, and its verified form
// sits in the LRU of verified tokens. After the policy file drops
// orders:write from class service, the token's next check through
// ext_authz is refused that scope (its effective scopes are its claims
// intersected with its class's current scopes) while orders:read still
// works; after the class itself is removed, the token is refused as
// unknown_class.
func TestReloadNarrowsScopesOfIssuedTokens(t *testing.T) {
	example, path := examplePolicyCopy(t)
	const poll = 20 * time.Millisecond
	r := startAgentWith(t, Config{PolicyPath: path, AuthzHTTPAddr: "127.0.0.1:0", Timing: Timing{PolicyPoll: poll}})
	token, _ := issue(t, r, `{"subject":"svc","class":"service","scopes":["orders:read","orders:write"]}`)
	client := &http.Client{}
	ask := func(method string) (status int, reason, scopes string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+r.Listeners["authz-http"]+"/envoy/orders/orders/42", nil)
		req.Host = "orders"
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Error string `json:"error"`
		}
		json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body.Error, resp.Header.Get("x-tokenwarden-scopes")
	}
	// Both checks go through the cache of verified tokens before the edit.
	for range 2 {
		if st, _, scopes := ask("POST"); st != http.StatusOK || scopes != "orders:read orders:write" {
			t.Fatalf("write before the edit: %d, scopes %q", st, scopes)
		}
	}
	write := func(policy string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(policy), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	waitFor := func(method string, want int) (reason, scopes string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			st, reason, scopes := ask(method)
			if st == want {
				return reason, scopes
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: status %d (%s), want %d after the policy file changed", method, st, reason, want)
			}
			time.Sleep(poll)
		}
	}

	narrowed := strings.Replace(string(example), "scopes: [orders:read, orders:write, inventory:read]", "scopes: [orders:read, inventory:read]", 1)
	if narrowed == string(example) {
		t.Fatal("test edit did not apply to the example policy")
	}
	write(narrowed)
	if reason, _ := waitFor("POST", http.StatusForbidden); reason != string(policy.ReasonInsufficientScope) {
		t.Errorf("write after orders:write was withdrawn: %s, want insufficient_scope", reason)
	}
	if st, reason, scopes := ask("GET"); st != http.StatusOK || scopes != "orders:read" {
		t.Errorf("read after the withdrawal: %d %s, scopes %q; want 200 with orders:read only", st, reason, scopes)
	}

	removed := strings.Replace(string(example), `  service:
    scopes: [orders:read, orders:write, inventory:read]
    default_ttl: 1h
    max_ttl: 24h
    environments: [dev, staging, prod]
`, "", 1)
	if removed == string(example) {
		t.Fatal("test edit did not apply to the example policy")
	}
	write(removed)
	if reason, _ := waitFor("GET", http.StatusUnauthorized); reason != string(policy.ReasonUnknownClass) {
		t.Errorf("read after class service was removed: %s, want unknown_class", reason)
	}
}

// TestReloadRefusesPolicyWithoutAdminClass: a reload that takes away the
// class the admin token is issued in would lock the CLI out at the next
// refresh; it is refused like a file with errors, with serve's own message.
func TestReloadRefusesPolicyWithoutAdminClass(t *testing.T) {
	example, path := examplePolicyCopy(t)
	a, err := New(context.Background(), Config{
		DataDir: t.TempDir(), PolicyPath: path, Env: "dev", BPF: kernel.ModeOff,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	const admin = "    default_ttl: 24h\n    max_ttl: 24h\n    environments: [dev, staging, prod]\nservices:"
	edited := strings.Replace(string(example), admin, strings.Replace(admin, "[dev, staging, prod]", "[staging, prod]", 1), 1)
	if edited == string(example) {
		t.Fatal("test edit did not apply to the example policy")
	}
	if err := os.WriteFile(path, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	err = a.Reload()
	if err == nil || !strings.Contains(err.Error(), "no class granting tokenwarden:admin in environment dev") {
		t.Fatalf("Reload = %v, want it refused for want of an admin class in dev", err)
	}
	if got := testutil.ToFloat64(a.generation); got != 1 {
		t.Fatalf("policy generation = %v, want 1", got)
	}
}
