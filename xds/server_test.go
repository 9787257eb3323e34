package xds

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tokenwarden/tokenwarden/agent/listen"
	"github.com/tokenwarden/tokenwarden/policy"
)

// devConfig admits sidecars without a credential, naming their own
// service: the tests of everything but admission use it.
var devConfig = Config{AllowUnauthenticated: true}

const (
	ordersNode = "sidecar~10.0.0.1~orders-7d4b9c8f6d-x2x7k.default~default.svc.cluster.local"
	// quiet is how long a test waits to be sure nothing more arrives.
	quiet = 300 * time.Millisecond
	// patience bounds waiting for what must arrive.
	patience = 10 * time.Second
)

// logBuffer collects a server's logs; the server logs from many goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

type testServer struct {
	*Server
	addr string
	reg  *prometheus.Registry
	logs *logBuffer
}

// startServer serves srv on a loopback port until the test ends.
func startServer(t *testing.T, cfg Config, p *policy.Policy) *testServer {
	t.Helper()
	ts := &testServer{reg: prometheus.NewRegistry(), logs: &logBuffer{}}
	cfg.Registerer = ts.reg
	cfg.Logger = slog.New(slog.NewTextHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts.Server = srv
	if p != nil {
		if err := srv.SetPolicy(p); err != nil {
			t.Fatal(err)
		}
	}
	ts.serve(t, "127.0.0.1:0")
	return ts
}

func (ts *testServer) serve(t *testing.T, addr string) {
	t.Helper()
	lis, err := listen.Open(addr, UnixSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(addr, unixPrefix) {
		ts.addr = "unix://" + lis.Addr().String()
	} else {
		ts.addr = lis.Addr().String()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ts.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

func (ts *testServer) nacks(typ string) float64 {
	return metricValue(ts.metrics.nacks.WithLabelValues(typ))
}

// eventually polls cond until it holds or patience runs out.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// adsClient is a raw state-of-the-world ADS client, as Envoy would be.
type adsClient struct {
	t         *testing.T
	node      *core.Node
	stream    discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	responses chan *discovery.DiscoveryResponse
	ended     chan error // the error that ended the stream
	close     func()     // ends the stream and its connection
	sentNode  bool
}

func dialADS(t *testing.T, addr string, node *core.Node) *adsClient {
	t.Helper()
	return dialADSWith(t, addr, node, "")
}

// dialADSWith opens a stream that sends credential in the call metadata,
// as Envoy's initial_metadata would ("" sends none).
func dialADSWith(t *testing.T, addr string, node *core.Node, credential string) *adsClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if credential != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, CredentialHeader, credential)
	}
	closeAll := func() {
		cancel()
		conn.Close()
	}
	t.Cleanup(closeAll)
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &adsClient{t: t, node: node, stream: stream, responses: make(chan *discovery.DiscoveryResponse, 16), ended: make(chan error, 1), close: closeAll}
	go func() {
		defer close(c.responses)
		for {
			resp, err := stream.Recv()
			if err != nil {
				c.ended <- err
				return
			}
			c.responses <- resp
		}
	}()
	return c
}

func (c *adsClient) send(req *discovery.DiscoveryRequest) {
	c.t.Helper()
	if !c.sentNode {
		// Like Envoy's set_node_on_first_message_only.
		req.Node = c.node
		c.sentNode = true
	}
	// io.EOF says the server ended the stream; Recv (c.ended) has why.
	if err := c.stream.Send(req); err != nil && !errors.Is(err, io.EOF) {
		c.t.Fatal(err)
	}
}

func (c *adsClient) subscribe(typeURL string, names ...string) {
	c.send(&discovery.DiscoveryRequest{TypeUrl: typeURL, ResourceNames: names})
}

func (c *adsClient) ack(resp *discovery.DiscoveryResponse, names ...string) {
	c.send(&discovery.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResourceNames: names, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()})
}

func (c *adsClient) nack(resp *discovery.DiscoveryResponse, previous string, names ...string) {
	c.send(&discovery.DiscoveryRequest{
		TypeUrl: resp.GetTypeUrl(), ResourceNames: names, VersionInfo: previous, ResponseNonce: resp.GetNonce(),
		ErrorDetail: &status.Status{Code: 3, Message: "test: rejected on purpose"},
	})
}

func (c *adsClient) recv(typeURL string) *discovery.DiscoveryResponse {
	c.t.Helper()
	select {
	case resp, ok := <-c.responses:
		if !ok {
			c.t.Fatal("stream ended")
		}
		if resp.GetTypeUrl() != typeURL {
			c.t.Fatalf("got a %s response, want %s", typeName(resp.GetTypeUrl()), typeName(typeURL))
		}
		return resp
	case <-time.After(patience):
		c.t.Fatalf("no %s response", typeName(typeURL))
		return nil
	}
}

