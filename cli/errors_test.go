package cli

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// TestNotFoundSaysItOnce walks every command that names a token that does
// not exist: each fails (exit 1) with one line that names the token once,
// with no prefix repeated.
func TestNotFoundSaysItOnce(t *testing.T) {
	r := startAgent(t)
	t.Setenv(envServer, r.AdminAddr)
	t.Setenv(envAdminTokenFile, r.AdminTokenFile)
	const id = "nosuchid"
	for name, args := range map[string][]string{
		"show":   {"token", "show", id},
		"revoke": {"token", "revoke", id, "--reason", "x"},
		"rotate": {"token", "rotate", id},
	} {
		t.Run(name, func(t *testing.T) {
			out, errOut, code := run(t, args...)
			if code != exitError || out != "" {
				t.Fatalf("exit %d, stdout %q; want 1 and nothing", code, out)
			}
			if strings.Count(errOut, "\n") != 1 || strings.Count(errOut, id) != 1 || !strings.Contains(errOut, "not found") {
				t.Errorf("stderr %q: want one line naming %s once and saying it is not found", errOut, id)
			}
			words := strings.Fields(strings.TrimPrefix(errOut, "tokenwarden: "))
			for i := 0; i+1 < len(words); i++ {
				if strings.Count(errOut, words[i]+" "+words[i+1]) > 1 {
					t.Errorf("stderr %q repeats %q", errOut, words[i]+" "+words[i+1])
				}
			}
		})
	}
}

// TestBadFlagValuesExitTwo gives every flag of every command that parses
// its value (numbers, durations, booleans, formats) a value it refuses,
// and each command a value of a string flag it checks itself: every one
// is a usage error, exit 2, with a pointer to the command's help.
func TestBadFlagValuesExitTwo(t *testing.T) {
	t.Setenv(envServer, "127.0.0.1:1") // never reached: usage errors come first
	tokenFile := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(tokenFile, []byte("tw_any.thing.here\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(envAdminTokenFile, tokenFile)
	t.Setenv(envConfig, filepath.Join(t.TempDir(), "config.yaml"))
	parsed := 0
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		path := strings.Fields(c.CommandPath())[1:]
		c.Flags().VisitAll(func(f *pflag.Flag) {
			switch f.Value.Type() {
			case "string", "stringArray", "stringSlice":
				return // checked by the command: see below
			}
			parsed++
			args := append(slices.Clone(path), "--"+f.Name+"=no!such-value")
			_, errOut, code := run(t, args...)
			if code != exitUsage || !strings.Contains(errOut, "--help' for usage") {
				t.Errorf("%v: exit %d, want %d:\n%s", args, code, exitUsage, errOut)
			}
		})
		for _, sub := range c.Commands() {
			if sub.Name() != "help" && sub.Name() != "completion" {
				walk(sub)
			}
		}
	}
	walk(newRootCommand())
	if parsed < 10 {
		t.Fatalf("only %d typed flags found", parsed)
	}

	dir := t.TempDir()
	policyFile := "../deploy/policy.example.yaml"
	for name, args := range map[string][]string{
		"token list --limit":          {"token", "list", "--limit", "-1"},
		"token issue --ttl":           {"token", "issue", "--subject", "s", "--class", "c", "--ttl", "-1m"},
		"token issue --bind-jwk":      {"token", "issue", "--subject", "s", "--class", "c", "--bind-jwk", filepath.Join(dir, "none.jwk")},
		"token issue -o":              {"token", "issue", "--subject", "s", "--class", "c", "-o", "wide"},
		"token rotate -o":             {"token", "rotate", "x", "-o", "table"},
		"token show -o":               {"token", "show", "x", "-o", "xml"},
		"keys list -o":                {"keys", "list", "-o", "csv"},
		"revocations list --limit":    {"revocations", "list", "--limit", "-5"},
		"audit tail --lines":          {"audit", "tail", "-n", "10001"},
		"audit tail -o":               {"audit", "tail", "-o", "text"},
		"audit verify --store":        {"audit", "verify", "--data-dir", dir, "--store", "postgres"},
		"--server":                    {"keys", "list", "--server", "ftp://agent"},
		"revoke, two targets":         {"revoke", "--subject", "a", "--tenant", "b", "--reason", "x"},
		"serve --log-format":          {"serve", "--data-dir", filepath.Join(dir, "d1"), "--policy", policyFile, "--env", "dev", "--log-format", "xml"},
		"serve --log-level":           {"serve", "--data-dir", filepath.Join(dir, "d2"), "--policy", policyFile, "--env", "dev", "--log-level", "loud"},
		"serve --bpf":                 {"serve", "--data-dir", filepath.Join(dir, "d3"), "--policy", policyFile, "--env", "dev", "--bpf", "maybe"},
		"xds render --app-address":    {"xds", "render", "--policy", policyFile, "--node", "n", "--service", "orders", "--app-address", "not an address"},
		"xds render --service":        {"xds", "render", "--policy", policyFile, "--node", "n", "--service", "nosuch"},
		"dpop proof --method":         {"dpop", "proof", "--key", filepath.Join(dir, "k"), "--method", "GE T", "--url", "https://a/b"},
		"dpop proof --url":            {"dpop", "proof", "--key", filepath.Join(dir, "k"), "--method", "GET", "--url", "/relative"},
		"dpop proof --key":            {"dpop", "proof", "--key", filepath.Join(dir, "k"), "--method", "GET", "--url", "https://a/b"},
		"config use-context":          {"config", "use-context", "nosuch"},
		"config set-context NAME":     {"config", "set-context", "bad name!"},
		"config set-context --server": {"config", "set-context", "x", "--server", "ftp://x"},
		"--context":                   {"token", "list", "--context", "nosuch"},
	} {
		t.Run(name, func(t *testing.T) {
			_, errOut, code := run(t, args...)
			if code != exitUsage || !strings.Contains(errOut, "--help' for usage") || strings.Contains(errOut, "unknown command") {
				t.Errorf("%v: exit %d, want %d:\n%s", args, code, exitUsage, errOut)
			}
		})
	}
}
