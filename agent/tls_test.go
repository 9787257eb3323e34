package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/tokenwarden/tokenwarden/agent/listen"
	"github.com/tokenwarden/tokenwarden/agent/listen/tlstest"
)

// tlsAgent is an agent serving TLS on every listener, each requiring a
// client certificate of clientCA, from files in a Secret-like volume.
type tlsAgent struct {
	runningAgent
	serverCA, clientCA *tlstest.CA
	vol                *tlstest.Volume
}

func startTLSAgent(t *testing.T) tlsAgent {
	t.Helper()
	serverCA, clientCA := tlstest.NewCA(t, "agent CA"), tlstest.NewCA(t, "client CA")
	leaf := serverCA.Server(t, "agent-1")
	vol := tlstest.NewVolume(t)
	vol.Swap(t, map[string][]byte{"tls.crt": leaf.CertPEM, "tls.key": leaf.KeyPEM, "ca.crt": clientCA.PEM})
	ca := vol.Path("ca.crt")
	r := startAgentWith(t, Config{
		AuthzGRPCAddr: "127.0.0.1:0", AuthzHTTPAddr: "127.0.0.1:0", XDSAddr: "127.0.0.1:0", XDSAllowUnauthenticated: true, XDSAuthzAddress: "127.0.0.1:9001",
		TLS: listen.TLSFiles{CertFile: vol.Path("tls.crt"), KeyFile: vol.Path("tls.key"),
			ClientCAs: listen.ClientCAs{Admin: ca, Metrics: ca, AuthzGRPC: ca, AuthzHTTP: ca, XDS: ca}},
		Timing: Timing{TLSPoll: 20 * time.Millisecond},
	})
	return tlsAgent{runningAgent: r, serverCA: serverCA, clientCA: clientCA, vol: vol}
}

// listenerAddrs are the address of every listener of r, by name.
func listenerAddrs(r Ready) map[string]string {
	addrs := map[string]string{listen.AdminListener: r.AdminAddr, listen.MetricsListener: r.MetricsAddr}
	for name, addr := range r.Listeners {
		addrs[name] = addr
	}
	return addrs
}

// reach makes one request of the listener's own protocol: an HTTP GET of
// /healthz, or a gRPC health check. Any answer of the agent (even 404 or
// Unimplemented) means the transport admitted the client; an error means
// it did not.
func reach(t *testing.T, name, addr string, cfg *tls.Config) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	switch name {
	case listen.AuthzGRPCListener, listen.XDSListener:
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false))
		if c := status.Code(err); c == codes.Unavailable || c == codes.DeadlineExceeded {
			return err
		}
		return nil
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/healthz", nil)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

func TestTLSOnEveryListener(t *testing.T) {
	a := startTLSAgent(t)
	addrs := listenerAddrs(a.Ready)
	if len(addrs) != 5 {
		t.Fatalf("listeners %v, want all five", addrs)
	}
	roots := a.serverCA.Pool()
	stranger := tlstest.NewCA(t, "another CA")
	clients := []struct {
		name   string
		certs  []tls.Certificate
		roots  *x509.CertPool
		minVer uint16
		admit  bool
	}{
		{"right certificate", []tls.Certificate{a.clientCA.Client(t, "sidecar").TLS(t)}, roots, 0, true},
		{"right certificate, TLS 1.2", []tls.Certificate{a.clientCA.Client(t, "sidecar").TLS(t)}, roots, tls.VersionTLS12, true},
		{"no certificate", nil, roots, 0, false},
		{"certificate of another CA", []tls.Certificate{stranger.Client(t, "intruder").TLS(t)}, roots, 0, false},
		{"expired certificate", []tls.Certificate{a.clientCA.ExpiredClient(t, "former").TLS(t)}, roots, 0, false},
		{"server certificate as client", []tls.Certificate{a.serverCA.Server(t, "agent-2").TLS(t)}, roots, 0, false},
	}
	for name, addr := range addrs {
		for _, c := range clients {
			t.Run(name+"/"+c.name, func(t *testing.T) {
				cfg := &tls.Config{Certificates: c.certs, RootCAs: c.roots, MinVersion: tls.VersionTLS12}
				if c.minVer != 0 {
					cfg.MaxVersion = c.minVer
				}
				err := reach(t, name, addr, cfg)
				if c.admit && err != nil {
					t.Errorf("refused: %v", err)
				}
				if !c.admit && err == nil {
					t.Error("admitted")
				}
			})
		}
		t.Run(name+"/plaintext", func(t *testing.T) {
			// A client that does not speak TLS gets no answer of the
			// agent's protocol.
			if name == listen.AuthzGRPCListener || name == listen.XDSListener {
				conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecureCreds()))
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unavailable {
					t.Errorf("plaintext gRPC call: %v, want Unavailable", err)
				}
				return
			}
			resp, err := http.Get("http://" + addr + "/healthz")
			if err == nil {
				defer resp.Body.Close()
				if resp.StatusCode != http.StatusBadRequest {
					t.Errorf("plaintext HTTP got %d", resp.StatusCode)
				}
			}
		})
	}
}