func (c *adsClient) expectNothing() {
	c.t.Helper()
	select {
	case resp := <-c.responses:
		c.t.Fatalf("unexpected %s response version %s", typeName(resp.GetTypeUrl()), resp.GetVersionInfo())
	case <-time.After(quiet):
	}
}

// handshake does what Envoy does on start: clusters, listeners, then the
// routes the listener names; it ACKs all and returns the route response.
func (c *adsClient) handshake() *discovery.DiscoveryResponse {
	c.t.Helper()
	c.subscribe(resource.ClusterType)
	c.ack(c.recv(resource.ClusterType))
	c.subscribe(resource.ListenerType)
	c.ack(c.recv(resource.ListenerType))
	c.subscribe(resource.RouteType, RouteConfigName)
	rds := c.recv(resource.RouteType)
	c.ack(rds, RouteConfigName)
	return rds
}

func routeConfigOf(t *testing.T, resp *discovery.DiscoveryResponse) *route.RouteConfiguration {
	t.Helper()
	if len(resp.GetResources()) != 1 {
		t.Fatalf("%d route configurations, want 1", len(resp.GetResources()))
	}
	var rc route.RouteConfiguration
	if err := resp.GetResources()[0].UnmarshalTo(&rc); err != nil {
		t.Fatal(err)
	}
	return &rc
}

func vhostNames(rc *route.RouteConfiguration) []string {
	var names []string
	for _, vh := range rc.GetVirtualHosts() {
		names = append(names, vh.GetName())
	}
	return names
}

// ordersWithExtraRoute is the test policy with one more orders route.
func ordersWithExtraRoute(t *testing.T) *policy.Policy {
	t.Helper()
	data, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	data = bytes.Replace(data, []byte("      - { path: /healthz, public: true }"),
		[]byte("      - { path: /healthz, public: true }\n      - { path: /readyz, public: true }"), 1)
	p, err := policy.Load("changed.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSidecarGetsItsServiceAndFollowsPolicyChanges(t *testing.T) {
	ts := startServer(t, devConfig, loadPolicy(t, "testdata/policy.yaml"))
	c := dialADS(t, ts.addr, &core.Node{Id: ordersNode})
	rds := c.handshake()
	if got := vhostNames(routeConfigOf(t, rds)); strings.Join(got, ",") != "orders,unknown_host" {
		t.Fatalf("virtual hosts %v, want orders and the fallback", got)
	}
	if got := metricValue(ts.metrics.connectedNodes); got != 1 {
		t.Errorf("connected nodes %v, want 1", got)
	}

	// Reloading an unchanged policy pushes nothing.
	if err := ts.SetPolicy(loadPolicy(t, "testdata/policy.yaml")); err != nil {
		t.Fatal(err)
	}
	c.expectNothing()

	// A route change pushes the routes alone: listener and clusters did not change.
	if err := ts.SetPolicy(ordersWithExtraRoute(t)); err != nil {
		t.Fatal(err)
	}
	next := c.recv(resource.RouteType)
	if next.GetVersionInfo() == rds.GetVersionInfo() {
		t.Fatal("new routes under the old version")
	}
	if n := len(routeConfigOf(t, next).GetVirtualHosts()[0].GetRoutes()); n != 5 {
		t.Errorf("%d routes after the change, want 5", n)
	}
	c.ack(next, RouteConfigName)
	c.expectNothing()
	if got := metricValue(ts.metrics.snapshotVersion); got != 3 {
		t.Errorf("snapshot version %v, want 3 (three policies applied)", got)
	}
}

func TestSidecarConnectingBeforeThePolicyWaitsForIt(t *testing.T) {
	ts := startServer(t, devConfig, nil)
	c := dialADS(t, ts.addr, &core.Node{Id: ordersNode})
	c.subscribe(resource.ClusterType)
	c.expectNothing()
	if err := ts.SetPolicy(loadPolicy(t, "testdata/policy.yaml")); err != nil {
		t.Fatal(err)
	}
	c.ack(c.recv(resource.ClusterType))
}

func TestUnknownNodeGetsDenyAll(t *testing.T) {
	ts := startServer(t, devConfig, loadPolicy(t, "testdata/policy.yaml"))

	anonymous := dialADS(t, ts.addr, &core.Node{Id: "envoy-1"})
	rc := routeConfigOf(t, anonymous.handshake())
	if got := vhostNames(rc); strings.Join(got, ",") != "unknown_host" {
		t.Fatalf("virtual hosts %v, want only the deny-all fallback", got)
	}
	billing := dialADS(t, ts.addr, &core.Node{Id: "envoy-2", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		ServiceMetadataKey: structpb.NewStringValue("billing"),
	}}})
	billing.handshake()

	if got := metricValue(ts.metrics.unknownNodes); got != 2 {
		t.Errorf("unknown nodes %v, want 2", got)
	}
	logs := ts.logs.String()
	for _, want := range []string{`node=envoy-1`, `not TYPE~IP~POD.NAMESPACE~DOMAIN`, `node=envoy-2`, `\"billing\" is not in the policy`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
	if n := strings.Count(logs, "deny-all"); n != 2 {
		t.Errorf("%d deny-all log lines, want one per unknown node", n)
	}

	// A policy that adds billing gives it its routes, without counting again.
	data, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// services is the file's last section.
	data = append(data, []byte("  billing:\n    hosts: [billing]\n    routes:\n      - { path: \"/**\", scopes: [orders:read] }\n")...)
	p, err := policy.Load("billing.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.SetPolicy(p); err != nil {
		t.Fatal(err)
	}
	if got := vhostNames(routeConfigOf(t, billing.recv(resource.RouteType))); strings.Join(got, ",") != "billing,unknown_host" {
		t.Errorf("billing's virtual hosts %v after the policy named it", got)
	}
	anonymous.expectNothing()
	if got := metricValue(ts.metrics.unknownNodes); got != 2 {
		t.Errorf("unknown nodes %v, want still 2", got)
	}
}

