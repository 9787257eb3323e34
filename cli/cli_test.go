package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/agent"
	"github.com/tokenwarden/tokenwarden/policy"
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
	cmd, err := root.ExecuteContextC(context.Background())
	code := report(&errOut, cmd, err)
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

	out, errOut, code = run(t, "token", "show", id, "-o", "json")
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
	for _, want := range []string{"token.issue", "token.revoke", "token=" + id, `reason="leaked in CI logs"`} {
		if !strings.Contains(out, want) {
			t.Errorf("audit tail lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, token) {
		t.Fatal("audit printed the token string")
	}
	if out, _, code = run(t, "revoke", "--subject", "ci", "--reason", "role change", "--yes", "--allow-empty"); code != 0 || !strings.Contains(out, "covers 0 live token(s)") {
		t.Errorf("revoke --subject: exit %d: %s", code, out)
	}
	if out, _, code = run(t, "keys", "rotate"); code != 0 || !strings.Contains(out, "is published; it signs from") {
		t.Errorf("keys rotate: exit %d: %s", code, out)
	}
	if out, _, code = run(t, "keys", "list"); code != 0 || !strings.Contains(out, "pending") || !strings.Contains(out, "SIGNS FROM") {
		t.Errorf("keys list: exit %d: %s", code, out)
	}
	if out, _, code = run(t, "keys", "rotate", "--now"); code != 0 || !strings.Contains(out, "is active") {
		t.Errorf("keys rotate --now: exit %d: %s", code, out)
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

// TestPolicyCheckEnv attacks the old `policy check`, which said ok for a
// file serve refuses: here the admin class leaves out prod, so `serve --env
// prod` cannot issue its admin token. With --env the check runs serve's own
// (agent.LoadPolicy) and says so; the same file is fine for dev.
func TestPolicyCheckEnv(t *testing.T) {
	example, err := os.ReadFile("../deploy/policy.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	const adminEnvs = "    default_ttl: 24h\n    max_ttl: 24h\n    environments: [dev, staging, prod]\nservices:"
	noProdAdmin := strings.Replace(string(example), adminEnvs, strings.Replace(adminEnvs, ", prod]", "]", 1), 1)
	if noProdAdmin == string(example) {
		t.Fatal("the example policy's admin class changed; update this test")
	}
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(noProdAdmin), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		args     []string
		wantCode int
		want     string
	}{
		"without --env: the file itself is fine": {[]string{path}, 0, path + ": ok"},
		"no admin class in prod":                 {[]string{"--env", "prod", path}, 1, "serve --env prod would refuse it: policy " + path + ": the policy has no class granting tokenwarden:admin in environment prod"},
		"an environment the file lacks":          {[]string{"--env", "qa", path}, 1, `environment "qa" is not in policy`},
		"dev has an admin class":                 {[]string{"--env", "dev", path}, 0, path + ": ok (environment dev)"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			out, _, code := run(t, append([]string{"policy", "check"}, tc.args...)...)
			if code != tc.wantCode || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d, want %d, output lacks %q:\n%s", code, tc.wantCode, tc.want, out)
			}
		})
	}
	// serve agrees: the agent refuses to start with the file for prod.
	a, err := agent.New(context.Background(), agent.Config{
		DataDir: t.TempDir(), PolicyPath: path, Env: "prod", BPF: "off", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err == nil {
		a.Close()
		t.Fatal("the agent started for prod with a policy that has no admin class there")
	}
	if !strings.Contains(err.Error(), "no class granting tokenwarden:admin in environment prod") {
		t.Fatalf("agent.New: %v", err)
	}
}

func TestNoAgentIsAClearError(t *testing.T) {
	t.Setenv(envServer, "127.0.0.1:1")
	tokenFile := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(tokenFile, []byte("tw_any.thing.here\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(envAdminTokenFile, tokenFile)
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
	out, _, _ = run(t, "token", "show", id, "-o", "json")
	if !strings.Contains(out, `"state": "revoked"`) {
		t.Fatalf("token not revoked after scan --revoke:\n%s", out)
	}
	// A revoked token is reported as revoked, and not revoked again.
	out, _, code = run(t, "scan", "--revoke", dir)
	if code != 3 || !strings.Contains(out, "revoked)") || strings.Contains(out, "rule") {
		t.Fatalf("second scan --revoke: exit %d:\n%s", code, out)
	}
	if _, _, code = run(t, "scan", "testdata"); code != 0 {
		t.Fatalf("clean dir: exit %d", code)
	}
}

// TestExitCodes: usage mistakes exit 2 and say where the help is; failures
// exit 1; every command answers --help.
func TestExitCodes(t *testing.T) {
	t.Setenv(envServer, "127.0.0.1:1")
	tokenFile := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(tokenFile, []byte("tw_any.thing.here\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(envAdminTokenFile, tokenFile)
	tests := map[string]struct {
		args []string
		code int
		want string
	}{
		"unknown command":    {[]string{"bogus"}, 2, "Run 'tokenwarden --help'"},
		"unknown subcommand": {[]string{"token", "bogus"}, 2, "Run 'tokenwarden token --help'"},
		"unknown flag":       {[]string{"token", "list", "--bogus"}, 2, "Run 'tokenwarden token list --help'"},
		"missing flag":       {[]string{"token", "issue", "--class", "service"}, 2, `"subject" not set`},
		"missing id":         {[]string{"token", "show"}, 2, "give one token ID"},
		"a token, not an id": {[]string{"token", "revoke", "tw_a.b.c", "--reason", "x"}, 2, "that is a token, not a token ID"},
		"revoke needs one":   {[]string{"revoke", "--reason", "x"}, 2, "exactly one of --subject"},
		"negative ttl":       {[]string{"token", "issue", "--subject", "s", "--class", "c", "--ttl", "-5m"}, 2, "positive duration"},
		"bad server":         {[]string{"token", "list", "--server", "ftp://x"}, 2, "want http://HOST:PORT"},
		"no agent":           {[]string{"token", "list"}, 1, "cannot reach"},
		"group help":         {[]string{"token"}, 0, ""},
		"no audit log":       {[]string{"audit", "verify", "--data-dir", t.TempDir()}, 1, "no audit log at"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, errOut, code := run(t, tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tc.code, errOut)
			}
		})
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		path := strings.Fields(c.CommandPath())[1:]
		if out, errOut, code := run(t, append(path, "--help")...); code != 0 || !strings.Contains(out, "Usage:") {
			t.Errorf("%s --help: exit %d: %s", c.CommandPath(), code, errOut)
		}
		for _, sub := range c.Commands() {
			if sub.Name() != "help" && sub.Name() != "completion" {
				walk(sub)
			}
		}
	}
	walk(newRootCommand())
}

// TestAdminTokenSafety: the CLI warns about a token file others can read
// and about sending the token in clear text beyond this host, refuses an
// oversized file, and never follows a redirect with the token.
func TestAdminTokenSafety(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(tokenFile, []byte("tw_any.thing.here\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(envAdminTokenFile, tokenFile)

	var sawToken atomic.Bool
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			sawToken.Store(true)
		}
	}))
	defer elsewhere.Close()
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+"/v1/keys", http.StatusFound)
	}))
	defer redirector.Close()

	_, errOut, code := run(t, "keys", "list", "--server", redirector.URL)
	if code != 1 || !strings.Contains(errOut, "refusing to follow") || sawToken.Load() {
		t.Fatalf("redirect: exit %d, token sent elsewhere %v:\n%s", code, sawToken.Load(), errOut)
	}
	if !strings.Contains(errOut, "has mode 0644") {
		t.Errorf("no warning about a token file others can read:\n%s", errOut)
	}
	if strings.Contains(errOut, "unencrypted") {
		t.Errorf("warned about plain http to loopback:\n%s", errOut)
	}

	for server, warned := range map[string]bool{
		"http://10.0.0.1:9003": true, "10.0.0.1:9003": true, "http://agent.example:9003": true,
		"https://agent.example:9003": false, "http://127.0.0.1:9003": false, "http://[::1]:9003": false, "localhost:9003": false,
	} {
		var warn bytes.Buffer
		if _, err := (&adminFlags{server: server, tokenFile: tokenFile}).client(&warn); err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(warn.String(), "unencrypted"); got != warned {
			t.Errorf("--server %s: warned about clear text %v, want %v", server, got, warned)
		}
	}

	if err := os.WriteFile(tokenFile, []byte(strings.Repeat("x", maxAdminTokenFileBytes+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code = run(t, "keys", "list", "--server", redirector.URL); code != 1 || !strings.Contains(errOut, "should hold one token") {
		t.Fatalf("oversized token file: exit %d:\n%s", code, errOut)
	}
}

func TestPrintableEscapesTerminalControls(t *testing.T) {
	for in, want := range map[string]string{
		"reason=leaked in CI logs": "reason=leaked in CI logs",
		"source=\x1b[2J10.0.0.1":   `source=\x1b[2J10.0.0.1`,
		"a\u009bb\nc":              `a\u009bb\nc`,
	} {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %q, want %q", in, got, want)
		}
	}
}

// A token pasted as an argument is not echoed back in the error.
func TestErrorsRedactTokens(t *testing.T) {
	const tok = "tw_eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJjaSJ9.c2lnbmF0dXJlc2lnbmF0dXJl"
	_, errOut, code := run(t, "token", "list", tok)
	if code != 2 || strings.Contains(errOut, tok) || !strings.Contains(errOut, "<token redacted>") {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut)
	}
}

