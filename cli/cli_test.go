package cli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent"
)

// run executes one command line in-process and returns stdout, stderr and
// the exit code Execute would return.
func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	root := newRootCommand()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	code := 0
	if err != nil {
		errOut.WriteString(err.Error() + "\n")
		code = 1
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
	}
	return out.String(), errOut.String(), code
}

func startAgent(t *testing.T) agent.Ready {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	readyc := make(chan agent.Ready, 1)
	a, err := agent.New(ctx, agent.Config{
		DataDir: t.TempDir(), PolicyPath: "../deploy/policy.example.yaml", Env: "dev",
		AdminAddr: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnReady: func(r agent.Ready) { readyc <- r },
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; a.Close() })
	select {
	case r := <-readyc:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("agent not ready")
	}
	return agent.Ready{}
}

// TestReadmeWalkthrough runs the README's first-steps commands against a
// real agent: issue, show, revoke, and see both in the audit log.
func TestReadmeWalkthrough(t *testing.T) {
	r := startAgent(t)
	t.Setenv(envServer, r.AdminAddr)
	t.Setenv(envAdminTokenFile, r.AdminTokenFile)

	out, errOut, code := run(t, "token", "issue", "--subject", "ci", "--class", "service", "--scope", "orders:read", "--ttl", "30m")
	if code != 0 {
		t.Fatalf("issue: exit %d: %s", code, errOut)
	}
	token := strings.TrimSpace(out)
	if strings.Count(out, "\n") != 1 || !strings.HasPrefix(token, "tw_") {
		t.Fatalf("issue must print the token alone on stdout, got %q", out)
	}
	id := strings.Fields(strings.TrimPrefix(errOut, "issued "))[0]

	out, errOut, code = run(t, "token", "show", id)
	if code != 0 || !strings.Contains(out, `"subject": "ci"`) {
		t.Fatalf("show: exit %d: %s %s", code, out, errOut)
	}
	if strings.Contains(out, token) {
		t.Fatal("show printed the token string")
	}
	if out, errOut, code = run(t, "token", "list"); code != 0 || !strings.Contains(out, id) {
		t.Fatalf("list: exit %d: %s %s", code, out, errOut)
	}
	if out, errOut, code = run(t, "token", "revoke", id, "--reason", "leaked in CI logs"); code != 0 || !strings.Contains(out, "revoked token "+id) {
		t.Fatalf("revoke: exit %d: %s %s", code, out, errOut)
	}
	out, errOut, code = run(t, "audit", "tail")
	if code != 0 {
		t.Fatalf("audit tail: exit %d: %s", code, errOut)
	}
	for _, want := range []string{"token.issue", "token.revoke", "token=" + id, "reason=leaked in CI logs"} {
		if !strings.Contains(out, want) {
			t.Errorf("audit tail lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, token) {
		t.Fatal("audit printed the token string")
	}
	if out, _, code = run(t, "revoke", "--subject", "ci", "--reason", "role change"); code != 0 || !strings.Contains(out, "covers 0 live token(s)") {
		t.Errorf("revoke --subject: exit %d: %s", code, out)
	}
	if out, _, code = run(t, "keys", "rotate"); code != 0 || !strings.Contains(out, "is active") {
		t.Errorf("keys rotate: exit %d: %s", code, out)
	}
}

func TestIssueRefusedIsOneLine(t *testing.T) {
	r := startAgent(t)
	t.Setenv(envServer, r.AdminAddr)
	t.Setenv(envAdminTokenFile, r.AdminTokenFile)
	tests := map[string]struct {
		args []string
		want string
	}{
		"scope outside class": {[]string{"--class", "service", "--scope", "deploy:write"}, "outside class service"},
		"ttl above limit":     {[]string{"--class", "service", "--ttl", "48h"}, "above the limit"},
		"class not in env":    {[]string{"--class", "ci-deploy"}, "may not be issued in dev"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			out, errOut, code := run(t, append([]string{"token", "issue", "--subject", "x"}, tc.args...)...)
			if code != 1 || out != "" {
				t.Fatalf("exit %d, stdout %q; want exit 1 and nothing on stdout", code, out)
			}
			if strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, tc.want) {
				t.Errorf("stderr %q: want one line saying %q", errOut, tc.want)
			}
		})
	}
}

func TestPolicyCheck(t *testing.T) {
	tests := map[string]struct {
		file     string
		wantCode int
		want     []string
	}{
		"example is ok": {"../deploy/policy.example.yaml", 0, []string{"ok"}},
		"bad policy": {"testdata/bad-policy.yaml", 1, []string{
			"testdata/bad-policy.yaml:9:14: error: classes.svc.max_ttl 48h0m0s is above environment prod's max_ttl",
			`testdata/bad-policy.yaml:15:54: error: `, `unknown field "colour"`,
		}},
		"missing file": {"testdata/nope.yaml", 1, []string{"no such file"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			out, _, code := run(t, "policy", "check", tc.file)
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d:\n%s", code, tc.wantCode, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestNoAgentIsAClearError(t *testing.T) {
	t.Setenv(envServer, "127.0.0.1:1")
	t.Setenv(envAdminTokenFile, "testdata/bad-policy.yaml") // any non-empty file
	_, errOut, code := run(t, "token", "list")
	if code != 1 || !strings.Contains(errOut, "cannot reach the agent's admin API") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

// TestScanFindsAndRevokesLeaks plants a token in a log file and has scan
// confirm it by signature and revoke it by hash.
func TestScanFindsAndRevokesLeaks(t *testing.T) {
	r := startAgent(t)
	t.Setenv(envServer, r.AdminAddr)
	t.Setenv(envAdminTokenFile, r.AdminTokenFile)
	out, errOut, code := run(t, "token", "issue", "--subject", "leaky", "--class", "service")
	if code != 0 {
		t.Fatalf("issue: %s", errOut)
	}
	token := strings.TrimSpace(out)
	id := strings.Fields(strings.TrimPrefix(errOut, "issued "))[0]
	dir := t.TempDir()
	forged := token[:len(token)-8] + "AAAAAAAA" // right shape, wrong signature
	logText := "ok\nGET /x Authorization: Bearer " + token + "\nnoise " + forged + "\n"
	if err := os.WriteFile(filepath.Join(dir, "ci.log"), []byte(logText), 0o600); err != nil {
		t.Fatal(err)
	}

	out, _, code = run(t, "scan", dir)
	if code != 3 || !strings.Contains(out, "ci.log:2: token "+id) || strings.Count(out, "\n") != 1 {
		t.Fatalf("scan: exit %d:\n%s", code, out)
	}
	if strings.Contains(out, token) {
		t.Fatal("scan printed the token")
	}
	out, _, code = run(t, "scan", "--revoke", dir)
	if code != 3 || !strings.Contains(out, "revoked (rule") {
		t.Fatalf("scan --revoke: exit %d:\n%s", code, out)
	}
	out, _, _ = run(t, "token", "show", id)
	if !strings.Contains(out, `"state": "revoked"`) {
		t.Fatalf("token not revoked after scan --revoke:\n%s", out)
	}
	if _, _, code = run(t, "scan", "testdata"); code != 0 {
		t.Fatalf("clean dir: exit %d", code)
	}
}