func TestNACKIsCountedAndNotResent(t *testing.T) {
	ts := startServer(t, devConfig, loadPolicy(t, "testdata/policy.yaml"))
	c := dialADS(t, ts.addr, &core.Node{Id: ordersNode})
	c.subscribe(resource.ClusterType)
	c.ack(c.recv(resource.ClusterType))
	c.subscribe(resource.ListenerType)
	c.ack(c.recv(resource.ListenerType))
	c.subscribe(resource.RouteType, RouteConfigName)
	rds := c.recv(resource.RouteType)

	c.nack(rds, "", RouteConfigName)
	eventually(t, "the NACK to be counted", func() bool { return ts.nacks("route") == 1 })
	// Without care, go-control-plane would resend the rejected version at
	// once, and the sidecar would reject it again, forever.
	c.expectNothing()
	if got := ts.nacks("route"); got != 1 {
		t.Errorf("route NACKs %v, want 1", got)
	}
	if got := ts.nacks("listener"); got != 0 {
		t.Errorf("listener NACKs %v, want 0", got)
	}
	logs := ts.logs.String()
	for _, want := range []string{"rejected its configuration", "test: rejected on purpose", "type=route", "service=orders", "version=" + rds.GetVersionInfo()} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}

	// The next policy is sent as usual.
	if err := ts.SetPolicy(ordersWithExtraRoute(t)); err != nil {
		t.Fatal(err)
	}
	c.ack(c.recv(resource.RouteType), RouteConfigName)
}

func TestDeltaStream(t *testing.T) {
	ts := startServer(t, devConfig, loadPolicy(t, "testdata/policy.yaml"))
	conn, err := grpc.NewClient(ts.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	send := func(req *discovery.DeltaDiscoveryRequest) {
		t.Helper()
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	recv := func(typeURL string) *discovery.DeltaDiscoveryResponse {
		t.Helper()
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetTypeUrl() != typeURL {
			t.Fatalf("got %s, want %s", typeName(resp.GetTypeUrl()), typeName(typeURL))
		}
		return resp
	}

	send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: ordersNode}, TypeUrl: resource.ClusterType})
	cds := recv(resource.ClusterType)
	if len(cds.GetResources()) != 2 {
		t.Fatalf("%d clusters, want 2", len(cds.GetResources()))
	}
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: cds.GetNonce()})
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.RouteType, ResourceNamesSubscribe: []string{RouteConfigName}})
	rds := recv(resource.RouteType)
	if len(rds.GetResources()) != 1 {
		t.Fatalf("%d route configurations, want 1", len(rds.GetResources()))
	}
	if got := metricValue(ts.metrics.connectedNodes); got != 1 {
		t.Errorf("connected nodes %v, want 1", got)
	}

	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.RouteType, ResponseNonce: rds.GetNonce(),
		ErrorDetail: &status.Status{Code: 3, Message: "test: delta rejection"}})
	eventually(t, "the delta NACK to be counted", func() bool { return ts.nacks("route") == 1 })

	if err := ts.SetPolicy(ordersWithExtraRoute(t)); err != nil {
		t.Fatal(err)
	}
	next := recv(resource.RouteType)
	if len(next.GetResources()) != 1 || next.GetResources()[0].GetVersion() == rds.GetResources()[0].GetVersion() {
		t.Fatalf("delta push %v, want the changed route configuration", next.GetResources())
	}
	send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.RouteType, ResponseNonce: next.GetNonce()})

	cancel()
	eventually(t, "the node to be forgotten", func() bool { return metricValue(ts.metrics.connectedNodes) == 0 })
}

