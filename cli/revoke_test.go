package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/policy"
)

func runIn(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	root := newRootCommand()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(context.Background())
	code := report(&errOut, cmd, err)
	return out.String(), errOut.String(), code
}

// TestRevokeSafetyRails attacks each rail of a broad revocation from the
// CLI: no confirmation off a terminal (exit 2), a "no" on a terminal, a
// target that covers nothing, a dry run that must change nothing, and the
// same rule twice.
func TestRevokeSafetyRails(t *testing.T) {
	r := startAgent(t)
	t.Setenv(envServer, r.AdminAddr)
	t.Setenv(envAdminTokenFile, r.AdminTokenFile)
	if _, errOut, code := run(t, "token", "issue", "--subject", "bob", "--class", "service"); code != 0 {
		t.Fatalf("issue: %s", errOut)
	}
	check := func(name string, wantCode int, wantOut string, out, errOut string, code int) {
		t.Helper()
		if code != wantCode || !strings.Contains(out+errOut, wantOut) {
			t.Errorf("%s: exit %d, want %d with %q:\n%s%s", name, code, wantCode, wantOut, out, errOut)
		}
	}
	out, errOut, code := runIn(t, "", "revoke", "--subject", "bob", "--reason", "left")
	check("not a terminal, no --yes", 2, "pass --yes", out, errOut, code)

	old := isTerminal
	isTerminal = func(any) bool { return true }
	out, errOut, code = runIn(t, "n\n", "revoke", "--subject", "bob", "--reason", "left")
	check("answered no", 2, "not confirmed", out, errOut, code)
	if !strings.Contains(errOut, "covers 1 live token(s)") {
		t.Errorf("the prompt does not say what it covers: %s", errOut)
	}
	isTerminal = old

	out, errOut, code = run(t, "revoke", "--subject", "bob", "--reason", "left", "--dry-run")
	check("dry run", 0, "would cover 1 live token(s)", out, errOut, code)
	out, errOut, code = run(t, "revoke", "--subject", "nobody", "--reason", "typo", "--yes")
	check("covers nothing", 1, "covers no live token", out, errOut, code)

	isTerminal = func(any) bool { return true }
	out, errOut, code = runIn(t, "y\n", "revoke", "--subject", "bob", "--reason", "left")
	isTerminal = old
	check("confirmed", 0, "stored: every agent enforces it", out, errOut, code)
	out, errOut, code = run(t, "revoke", "--subject", "bob", "--reason", "left", "--yes")
	check("again", 0, "was revoked already: nothing added", out, errOut, code)
}

// TestMutationDryRunFlags: --dry-run on issue, rotate and keys rotate says
// what it would do and prints no token.
func TestMutationDryRunFlags(t *testing.T) {
	r := startAgent(t)
	t.Setenv(envServer, r.AdminAddr)
	t.Setenv(envAdminTokenFile, r.AdminTokenFile)
	out, errOut, code := run(t, "token", "issue", "--subject", "ci", "--class", "service", "--dry-run")
	if code != 0 || !strings.HasPrefix(out, "dry run: would issue a service token to ci") || strings.Contains(out, "tw_") {
		t.Fatalf("issue --dry-run: exit %d: %s%s", code, out, errOut)
	}
	_, errOut, _ = run(t, "token", "issue", "--subject", "ci", "--class", "service")
	id := strings.Fields(strings.TrimPrefix(errOut, "issued "))[0]
	out, errOut, code = run(t, "token", "rotate", id, "--dry-run")
	if code != 0 || !strings.Contains(out, "would issue a successor of "+id) || strings.Contains(out, "tw_") {
		t.Fatalf("rotate --dry-run: exit %d: %s%s", code, out, errOut)
	}
	out, errOut, code = run(t, "keys", "rotate", "--now", "--dry-run")
	if code != 0 || !strings.Contains(out, "would make a new signing key") {
		t.Fatalf("keys rotate --dry-run: exit %d: %s%s", code, out, errOut)
	}
	out, _, _ = run(t, "token", "list")
	if strings.Count(out, "\n") > 3 {
		t.Errorf("dry runs issued tokens:\n%s", out)
	}
}

// TestRevokeOwnAdminKey: revoking the key that signed the caller's own
// admin token is refused with an explanation; with --force it is revoked
// and the agent writes itself a new admin token at once, so the CLI is not
// locked out.
func TestRevokeOwnAdminKey(t *testing.T) {
	r := startAgent(t)
	t.Setenv(envServer, r.AdminAddr)
	t.Setenv(envAdminTokenFile, r.AdminTokenFile)
	old, err := os.ReadFile(r.AdminTokenFile)
	if err != nil {
		t.Fatal(err)
	}
	header, err := base64.RawURLEncoding.DecodeString(strings.SplitN(strings.TrimPrefix(strings.TrimSpace(string(old)), policy.TokenPrefix), ".", 2)[0])
	if err != nil {
		t.Fatal(err)
	}
	var h struct{ Kid string }
	json.Unmarshal(header, &h)
	if out, errOut, code := run(t, "keys", "rotate", "--now"); code != 0 {
		t.Fatalf("keys rotate --now: %s%s", out, errOut)
	}
	out, errOut, code := run(t, "revoke", "--key", h.Kid, "--reason", "compromised", "--yes")
	if code != 1 || !strings.Contains(errOut, "signed the admin token this request was made with") {
		t.Fatalf("own key without --force: exit %d: %s%s", code, out, errOut)
	}
	out, errOut, code = run(t, "revoke", "--key", h.Kid, "--reason", "compromised", "--yes", "--force")
	if code != 0 || !strings.Contains(out, "wrote a new one") {
		t.Fatalf("own key with --force: exit %d: %s%s", code, out, errOut)
	}
	if now, _ := os.ReadFile(r.AdminTokenFile); bytes.Equal(now, old) {
		t.Fatal("the admin token was not re-issued")
	}
	if out, errOut, code = run(t, "token", "list"); code != 0 {
		t.Fatalf("locked out after revoking the own key: exit %d: %s%s", code, out, errOut)
	}
}
