package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/policy"
)

// TestPolicyFileReload edits the policy file under a running agent: a valid
// change takes effect within a few seconds, a broken file is refused and the
// policy in force stays.
func TestPolicyFileReload(t *testing.T) {
	example, err := os.ReadFile("../deploy/policy.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, example, 0o600); err != nil {
		t.Fatal(err)
	}
	r := startAgentWith(t, Config{PolicyPath: path})
	token, _ := issue(t, r, `{"subject":"svc","class":"service","scopes":["orders:read"]}`)
	decide := func() policy.Reason {
		return r.agent.Decider().Decide(policy.Request{Token: token, Method: "GET", Host: "orders", Path: "/items/1"}, time.Now()).Reason
	}
	waitFor := func(want policy.Reason) {
		t.Helper()
		deadline := time.Now().Add(3 * policyPollEvery)
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

	// A broken file is refused: the edited policy stays in force.
	if err := os.WriteFile(path, []byte(edited+"\nbogus_field: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * policyPollEvery)
	if got := decide(); got != policy.ReasonAllowed {
		t.Fatalf("after a broken edit: %s, want the previous policy to stay", got)
	}
}