// A rotated certificate is served to new connections while a connection
// made before the rotation keeps working; a rotated client CA applies to
// new connections.
func TestTLSReload(t *testing.T) {
	a := startTLSAgent(t)
	addr := a.Ready.AdminAddr
	client := a.clientCA.Client(t, "operator").TLS(t)
	cfg := &tls.Config{Certificates: []tls.Certificate{client}, RootCAs: a.serverCA.Pool(), MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	old, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	br := bufio.NewReader(old)
	get := func() int {
		t.Helper()
		fmt.Fprintf(old, "GET /healthz HTTP/1.1\r\nHost: agent\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("established connection: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(); code != http.StatusOK {
		t.Fatalf("/healthz: %d", code)
	}
	oldSerial := old.ConnectionState().PeerCertificates[0].SerialNumber

	next := a.serverCA.Server(t, "agent-1-renewed")
	newClientCA := tlstest.NewCA(t, "client CA 2")
	a.vol.Swap(t, map[string][]byte{"tls.crt": next.CertPEM, "tls.key": next.KeyPEM, "ca.crt": newClientCA.PEM})

	// New connections: the new certificate, within the generous wait.
	cfg2 := cfg.Clone()
	cfg2.Certificates = []tls.Certificate{newClientCA.Client(t, "operator").TLS(t)}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := tls.Dial("tcp", addr, cfg2)
		if err == nil {
			got := c.ConnectionState().PeerCertificates[0].SerialNumber
			c.Close()
			if got.Cmp(next.Cert.SerialNumber) == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the renewed certificate was not served within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := reach(t, listen.AdminListener, addr, cfg2); err != nil {
		t.Errorf("client of the rotated-in CA refused: %v", err)
	}
	if err := reach(t, listen.AdminListener, addr, cfg); err == nil {
		t.Error("client of the rotated-out CA admitted on a new connection")
	}
	// The established connection survives and still holds the old one.
	if code := get(); code != http.StatusOK {
		t.Errorf("/healthz on the established connection: %d", code)
	}
	if got := old.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(oldSerial) != 0 {
		t.Errorf("established connection's certificate changed")
	}
}

// curl, a client the agent's code does not share, gets through with the
// right certificate and not without one.
func TestTLSWithCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl is needed (.ci/run installs it)")
	}
	a := startTLSAgent(t)
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	leaf := a.clientCA.Client(t, "operator")
	cacert, cert, key := write("ca.pem", a.serverCA.PEM), write("c.pem", leaf.CertPEM), write("k.pem", leaf.KeyPEM)
	for _, tc := range []struct {
		name, addr string
		args       []string
		want       string
	}{
		{"admin with certificate", a.Ready.AdminAddr, []string{"--cert", cert, "--key", key}, "200"},
		{"metrics with certificate", a.Ready.MetricsAddr, []string{"--cert", cert, "--key", key}, "404"},
		{"authz-http with certificate", a.Ready.Listeners[listen.AuthzHTTPListener], []string{"--cert", cert, "--key", key}, ""},
		{"admin without certificate", a.Ready.AdminAddr, nil, "000"},
		{"authz-http without certificate", a.Ready.Listeners[listen.AuthzHTTPListener], nil, "000"},
		{"admin TLS 1.3 only", a.Ready.AdminAddr, []string{"--tlsv1.3", "--cert", cert, "--key", key}, "200"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20", "--cacert", cacert}, tc.args...)
			out, err := exec.Command(curl, append(args, "https://"+tc.addr+"/healthz")...).Output()
			code := strings.TrimSpace(string(out))
			switch {
			case tc.want == "000" && (err == nil || code != "000"):
				t.Errorf("curl got through: %s %v", code, err)
			case tc.want == "":
				if err != nil || code == "000" {
					t.Errorf("curl refused: %s %v", code, err)
				}
			case tc.want != "000" && code != tc.want:
				t.Errorf("curl: %s %v, want %s", code, err, tc.want)
			}
		})
	}
}

func insecureCreds() credentials.TransportCredentials { return insecure.NewCredentials() }

// The TLS metrics the alerting rules use are exported, over TLS.
func TestTLSMetricsExported(t *testing.T) {
	a := startTLSAgent(t)
	cfg := &tls.Config{Certificates: []tls.Certificate{a.clientCA.Client(t, "prometheus").TLS(t)}, RootCAs: a.serverCA.Pool(), MinVersion: tls.VersionTLS12}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	resp, err := client.Get("https://" + a.Ready.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{"tokenwarden_tls_certificate_expiry_timestamp_seconds ", `tokenwarden_tls_reloads_total{result="error"} 0`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