// TestServeRefusesBadFlagsBeforeWriting: a bad --store or --bpf is a usage
// error naming the flag, and nothing is created in --data-dir.
func TestServeRefusesBadFlagsBeforeWriting(t *testing.T) {
	for flag, args := range map[string][]string{
		"--store":          {"--store", "postgres"},
		"--bpf":            {"--bpf", "yes"},
		"--etcd-endpoints": {"--store", "etcd"},
		"--admin":          {"--admin", "9003"},
	} {
		dir := filepath.Join(t.TempDir(), "data")
		_, stderr, code := run(t, append([]string{"serve", "--data-dir", dir, "--policy", "../deploy/policy.example.yaml", "--env", "dev"}, args...)...)
		if code != 2 || !strings.Contains(stderr, flag) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and a line naming %s", args, code, stderr, flag)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%v: the data dir was created (%v)", args, err)
		}
	}
}

// TestServeFlagDefaultsAreTheAgents: each default lives once, in the agent.
func TestServeFlagDefaultsAreTheAgents(t *testing.T) {
	f := newServeCommand().Flags()
	for flag, want := range map[string]string{
		"admin": agent.DefaultAdminAddr, "metrics": agent.DefaultMetricsAddr, "authz-grpc": agent.DefaultAuthzGRPC,
		"authz-http": agent.DefaultAuthzHTTP, "xds": agent.DefaultXDSAddr, "bpf": agent.DefaultBPF, "store": agent.DefaultStore,
		"etcd-prefix": agent.DefaultEtcdPrefix, "cache-size": fmt.Sprint(agent.DefaultCacheSize), "top-tokens": fmt.Sprint(agent.DefaultTopTokens),
		"metrics-token-labels": agent.DefaultMetricsTokenLabels,
	} {
		if got := f.Lookup(flag).DefValue; got != want {
			t.Errorf("--%s defaults to %q, want the agent's %q", flag, got, want)
		}
	}
}

