package helm_test

import (
	"crypto/rand"
	"crypto/tls"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/authz"
	"github.com/tokenwarden/tokenwarden/agent/listen/tlstest"
	"github.com/tokenwarden/tokenwarden/agent/store/etcd/etcdtest"
)

// TestMeshOverTLS runs an agent configured from the chart rendered with
// tls.secretName, its Secret filled from a test CA: the exec probes and
// the CLI in the container reach the admin API over TLS by the mounted
// CA, and ext_authz admits a sidecar with a certificate of that CA and
// refuses one without.
func TestMeshOverTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the agent")
	}
	bin := buildAgent(t)
	e, endpoints, err := etcdtest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	pod, cms := podFromChart(t, endpoints[0], "tls.secretName=tokenwarden-tls")
	const ip = "127.0.0.6"
	ca := tlstest.NewCA(t, "mesh CA")
	leaf := ca.ServerAt(t, "tokenwarden", net.ParseIP(ip))
	kek := make([]byte, 32)
	rand.Read(kek)
	secrets := map[string]map[string][]byte{
		"tokenwarden-kek": {"kek": kek},
		"tokenwarden-tls": {"tls.crt": leaf.CertPEM, "tls.key": leaf.KeyPEM, "ca.crt": ca.PEM},
	}
	// Ready only once the rendered probe got through over TLS.
	a := startMeshAgent(t, bin, ip, pod, cms, secrets)

	cli := exec.Command(bin, "token", "issue", "--subject", "ci", "--class", "service", "--scope", "orders:read")
	cli.Env = a.env
	out, err := cli.Output()
	if err != nil {
		t.Fatalf("tokenwarden token issue in the pod's environment, over TLS: %v", err)
	}
	token := strings.TrimSpace(string(out))

	check := func(certs []tls.Certificate) (int, error) {
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: ca.Pool(), Certificates: certs, MinVersion: tls.VersionTLS12,
		}}}
		req, _ := http.NewRequest("GET", "https://"+ip+":9002"+authz.PathNginx+"/orders", nil)
		req.Header.Set("X-Original-Method", "GET")
		req.Header.Set("X-Original-URI", "/orders/1")
		req.Header.Set("X-Original-Host", "orders")
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := check([]tls.Certificate{ca.Client(t, "orders-sidecar").TLS(t)}); err != nil || code != http.StatusOK {
		t.Errorf("sidecar with the mesh's certificate: %d %v, want 200", code, err)
	}
	if _, err := check(nil); err == nil {
		t.Error("a client without a certificate got an ext_authz decision")
	}
	if _, err := check([]tls.Certificate{tlstest.NewCA(t, "other").Client(t, "intruder").TLS(t)}); err == nil {
		t.Error("a client with another CA's certificate got an ext_authz decision")
	}
	// Nothing answers in plain text on the pod's address.
	if resp, err := http.Get("http://" + ip + ":9002/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP to ext_authz: %d", resp.StatusCode)
		}
	}
}
