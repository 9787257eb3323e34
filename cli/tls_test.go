package cli

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent"
	"github.com/tokenwarden/tokenwarden/agent/listen"
	"github.com/tokenwarden/tokenwarden/agent/listen/tlstest"
)

// The CLI reaches an agent whose admin listener requires a client
// certificate, with --server-ca and --client-cert; without the
// certificate it is refused, and the health probe likewise.
func TestCLIOverMutualTLS(t *testing.T) {
	serverCA, clientCA := tlstest.NewCA(t, "agent CA"), tlstest.NewCA(t, "operators")
	leaf, op := serverCA.Server(t, "agent"), clientCA.Client(t, "alice")
	dir := t.TempDir()
	files := map[string][]byte{"tls.crt": leaf.CertPEM, "tls.key": leaf.KeyPEM, "client-ca.pem": clientCA.PEM,
		"server-ca.pem": serverCA.PEM, "alice.pem": op.CertPEM, "alice-key.pem": op.KeyPEM}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p := func(name string) string { return filepath.Join(dir, name) }
	ctx, cancel := context.WithCancel(context.Background())
	readyc := make(chan agent.Ready, 1)
	dataDir := t.TempDir()
	a, err := agent.New(ctx, agent.Config{
		DataDir: dataDir, PolicyPath: "../deploy/policy.example.yaml", Env: "dev",
		AdminAddr: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		TLS:     listen.TLSFiles{CertFile: p("tls.crt"), KeyFile: p("tls.key"), ClientCAs: listen.ClientCAs{Admin: p("client-ca.pem")}},
		OnReady: func(r agent.Ready) { readyc <- r },
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; a.Close() })
	var r agent.Ready
	select {
	case r = <-readyc:
	case <-time.After(10 * time.Second):
		t.Fatal("agent not ready")
	}
	server := "https://" + r.AdminAddr
	withCert := []string{"--server", server, "--server-ca", p("server-ca.pem"), "--client-cert", p("alice.pem"), "--client-key", p("alice-key.pem"), "--admin-token-file", r.AdminTokenFile}
	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"token list with certificate", append([]string{"token", "list"}, withCert...), 0},
		{"health with certificate", append([]string{"health", "--ready"}, withCert...), 0},
		{"token list without certificate", []string{"token", "list", "--server", server, "--server-ca", p("server-ca.pem"), "--admin-token-file", r.AdminTokenFile}, 1},
		{"health without certificate", []string{"health", "--server", server, "--server-ca", p("server-ca.pem")}, 1},
		{"without the agent's CA", []string{"health", "--server", server, "--client-cert", p("alice.pem"), "--client-key", p("alice-key.pem")}, 1},
		{"TLS flags on http://", []string{"health", "--server", "http://" + r.AdminAddr, "--server-ca", p("server-ca.pem")}, 2},
		{"certificate without key", []string{"health", "--server", server, "--client-cert", p("alice.pem")}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, stderr, code := run(t, tc.args...); code != tc.code {
				t.Errorf("exit %d, want %d; stderr %s", code, tc.code, stderr)
			}
		})
	}
}

// A client CA (mTLS) that the agent could not enforce is a usage error
// naming the flag, before anything is written.
func TestServeRefusesUnenforceableMTLS(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	_, stderr, code := run(t, "serve", "--data-dir", dir, "--policy", "../deploy/policy.example.yaml", "--env", "dev",
		"--authz-grpc-client-ca", "/etc/ca.pem")
	if code != 2 || !strings.Contains(stderr, "--authz-grpc-client-ca") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("data dir created: %v", err)
	}
}

// xds render wires the sidecar's ext_authz cluster over (m)TLS, and
// refuses TLS to a unix socket, which the agent never serves over TLS.
func TestXDSRenderAuthzOverTLS(t *testing.T) {
	args := []string{"xds", "render", "--policy", "../deploy/policy.example.yaml", "--node", "sidecar~10.0.0.7~orders-1.default~default.svc.cluster.local",
		"--service", "orders", "--authz-address", "10.0.0.1:9001", "--authz-ca", "/etc/tokenwarden/tls/ca.crt",
		"--authz-cert", "/etc/sidecar/tls.crt", "--authz-key", "/etc/sidecar/tls.key", "--authz-server-name", "tokenwarden.tokenwarden.svc"}
	out, stderr, code := run(t, args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"envoy.transport_sockets.tls", "/etc/tokenwarden/tls/ca.crt", "/etc/sidecar/tls.key", "sni: tokenwarden.tokenwarden.svc"} {
		if !strings.Contains(out, want) {
			t.Errorf("rendered configuration lacks %q", want)
		}
	}
	if _, _, code := run(t, "xds", "render", "--policy", "../deploy/policy.example.yaml", "--node", "sidecar~10.0.0.7~orders-1.default~default.svc.cluster.local",
		"--authz-address", "unix:///run/tokenwarden/authz.sock", "--authz-ca", "/etc/ca.pem"); code == 0 {
		t.Error("TLS to a unix socket rendered")
	}
}
