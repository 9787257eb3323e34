package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestConfigContexts: a context made in one directory works from any
// other; --context and TOKENWARDEN_CONTEXT pick another; a flag beats the
// context; the file is written 0600 with absolute paths.
func TestConfigContexts(t *testing.T) {
	r := startAgent(t)
	home := t.TempDir()
	t.Setenv(envConfig, "")
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, "config"))
	t.Setenv(envServer, "")
	t.Setenv(envAdminTokenFile, "")
	work := filepath.Dir(r.AdminTokenFile)
	t.Chdir(work)
	out, errOut, code := run(t, "config", "set-context", "dev", "--server", r.AdminAddr, "--admin-token-file", filepath.Base(r.AdminTokenFile), "--use")
	if code != 0 {
		t.Fatalf("set-context: exit %d: %s", code, errOut)
	}
	path := filepath.Join(home, "config", "tokenwarden", "config.yaml")
	if !strings.Contains(out, path) {
		t.Errorf("set-context said %q, want the file %s", out, path)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("config file: %v %v", st, err)
	}
	data, _ := os.ReadFile(path)
	var c cliConfig
	if err := yaml.Unmarshal(data, &c); err != nil || c.CurrentContext != "dev" || c.Contexts["dev"].AdminTokenFile != r.AdminTokenFile {
		t.Fatalf("config file %s: %+v %v", data, c, err)
	}
	// From anywhere else.
	t.Chdir(t.TempDir())
	if out, errOut, code = run(t, "token", "list"); code != 0 || !strings.Contains(out, "tokenwarden-admin") {
		t.Fatalf("token list from another directory: exit %d: %s%s", code, out, errOut)
	}
	// Another context, chosen per command; a broken one fails naming its server.
	if _, errOut, code = run(t, "config", "set-context", "other", "--server", "127.0.0.1:1", "--admin-token-file", r.AdminTokenFile); code != 0 {
		t.Fatalf("set-context other: %s", errOut)
	}
	if _, errOut, code = run(t, "token", "list", "--context", "other"); code != 1 || !strings.Contains(errOut, "127.0.0.1:1") {
		t.Errorf("--context other: exit %d: %s", code, errOut)
	}
	t.Setenv(envContext, "other")
	if _, errOut, code = run(t, "keys", "list"); code != 1 || !strings.Contains(errOut, "127.0.0.1:1") {
		t.Errorf("%s=other: exit %d: %s", envContext, code, errOut)
	}
	// A context's admin token goes only to that context's server: another
	// server from a flag or the environment is refused (exit 2) unless the
	// token file is given as well.
	if _, errOut, code = run(t, "keys", "list", "--server", "127.0.0.1:2"); code != 2 || !strings.Contains(errOut, `comes from context "other"`) {
		t.Errorf("--server beside the context's token: exit %d: %s", code, errOut)
	}
	if _, errOut, code = run(t, "keys", "list", "--server", r.AdminAddr, "--admin-token-file", r.AdminTokenFile); code != 0 {
		t.Errorf("--server and --admin-token-file over the context: exit %d: %s", code, errOut)
	}
	t.Setenv(envContext, "")
	t.Setenv(envServer, "127.0.0.1:2")
	if _, errOut, code = run(t, "keys", "list"); code != 2 || !strings.Contains(errOut, `comes from context "dev"`) {
		t.Errorf("a leftover %s beside the current context's token: exit %d: %s", envServer, code, errOut)
	}
	if _, errOut, code = run(t, "keys", "list", "--context", "dev"); code != 0 {
		t.Errorf("--context dev over %s: exit %d: %s", envServer, code, errOut)
	}
	t.Setenv(envServer, "")

	out, _, _ = run(t, "config", "get-contexts")
	if !strings.Contains(out, "*        dev") || !strings.Contains(out, "other") {
		t.Errorf("get-contexts:\n%s", out)
	}
	if out, _, code = run(t, "config", "use-context", "other"); code != 0 {
		t.Fatalf("use-context: %s", out)
	}
	if out, _, _ = run(t, "config", "current-context"); out != "other\n" {
		t.Errorf("current-context %q", out)
	}
	if _, _, code = run(t, "config", "delete-context", "other"); code != 0 {
		t.Fatal("delete-context")
	}
	if out, _, _ = run(t, "config", "view", "-o", "json"); strings.Contains(out, "other") || !strings.Contains(out, `"dev"`) {
		t.Errorf("view after delete:\n%s", out)
	}

	// A file others may write chooses where the admin token goes: refused.
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code = run(t, "token", "list"); code != 1 || !strings.Contains(errOut, "chmod 600") {
		t.Errorf("world-writable config: exit %d: %s", code, errOut)
	}
}