// TestAgentErrorsNameFlags: the agent's errors name Config fields; the CLI
// shows the flags that set them.
func TestAgentErrorsNameFlags(t *testing.T) {
	for in, want := range map[string]string{
		"KEKFile /x: no such file":                               "--kek-file /x: no such file",
		"tls: bad certificate (check Etcd.CAFile, Etcd.KeyFile)": "tls: bad certificate (check --etcd-ca, --etcd-key)",
		"EtcdEndpoints and Etcd.DialTimeout":                     "--etcd-endpoints and --etcd-dial-timeout",
	} {
		if got := namingFlags(errors.New(in)).Error(); got != want {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
}

// TestIssueBoundToWorkload issues a workload-bound token through the CLI
// and reads its binding back; a bound class refuses a token without one.
func TestIssueBoundToWorkload(t *testing.T) {
	r := startAgent(t)
	t.Setenv(envServer, r.AdminAddr)
	t.Setenv(envAdminTokenFile, r.AdminTokenFile)
	const id = "spiffe://cluster.local/ns/ci/sa/deployer"
	out, errOut, code := run(t, "token", "issue", "--subject", "ci", "--class", "ci-bound", "--bind-workload", id)
	if code != 0 || !strings.HasPrefix(out, "tw_") {
		t.Fatalf("issue: exit %d: %s", code, errOut)
	}
	jti := strings.Fields(strings.TrimPrefix(errOut, "issued "))[0]
	if out, errOut, code = run(t, "token", "show", jti, "-o", "json"); code != 0 || !strings.Contains(out, `"workload": "`+id+`"`) {
		t.Fatalf("show: exit %d: %s %s", code, out, errOut)
	}
	for name, args := range map[string][]string{
		"bound class without workload":  {"--class", "ci-bound"},
		"workload outside the patterns": {"--class", "ci-bound", "--bind-workload", "spiffe://cluster.local/ns/prod/sa/x"},
		"workload for a bearer class":   {"--class", "service", "--bind-workload", id},
	} {
		out, errOut, code := run(t, append([]string{"token", "issue", "--subject", "x"}, args...)...)
		if code != 1 || out != "" {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want a refusal", name, code, out, errOut)
		}
	}
}

// TestDPoPKeygenIssueProof: a DPoP key made by the CLI binds a token at
// issuance, and the proofs the CLI makes with it verify against the token's
// binding and name the request.
func TestDPoPKeygenIssueProof(t *testing.T) {
	r := startAgent(t)
	t.Setenv(envServer, r.AdminAddr)
	t.Setenv(envAdminTokenFile, r.AdminTokenFile)
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "client.jwk")
	out, errOut, code := run(t, "dpop", "keygen", "--out", keyFile)
	if code != 0 {
		t.Fatalf("keygen: exit %d: %s", code, errOut)
	}
	jkt := strings.TrimSpace(out)
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	if _, _, code := run(t, "dpop", "keygen", "--out", keyFile); code == 0 {
		t.Fatal("keygen overwrote an existing key")
	}
	out, errOut, code = run(t, "token", "issue", "--subject", "partner", "--class", "partner", "--bind-jwk", keyFile)
	if code != 0 {
		t.Fatalf("issue: exit %d: %s", code, errOut)
	}
	token := strings.TrimSpace(out)
	jti := strings.Fields(strings.TrimPrefix(errOut, "issued "))[0]
	if out, errOut, code = run(t, "token", "show", jti, "-o", "json"); code != 0 || !strings.Contains(out, `"jkt": "`+jkt+`"`) {
		t.Fatalf("show: exit %d: %s %s", code, out, errOut)
	}
	tokFile := filepath.Join(dir, "tok")
	if err := os.WriteFile(tokFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = run(t, "dpop", "proof", "--key", keyFile, "--method", "GET", "--url", "https://orders/orders/1?x=1", "--token-file", tokFile)
	if code != 0 {
		t.Fatalf("proof: exit %d: %s", code, errOut)
	}
	p, why := policy.ParseDPoPProof(strings.TrimSpace(out))
	if why != "" || p.JKT != jkt || p.HTM != "GET" || p.HTU != "https://orders/orders/1" || p.ATH != policy.AccessTokenHash(token) {
		t.Fatalf("proof %+v (%s)", p, why)
	}
	if strings.Contains(out, token) {
		t.Fatal("proof printed the token")
	}
	if _, _, code := run(t, "token", "issue", "--subject", "partner", "--class", "partner"); code != 1 {
		t.Fatalf("a dpop class issued without a key: exit %d", code)
	}
}
