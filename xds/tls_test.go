package xds

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcxds "google.golang.org/grpc/xds"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/tokenwarden/tokenwarden/agent/listen"
	"github.com/tokenwarden/tokenwarden/agent/listen/tlstest"
)

// startTLSServer is startServer behind the agent's TLS listener: TLS from
// serverCA's certificate, client certificates of clientCA required.
func startTLSServer(t *testing.T, cfg Config, dir string, serverCA, clientCA *tlstest.CA) *testServer {
	t.Helper()
	leaf := serverCA.Server(t, "agent")
	write(t, dir, map[string][]byte{"tls.crt": leaf.CertPEM, "tls.key": leaf.KeyPEM, "client-ca.pem": clientCA.PEM})
	r, err := listen.NewReloader(listen.TLSFiles{
		CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"),
		ClientCAs: listen.ClientCAs{XDS: filepath.Join(dir, "client-ca.pem")},
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{reg: prometheus.NewRegistry(), logs: &logBuffer{}}
	cfg.Registerer = ts.reg
	cfg.Logger = slog.New(slog.NewTextHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if ts.Server, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	lis, err := listen.Open("127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = lis.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ts.Serve(ctx, listen.Secure(lis, listen.XDSListener, r)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ts
}

func write(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestGRPCClientOverMutualTLS: grpc-go's real xDS client, configured with
// the bootstrap's "tls" channel credentials, gets its configuration from
// an xDS server that requires client certificates; clients without a
// certificate, or with one of another CA, get nothing.
func TestGRPCClientOverMutualTLS(t *testing.T) {
	backend := startBackend(t, "a")
	serverCA, clientCA, stranger := tlstest.NewCA(t, "agent CA"), tlstest.NewCA(t, "sidecars"), tlstest.NewCA(t, "stranger")
	dir := t.TempDir()
	ts := startTLSServer(t, securedConfig(t), dir, serverCA, clientCA)
	ts.build = (&clientBackend{address: backend}).build
	if err := ts.SetPolicy(loadPolicy(t, "testdata/policy.yaml")); err != nil {
		t.Fatal(err)
	}
	good, foreign := clientCA.Client(t, "orders-sidecar"), stranger.Client(t, "intruder")
	write(t, dir, map[string][]byte{"server-ca.pem": serverCA.PEM,
		"good.pem": good.CertPEM, "good-key.pem": good.KeyPEM, "foreign.pem": foreign.CertPEM, "foreign-key.pem": foreign.KeyPEM})
	creds := func(cert string) string {
		c := fmt.Sprintf(`"ca_certificate_file": %q`, filepath.Join(dir, "server-ca.pem"))
		if cert != "" {
			c += fmt.Sprintf(`, "certificate_file": %q, "private_key_file": %q`, filepath.Join(dir, cert+".pem"), filepath.Join(dir, cert+"-key.pem"))
		}
		return `{"type": "tls", "config": {` + c + `}}`
	}
	reaches := xdsClientWith(t, ts.addr, ordersNode, ordersCredential, "orders", creds("good"))
	eventually(t, "calls through xDS over mTLS to reach backend a", reaches("a"))

	refused := map[string]string{
		"no client certificate":     creds(""),
		"certificate of another CA": creds("foreign"),
		"plain text":                `{"type": "insecure"}`,
	}
	for name, cc := range refused {
		err := xdsCallError(t, ts.addr, ordersNode+nodeSuffix(name), ordersCredential, "orders", cc)
		// The call waited for the resolver's verdict, and it failed.
		if err == nil {
			t.Errorf("%s: a call went through", name)
		}
	}
	// Refused at the transport: the server never saw their streams (it
	// logs every sidecar it connects, by node id).
	logs := ts.logs.String()
	if !strings.Contains(logs, "xds: sidecar connected") {
		t.Fatal("the admitted sidecar was not logged; the check below would prove nothing")
	}
	for name := range refused {
		if strings.Contains(logs, nodeSuffix(name)) {
			t.Errorf("%s: the server saw the stream", name)
		}
	}
}

// The ext_authz cluster sidecars get dials the agent over TLS when
// AuthzTLS is set: an Envoy transport_socket that decodes strictly into an
// UpstreamTlsContext and passes ValidateAll, in both the xDS resources and
// the rendered bootstrap.
func TestAuthzClusterOverTLS(t *testing.T) {
	p := loadPolicy(t, "testdata/policy.yaml")
	up := UpstreamTLS{CAFile: "/etc/tokenwarden/tls/ca.crt", CertFile: "/etc/sidecar/tls.crt", KeyFile: "/etc/sidecar/tls.key", ServerName: "tokenwarden.tokenwarden.svc"}
	res, err := Resources(p, "orders", Config{AuthzAddress: "10.0.0.1:9001", AuthzTLS: up})
	if err != nil {
		t.Fatal(err)
	}
	if err := validateResources(res); err != nil {
		t.Fatal(err)
	}
	var authz *cluster.Cluster
	for _, r := range res[resource.ClusterType] {
		if c := r.(*cluster.Cluster); c.Name == AuthzClusterName {
			authz = c
		}
	}
	checkUpstreamTLS(t, authz, up)
	for _, r := range res[resource.ClusterType] {
		if c := r.(*cluster.Cluster); c.Name != AuthzClusterName && c.TransportSocket != nil {
			t.Errorf("cluster %s got a transport socket", c.Name)
		}
	}

	y, err := RenderBootstrap(p, "sidecar~10.0.0.7~orders-1.default~default.svc.cluster.local", "orders", Config{AuthzAddress: "10.0.0.1:9001", AuthzTLS: up})
	if err != nil {
		t.Fatal(err)
	}
	b := parseBootstrap(t, y)
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.Name == AuthzClusterName {
			checkUpstreamTLS(t, c, up)
		}
	}

	// Server-only TLS: no client certificate, no SAN matcher.
	res, err = Resources(p, "orders", Config{AuthzAddress: "10.0.0.1:9001", AuthzTLS: UpstreamTLS{CAFile: up.CAFile}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res[resource.ClusterType] {
		if c := r.(*cluster.Cluster); c.Name == AuthzClusterName {
			checkUpstreamTLS(t, c, UpstreamTLS{CAFile: up.CAFile})
		}
	}
}

func checkUpstreamTLS(t *testing.T, c *cluster.Cluster, want UpstreamTLS) {
	t.Helper()
	ts := c.GetTransportSocket()
	if ts == nil || ts.Name != "envoy.transport_sockets.tls" {
		t.Fatalf("ext_authz cluster transport socket %v", ts)
	}
	var ctx tlsv3.UpstreamTlsContext
	if err := ts.GetTypedConfig().UnmarshalTo(&ctx); err != nil {
		t.Fatal(err)
	}
	// Strictly decoded: the JSON form reads back into the same message
	// with no unknown field.
	js, err := protojson.Marshal(&ctx)
	if err != nil {
		t.Fatal(err)
	}
	var again tlsv3.UpstreamTlsContext
	if err := (protojson.UnmarshalOptions{}).Unmarshal(js, &again); err != nil || !proto.Equal(&ctx, &again) {
		t.Fatalf("UpstreamTlsContext does not round-trip: %v", err)
	}
	common := ctx.GetCommonTlsContext()
	if got := common.GetValidationContext().GetTrustedCa().GetFilename(); got != want.CAFile {
		t.Errorf("trusted CA %q, want %q", got, want.CAFile)
	}
	if len(common.GetAlpnProtocols()) != 1 || common.GetAlpnProtocols()[0] != "h2" {
		t.Errorf("ALPN %v, want h2 (the agent's gRPC listener speaks only h2)", common.GetAlpnProtocols())
	}
	if common.GetTlsParams().GetTlsMinimumProtocolVersion() != tlsv3.TlsParameters_TLSv1_2 {
		t.Errorf("minimum version %v", common.GetTlsParams().GetTlsMinimumProtocolVersion())
	}
	certs := common.GetTlsCertificates()
	if want.CertFile == "" {
		if len(certs) != 0 {
			t.Errorf("client certificates %v without CertFile", certs)
		}
	} else if len(certs) != 1 || certs[0].GetCertificateChain().GetFilename() != want.CertFile || certs[0].GetPrivateKey().GetFilename() != want.KeyFile {
		t.Errorf("client certificate %v", certs)
	}
	sans := common.GetValidationContext().GetMatchTypedSubjectAltNames()
	if want.ServerName == "" {
		if len(sans) != 0 || ctx.GetSni() != "" {
			t.Errorf("SAN matchers %v, SNI %q without a server name", sans, ctx.GetSni())
		}
	} else if len(sans) != 1 || sans[0].GetMatcher().GetExact() != want.ServerName || ctx.GetSni() != want.ServerName {
		t.Errorf("SAN matchers %v, SNI %q, want %s", sans, ctx.GetSni(), want.ServerName)
	}
}

func TestAuthzTLSConfigRefused(t *testing.T) {
	for name, cfg := range map[string]Config{
		"unix socket":             {AuthzAddress: "unix:///run/tokenwarden/authz.sock", AuthzTLS: UpstreamTLS{CAFile: "/ca.pem"}},
		"certificate without key": {AuthzTLS: UpstreamTLS{CAFile: "/ca.pem", CertFile: "/c.pem"}},
		"relative CA":             {AuthzTLS: UpstreamTLS{CAFile: "ca.pem"}},
		"client cert without CA":  {AuthzTLS: UpstreamTLS{CertFile: "/c.pem", KeyFile: "/k.pem"}},
		"server name without CA":  {AuthzTLS: UpstreamTLS{ServerName: "agent"}},
	} {
		if _, err := cfg.withDefaults(); err == nil || !strings.Contains(err.Error(), "authz TLS") {
			t.Errorf("%s: %v, want an authz TLS error", name, err)
		}
	}
}

// xdsCallError makes one call through grpc-go's xDS client, waiting for
// the resolver's verdict, and returns its error.
func xdsCallError(t *testing.T, addr, nodeID, credential, target, channelCreds string) error {
	t.Helper()
	meta := fmt.Sprintf(`, "metadata": {%q: %q}`, CredentialMetadataKey, credential)
	bootstrap := fmt.Appendf(nil, `{"xds_servers": [{"server_uri": %q, "channel_creds": [%s], "server_features": ["xds_v3"]}], "node": {"id": %q%s}}`,
		addr, channelCreds, nodeID, meta)
	resolver, err := grpcxds.NewXDSResolverWithConfigForTesting(bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///"+target, grpc.WithResolvers(resolver), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func nodeSuffix(name string) string { return "-" + strings.ReplaceAll(name, " ", "-") }

// deploy/envoy/bootstrap-tls.yaml is bootstrap.yaml with the xDS cluster
// dialled over mTLS: valid, strictly decoded, and equal to bootstrap.yaml
// but for that transport socket.
func TestDeployBootstrapTLSIsValid(t *testing.T) {
	plain, err := os.ReadFile("../deploy/envoy/bootstrap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tlsY, err := os.ReadFile("../deploy/envoy/bootstrap-tls.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b := parseBootstrap(t, tlsY)
	var xdsCluster *cluster.Cluster
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.Name == "tokenwarden_xds" {
			xdsCluster = c
		}
	}
	if xdsCluster == nil {
		t.Fatal("no tokenwarden_xds cluster")
	}
	checkUpstreamTLS(t, xdsCluster, UpstreamTLS{CAFile: "/etc/tokenwarden/tls/ca.crt", CertFile: "/etc/sidecar/tls/tls.crt", KeyFile: "/etc/sidecar/tls/tls.key", ServerName: "${AGENT_NAME}"})
	xdsCluster.TransportSocket = nil
	if want := parseBootstrap(t, plain); !proto.Equal(b, want) {
		t.Error("bootstrap-tls.yaml differs from bootstrap.yaml beyond the xDS cluster's transport socket")
	}
}