// TestParseConfigRefuses: the configuration is read strictly; every
// malformed file is refused with a reason, none is half-applied.
func TestParseConfigRefuses(t *testing.T) {
	for name, tc := range map[string]struct{ yaml, want string }{
		"unknown field":     {"contexts:\n  a:\n    server: 127.0.0.1:9003\n    token: x\n", "field token not found"},
		"unknown top field": {"current_context: a\n", "not found"},
		"two documents":     {"contexts: {}\n---\ncontexts: {}\n", "more than one YAML document"},
		"bad name":          {"contexts:\n  'a b':\n    server: 127.0.0.1:9003\n", `context "a b"`},
		"bad server":        {"contexts:\n  a:\n    server: ftp://x\n", "server"},
		"server with user":  {"contexts:\n  a:\n    server: http://u:p@x:1\n", "server"},
		"missing current":   {"current-context: b\ncontexts:\n  a: {}\n", "not among its contexts"},
		"duplicate key":     {"contexts:\n  a: {}\n  a: {}\n", "already defined"},
		"not a mapping":     {"- a\n- b\n", "cannot unmarshal"},
		"NUL in a path":     {"contexts:\n  a:\n    admin-token-file: \"/x\\0y\"\n", "not a path"},
		"oversized":         {"# " + strings.Repeat("x", maxConfigBytes) + "\n", "over"},
		"alias bomb":        {"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\ncontexts: *c\n", ""},
		"wrong type":        {"contexts:\n  a:\n    server: [1, 2]\n", "cannot unmarshal"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parseConfig([]byte(tc.yaml), "/home/me")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %v, want one saying %q", err, tc.want)
			}
		})
	}
	c, err := parseConfig([]byte("current-context: a\ncontexts:\n  a:\n    server: 127.0.0.1:9003\n    admin-token-file: tokens/admin.token\n"), "/home/me/.config/tokenwarden")
	if err != nil || c.Contexts["a"].AdminTokenFile != "/home/me/.config/tokenwarden/tokens/admin.token" {
		t.Errorf("relative path: %+v %v", c, err)
	}
}

// FuzzParseConfig: no input panics the parser or yields a configuration
// that breaks its own rules; what it accepts survives a save and a load.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		"", "current-context: a\ncontexts:\n  a:\n    server: 127.0.0.1:9003\n    admin-token-file: /x\n    ca-file: ca.pem\n",
		"contexts:\n  a: {}\n  b:\n    server: https://agent:9003\n", "---\n", "contexts: *x\n", "{contexts: {a: {server: 'http://[::1]:9003'}}}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parseConfig(data, "/base")
		if err != nil {
			return
		}
		if len(c.Contexts) > maxContexts {
			t.Fatalf("%d contexts", len(c.Contexts))
		}
		for name, ctx := range c.Contexts {
			if !contextName.MatchString(name) {
				t.Fatalf("name %q accepted", name)
			}
			for _, p := range []string{ctx.AdminTokenFile, ctx.CAFile} {
				if p != "" && !filepath.IsAbs(p) {
					t.Fatalf("path %q left relative", p)
				}
			}
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseConfig(out, "/elsewhere")
		if err != nil {
			t.Fatalf("saved %q does not load: %v", out, err)
		}
		if len(again.Contexts) != len(c.Contexts) || again.CurrentContext != c.CurrentContext {
			t.Fatalf("%+v became %+v", c, again)
		}
	})
}
