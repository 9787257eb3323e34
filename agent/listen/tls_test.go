package listen_test

import (
	"bytes"
	"crypto/tls"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/agent/listen"
	"github.com/tokenwarden/tokenwarden/agent/listen/tlstest"
)

// served is the serial of the certificate a new handshake with the
// listener gets.
func served(t *testing.T, r *listen.Reloader, name string) string {
	t.Helper()
	cfg, err := r.Config(name).GetConfigForClient(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Certificates[0].Leaf.SerialNumber.String()
}

// An attacker (or a slow rotation) that replaces the certificate without
// its key, or the client CA with garbage, must not take the listeners down
// nor make them serve without client verification: the previous material
// stays until a consistent set appears.
func TestReloaderRotationIsAllOrNothing(t *testing.T) {
	ca := tlstest.NewCA(t, "mesh")
	first, second := ca.Server(t, "agent-1"), ca.Server(t, "agent-2")
	vol := tlstest.NewVolume(t)
	vol.Swap(t, map[string][]byte{"tls.crt": first.CertPEM, "tls.key": first.KeyPEM, "ca.crt": ca.PEM})
	files := listen.TLSFiles{CertFile: vol.Path("tls.crt"), KeyFile: vol.Path("tls.key"),
		ClientCAs: listen.ClientCAs{AuthzGRPC: vol.Path("ca.crt")}}
	r, err := listen.NewReloader(files, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := first.Cert.SerialNumber.String()
	for name, files := range map[string]map[string][]byte{
		"certificate without its key": {"tls.crt": second.CertPEM, "tls.key": first.KeyPEM, "ca.crt": ca.PEM},
		"client CA that is not PEM":   {"tls.crt": second.CertPEM, "tls.key": second.KeyPEM, "ca.crt": []byte("not a certificate")},
		"empty key":                   {"tls.crt": second.CertPEM, "tls.key": nil, "ca.crt": ca.PEM},
	} {
		vol.Swap(t, files)
		if r.Check() {
			t.Errorf("%s: reloaded", name)
		}
		if got := served(t, r, listen.AuthzGRPCListener); got != want {
			t.Errorf("%s: serves certificate %s, want the previous %s", name, got, want)
		}
		cfg, _ := r.Config(listen.AuthzGRPCListener).GetConfigForClient(&tls.ClientHelloInfo{})
		if cfg.ClientAuth != tls.RequireAndVerifyClientCert || cfg.ClientCAs == nil {
			t.Errorf("%s: client verification dropped", name)
		}
	}
	vol.Swap(t, map[string][]byte{"tls.crt": second.CertPEM, "tls.key": second.KeyPEM, "ca.crt": ca.PEM})
	if !r.Check() {
		t.Fatal("a consistent rotation was not picked up")
	}
	if got, want := served(t, r, listen.AuthzGRPCListener), second.Cert.SerialNumber.String(); got != want {
		t.Errorf("serves %s after rotation, want %s", got, want)
	}
	if r.Check() {
		t.Error("reloaded again without a change")
	}
}

func TestReloaderListenerSettings(t *testing.T) {
	ca := tlstest.NewCA(t, "mesh")
	leaf := ca.Server(t, "agent")
	vol := tlstest.NewVolume(t)
	vol.Swap(t, map[string][]byte{"tls.crt": leaf.CertPEM, "tls.key": leaf.KeyPEM, "ca.crt": ca.PEM})
	r, err := listen.NewReloader(listen.TLSFiles{CertFile: vol.Path("tls.crt"), KeyFile: vol.Path("tls.key"), MinVersion: "1.3",
		ClientCAs: listen.ClientCAs{Metrics: vol.Path("ca.crt")}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		alpn  string
		mtls  bool
		wantV uint16
	}{
		{listen.AdminListener, "http/1.1", false, tls.VersionTLS13},
		{listen.MetricsListener, "http/1.1", true, tls.VersionTLS13},
		{listen.AuthzGRPCListener, "h2", false, tls.VersionTLS13},
		{listen.AuthzHTTPListener, "http/1.1", false, tls.VersionTLS13},
		{listen.XDSListener, "h2", false, tls.VersionTLS13},
	} {
		cfg, _ := r.Config(tc.name).GetConfigForClient(&tls.ClientHelloInfo{})
		if cfg.NextProtos[0] != tc.alpn || (cfg.ClientAuth == tls.RequireAndVerifyClientCert) != tc.mtls || cfg.MinVersion != tc.wantV {
			t.Errorf("%s: alpn %v, client auth %v, min version %x", tc.name, cfg.NextProtos, cfg.ClientAuth, cfg.MinVersion)
		}
	}
	for name, files := range map[string]listen.TLSFiles{
		"no key":      {CertFile: vol.Path("tls.crt")},
		"missing":     {CertFile: filepath.Join(vol.Dir, "nope"), KeyFile: vol.Path("tls.key")},
		"tls 1.1":     {CertFile: vol.Path("tls.crt"), KeyFile: vol.Path("tls.key"), MinVersion: "1.1"},
		"key as cert": {CertFile: vol.Path("tls.key"), KeyFile: vol.Path("tls.key")},
		"bad CA":      {CertFile: vol.Path("tls.crt"), KeyFile: vol.Path("tls.key"), ClientCAs: listen.ClientCAs{Admin: vol.Path("tls.key")}},
	} {
		if _, err := listen.NewReloader(files, nil, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// Unix sockets stay plain for same-pod setups; TCP listeners are wrapped.
func TestSecureKeepsUnixSocketsPlain(t *testing.T) {
	ca := tlstest.NewCA(t, "mesh")
	leaf := ca.Server(t, "agent")
	vol := tlstest.NewVolume(t)
	vol.Swap(t, map[string][]byte{"tls.crt": leaf.CertPEM, "tls.key": leaf.KeyPEM})
	r, err := listen.NewReloader(listen.TLSFiles{CertFile: vol.Path("tls.crt"), KeyFile: vol.Path("tls.key")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ul, err := listen.Open("unix://"+filepath.Join(t.TempDir(), "a.sock"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	if got := listen.Secure(ul, listen.AuthzGRPCListener, r); got != ul {
		t.Error("unix socket wrapped in TLS")
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	if got := listen.Secure(tl, listen.AuthzGRPCListener, r); got == tl {
		t.Error("TCP listener left plain with TLS configured")
	}
	if got := listen.Secure(tl, listen.AuthzGRPCListener, nil); got != tl {
		t.Error("TCP listener wrapped without TLS configured")
	}
}

// Anyone who reaches a TLS port can fail handshakes at will: a flood of
// them is one log line, while the server's other errors all pass.
func TestErrorLogQuietsHandshakeFloods(t *testing.T) {
	var buf bytes.Buffer
	l := listen.ErrorLog(slog.New(slog.NewTextHandler(&buf, nil)))
	for i := range 1000 {
		l.Printf("http: TLS handshake error from 10.0.0.%d:4000: tls: client didn't provide a certificate", i%250)
	}
	l.Printf("http: panic serving 10.0.0.1:4000: boom")
	if got := strings.Count(buf.String(), "TLS handshakes refused"); got != 1 {
		t.Errorf("%d handshake lines for a flood of 1000, want 1:\n%s", got, buf.String())
	}
	if !strings.Contains(buf.String(), "panic serving") {
		t.Error("another server error was swallowed")
	}
}

// --tls-min-version 1.3 refuses a TLS 1.2 client at the handshake.
func TestMinVersionRefusesOlderClients(t *testing.T) {
	ca := tlstest.NewCA(t, "mesh")
	leaf := ca.Server(t, "agent")
	vol := tlstest.NewVolume(t)
	vol.Swap(t, map[string][]byte{"tls.crt": leaf.CertPEM, "tls.key": leaf.KeyPEM})
	for _, tc := range []struct {
		min       string
		clientMax uint16
		ok        bool
	}{
		{"", tls.VersionTLS12, true},
		{"1.2", tls.VersionTLS11, false},
		{"1.3", tls.VersionTLS12, false},
		{"1.3", tls.VersionTLS13, true},
	} {
		r, err := listen.NewReloader(listen.TLSFiles{CertFile: vol.Path("tls.crt"), KeyFile: vol.Path("tls.key"), MinVersion: tc.min}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lis := listen.Secure(raw, listen.AdminListener, r)
		go func() {
			c, err := lis.Accept()
			if err == nil {
				c.(*tls.Conn).Handshake()
				c.Close()
			}
		}()
		c, err := tls.Dial("tcp", raw.Addr().String(), &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS10, MaxVersion: tc.clientMax})
		if (err == nil) != tc.ok {
			t.Errorf("minimum %q, client up to %x: handshake error %v, want ok=%v", tc.min, tc.clientMax, err, tc.ok)
		}
		if c != nil {
			c.Close()
		}
		raw.Close()
	}
}
