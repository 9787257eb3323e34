package cli

import (
	"strings"
	"testing"
)

// TestDynamicCompletion asks the hidden __complete command, as the shell
// scripts of `completion bash|zsh|fish` do, for token ids, key ids,
// classes and subjects, answered by a real agent; token strings never
// appear. Unreachable agents complete nothing, quietly.
func TestDynamicCompletion(t *testing.T) {
	r := startAgent(t)
	t.Setenv(envServer, r.AdminAddr)
	t.Setenv(envAdminTokenFile, r.AdminTokenFile)
	out, errOut, code := run(t, "token", "issue", "--subject", "orders-api", "--class", "service", "--tenant", "acme")
	if code != 0 {
		t.Fatalf("issue: %s", errOut)
	}
	token := strings.TrimSpace(out)
	id := strings.Fields(errOut)[1]
	keysOut, _, _ := run(t, "keys", "list", "-o", "json")

	for name, tc := range map[string]struct {
		args []string
		want []string
	}{
		"token show ids":   {[]string{"__complete", "token", "show", ""}, []string{id + "\torders-api service active"}},
		"token revoke ids": {[]string{"__complete", "token", "revoke", id[:3]}, []string{id}},
		"audit --token":    {[]string{"__complete", "audit", "tail", "--token", ""}, []string{id}},
		"issue --class":    {[]string{"__complete", "token", "issue", "--class", "se"}, []string{"service"}},
		"revoke --subject": {[]string{"__complete", "revoke", "--subject", ""}, []string{"orders-api", "tokenwarden-admin"}},
		"list --tenant":    {[]string{"__complete", "token", "list", "--tenant", ""}, []string{"acme"}},
		"revoke --key":     {[]string{"__complete", "revoke", "--key", "k_"}, []string{"k_"}},
		"-o formats":       {[]string{"__complete", "keys", "list", "-o", ""}, []string{"table", "wide", "json", "yaml"}},
	} {
		t.Run(name, func(t *testing.T) {
			out, errOut, code := run(t, tc.args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("completions lack %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, token) || strings.Contains(out, "tw_") {
				t.Errorf("a completion shows a token:\n%s", out)
			}
		})
	}
	if !strings.Contains(keysOut, `"state": "active"`) {
		t.Fatalf("keys: %s", keysOut)
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		if out, errOut, code := run(t, "completion", shell); code != 0 || !strings.Contains(out, "__complete") {
			t.Errorf("completion %s: exit %d: %s", shell, code, errOut)
		}
	}
	t.Setenv(envServer, "127.0.0.1:1")
	out, _, code = run(t, "__complete", "token", "show", "")
	if code != 0 || strings.Contains(out, id) || !strings.HasPrefix(strings.TrimSpace(out), ":") {
		t.Errorf("unreachable agent: exit %d:\n%s", code, out)
	}
}