func TestNodeIsForgottenWithItsLastStream(t *testing.T) {
	ts := startServer(t, devConfig, loadPolicy(t, "testdata/policy.yaml"))
	conn, err := grpc.NewClient(ts.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := discovery.NewAggregatedDiscoveryServiceClient(conn)
	var cancels []context.CancelFunc
	for range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		cancels = append(cancels, cancel)
		s, err := client.StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: ordersNode}, TypeUrl: resource.ClusterType}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	if got := metricValue(ts.metrics.connectedNodes); got != 1 {
		t.Errorf("connected nodes %v with two streams of one node, want 1", got)
	}
	cancels[0]()
	time.Sleep(quiet)
	key := identity{nodeID: ordersNode, service: "orders"}.key()
	if _, err := ts.cache.GetSnapshot(key); err != nil {
		t.Errorf("snapshot dropped while a stream is open: %v", err)
	}
	cancels[1]()
	eventually(t, "the node to be forgotten", func() bool { return metricValue(ts.metrics.connectedNodes) == 0 })
	if _, err := ts.cache.GetSnapshot(key); err == nil {
		t.Error("snapshot kept after the last stream closed")
	}
}

func TestSetPolicyKeepsLastGoodConfiguration(t *testing.T) {
	ts := startServer(t, devConfig, loadPolicy(t, "testdata/policy.yaml"))
	c := dialADS(t, ts.addr, &core.Node{Id: ordersNode})
	c.handshake()
	ts.build = func(*policy.Policy, string, Config) (map[resource.Type][]types.Resource, error) {
		return nil, errors.New("broken builder")
	}
	if err := ts.SetPolicy(ordersWithExtraRoute(t)); err == nil {
		t.Fatal("SetPolicy succeeded with a failing build")
	}
	c.expectNothing()
	if got := metricValue(ts.metrics.snapshotVersion); got != 1 {
		t.Errorf("snapshot version %v, want 1", got)
	}
	if err := ts.SetPolicy(nil); err == nil {
		t.Error("SetPolicy accepted nil")
	}
}

func TestServeOnUnixSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "xds.sock")
	// A socket left by a previous run is replaced.
	stale, err := listen.Open("unix://"+path, UnixSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	stale.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	stale.Close()

	ts := &testServer{reg: prometheus.NewRegistry(), logs: &logBuffer{}}
	srv, err := New(Config{AllowUnauthenticated: true, Registerer: ts.reg, Logger: slog.New(slog.NewTextHandler(ts.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ts.Server = srv
	if err := srv.SetPolicy(loadPolicy(t, "testdata/policy.yaml")); err != nil {
		t.Fatal(err)
	}
	ts.serve(t, "unix://"+path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != UnixSocketMode {
		t.Errorf("socket mode %v, want %v", fi.Mode().Perm(), os.FileMode(UnixSocketMode))
	}
	c := dialADS(t, "unix://"+path, &core.Node{Id: ordersNode})
	c.handshake()
}

func TestServeStopsWhenContextEnds(t *testing.T) {
	srv, err := New(Config{AllowUnauthenticated: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.SetPolicy(loadPolicy(t, "testdata/policy.yaml")); err != nil {
		t.Fatal(err)
	}
	lis, err := listen.Open("127.0.0.1:0", UnixSocketMode)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	c := dialADS(t, lis.Addr().String(), &core.Node{Id: ordersNode})
	c.handshake() // an open stream must not hold up the stop
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(gracefulStopTimeout):
		t.Fatal("Serve did not stop gracefully in time")
	}
}

func TestMetricsRegisterOnce(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := New(Config{Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Registerer: reg}); err == nil {
		t.Error("a second server registered the same metrics")
	}
	if n, err := gatherAndCount(reg); err != nil || n != 14 {
		t.Errorf("gathered %d series (%v), want 4 nack types + 7 refusal reasons + 3", n, err)
	}
}

// metricValue reads a counter or gauge (whose Write cannot fail).
func metricValue(m prometheus.Metric) float64 {
	var out dto.Metric
	_ = m.Write(&out)
	if c := out.GetCounter(); c != nil {
		return c.GetValue()
	}
	return out.GetGauge().GetValue()
}

func gatherAndCount(g prometheus.Gatherer) (int, error) {
	families, err := g.Gather()
	n := 0
	for _, f := range families {
		n += len(f.GetMetric())
	}
	return n, err
}
