package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdminIssue: operators get their own admin tokens from the CLI; a
// pager bot's revokes and issues nothing; revoking one operator leaves the
// other working; the bootstrap token file keeps working throughout.
func TestAdminIssue(t *testing.T) {
	r := startAgent(t)
	t.Setenv(envServer, r.AdminAddr)
	t.Setenv(envAdminTokenFile, r.AdminTokenFile)
	dir := t.TempDir()
	alice, bob, bot := filepath.Join(dir, "alice"), filepath.Join(dir, "bob"), filepath.Join(dir, "bot")

	out, errOut, code := run(t, "admin", "issue", "--subject", "alice", "--ttl", "8h")
	if code != 0 || !strings.HasPrefix(out, "tw_") || strings.Count(out, "\n") != 1 || !strings.Contains(errOut, "issued admin token ") || !strings.Contains(errOut, "for alice") {
		t.Fatalf("admin issue: exit %d: %q %q", code, out, errOut)
	}
	if err := os.WriteFile(alice, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code = run(t, "admin", "issue", "--subject", "bob", "--out", bob); code != 0 {
		t.Fatalf("admin issue --out: exit %d: %s", code, errOut)
	}
	if st, err := os.Stat(bob); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("--out file: %v %v", st, err)
	}
	if _, errOut, code = run(t, "admin", "issue", "--subject", "bob", "--out", bob); code != 2 || !strings.Contains(errOut, "exists") {
		t.Errorf("admin issue --out over an existing file: exit %d: %s", code, errOut)
	}
	if _, errOut, code = run(t, "admin", "issue", "--subject", "pager-bot", "--scope", "tokenwarden:revoke", "--out", bot); code != 0 {
		t.Fatalf("admin issue --scope: exit %d: %s", code, errOut)
	}
	for _, args := range [][]string{
		{"admin", "issue", "--subject", "x", "--scope", "orders:read"},
		{"admin", "issue", "--subject", "x", "--ttl", "-1h"},
		{"admin", "issue"},
	} {
		if _, errOut, code := run(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2: %s", args, code, errOut)
		}
	}

	as := func(file string, args ...string) (string, string, int) {
		return run(t, append([]string{"--admin-token-file", file}, args...)...)
	}
	_, errOut, code = as(alice, "token", "issue", "--subject", "ci", "--class", "service")
	if code != 0 {
		t.Fatalf("alice issues: exit %d: %s", code, errOut)
	}
	id := strings.Fields(strings.TrimPrefix(errOut, "issued "))[0]
	// The pager bot revokes; it does not issue or mint.
	if _, errOut, code = as(bot, "token", "revoke", id, "--reason", "paged"); code != 0 {
		t.Errorf("the pager bot revokes: exit %d: %s", code, errOut)
	}
	if _, errOut, code = as(bot, "token", "issue", "--subject", "ci", "--class", "service"); code != 1 || !strings.Contains(errOut, "tokenwarden:issue") {
		t.Errorf("the pager bot issues: exit %d: %s", code, errOut)
	}
	if _, errOut, code = as(bot, "admin", "issue", "--subject", "mallory"); code != 1 || !strings.Contains(errOut, "tokenwarden:admin") {
		t.Errorf("the pager bot mints an admin token: exit %d: %s", code, errOut)
	}
	// Bob revokes alice; alice is out, bob and the node's own are not.
	if _, errOut, code = as(bob, "revoke", "--subject", "alice", "--reason", "left the team", "--yes"); code != 0 {
		t.Fatalf("bob revokes alice: exit %d: %s", code, errOut)
	}
	if _, errOut, code = as(alice, "keys", "list"); code != 1 || !strings.Contains(errOut, "revoked") {
		t.Errorf("alice after her revocation: exit %d: %s", code, errOut)
	}
	for _, f := range []string{bob, r.AdminTokenFile} {
		if _, errOut, code = as(f, "keys", "list"); code != 0 {
			t.Errorf("%s after alice's revocation: exit %d: %s", filepath.Base(f), code, errOut)
		}
	}
	// The audit names who did what.
	out, _, _ = run(t, "audit", "tail", "--action", "admin.request", "-n", "100")
	for _, want := range []string{"subject=alice", "subject=bob", "subject=pager-bot"} {
		if !strings.Contains(out, want) {
			t.Errorf("audit tail lacks %s:\n%s", want, out)
		}
	}
}
