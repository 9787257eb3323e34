package authz

import (
	"bytes"
	"go/build"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"text/template"
	"time"
)

// caddyConf is the Caddy snippet of docs/authz.md on a catch-all site (the
// worst case: every host reaches it), with test-local addresses.
var caddyConf = template.Must(template.New("Caddyfile").Parse(`{
	admin off
	auto_https off
	persist_config off
	storage file_system {{.Dir}}/data
}

http://:{{.Port}} {
	route {
		request_header -X-Tokenwarden-*
		forward_auth {{.Authz}} {
			uri /forward-auth/{{.Service}}
			copy_headers X-Tokenwarden-Subject X-Tokenwarden-Token-Id X-Tokenwarden-Scopes X-Tokenwarden-Tenant
		}
		reverse_proxy {{.App}}
	}
}
`))

// requirePeers reports whether tests must fail, not skip, without the real
// proxies: in CI (.ci/run sets TOKENWARDEN_REQUIRE_BPF=1; CI=true elsewhere).
func requirePeers() bool {
	return os.Getenv("CI") == "true" || os.Getenv("TOKENWARDEN_REQUIRE_BPF") == "1"
}

// caddyPath finds caddy on PATH or in GOPATH/bin (where go install puts
// it), and returns "" without it, or fails the test when peers are
// required.
func caddyPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("caddy"); err == nil {
		return p
	}
	if p := filepath.Join(build.Default.GOPATH, "bin", "caddy"); fileExists(p) {
		return p
	}
	const install = "go install github.com/caddyserver/caddy/v2/cmd/caddy@v2.11.9"
	if requirePeers() {
		t.Fatal("caddy not found (" + install + "); required in CI")
	}
	t.Log("caddy not found (" + install + "); its end-to-end cases are left out")
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// caddySite is what Caddy protects: the service and the application.
type caddySite struct {
	Authz, App, Service string
}

// startCaddy runs Caddy with caddyConf and returns its address. It stops
// with the test.
func startCaddy(t *testing.T, bin string, site caddySite) string {
	t.Helper()
	dir := t.TempDir()
	listen := freePort(t)
	_, port, _ := net.SplitHostPort(listen)
	var conf bytes.Buffer
	if err := caddyConf.Execute(&conf, map[string]string{
		"Dir": dir, "Port": port, "Authz": site.Authz, "App": site.App, "Service": site.Service,
	}); err != nil {
		t.Fatal(err)
	}
	confPath := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(confPath, conf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(bin, "run", "--config", confPath, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("caddy output:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case err := <-exited:
			t.Fatalf("caddy exited: %v\n%s", err, out.String())
		default:
		}
		if c, err := net.Dial("tcp", "127.0.0.1:"+port); err == nil {
			c.Close()
			return "127.0.0.1:" + port
		}
		if time.Now().After(deadline) {
			t.Fatal("caddy did not start listening within 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
