package xds

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	grpcxds "google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tokenwarden/tokenwarden/policy"
)

// The sidecar resources are for Envoy, which is not available here. grpc-go's
// xDS client is a real, independent consumer of the protocol, but it only
// takes client-side resources: an API listener named after the dial target
// and EDS clusters. clientResources builds that graph for a service from the
// same policy, so the test proves the server's protocol (ADS, versions, ACK,
// NACK, pushes on SetPolicy, node → service); ValidateAll proves the Envoy
// resources themselves.

// clientBackend says where clientResources sends a service's calls, and
// whether to break its routes on purpose.
type clientBackend struct {
	mu      sync.Mutex
	address string
	broken  bool
}

func (b *clientBackend) set(address string, broken bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.address, b.broken = address, broken
}

func (b *clientBackend) build(p *policy.Policy, service string, _ Config) (map[resource.Type][]types.Resource, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return clientResources(p, service, b.address, b.broken)
}

// clientResources is the grpc-go resource graph LDS → RDS → CDS → EDS for
// service: its calls go to address. broken puts an invalid RE2 regex in the
// routes, which ValidateAll accepts and the client must reject.
func clientResources(p *policy.Policy, service, address string, broken bool) (map[resource.Type][]types.Resource, error) {
	routeName := service + "_client"
	match := &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}
	if broken {
		match.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: "(unclosed"}}
	}
	rc := &route.RouteConfiguration{
		Name: routeName,
		VirtualHosts: []*route.VirtualHost{{
			Name:    service,
			Domains: p.Doc.Services[service].Hosts,
			Routes: []*route.Route{{
				Match:  match,
				Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: service}}},
			}},
		}},
	}
	routerConfig, err := typed(&router.Router{})
	if err != nil {
		return nil, err
	}
	manager, err := typed(&hcm.HttpConnectionManager{
		StatPrefix: service,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			ConfigSource: adsConfigSource(), RouteConfigName: routeName,
		}},
		HttpFilters: []*hcm.HttpFilter{{Name: wellknown.Router, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: routerConfig}}},
	})
	if err != nil {
		return nil, err
	}
	lis := &listener.Listener{
		Name:        service,
		ApiListener: &listener.ApiListener{ApiListener: manager},
		// Consistent() finds RDS references in filter chains only, not in
		// api_listener; grpc-go ignores a client listener's filter chains.
		FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{{
			Name: wellknown.HTTPConnectionManager, ConfigType: &listener.Filter_TypedConfig{TypedConfig: manager},
		}}}},
	}
	cl := &cluster.Cluster{
		Name:                 service,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: adsConfigSource()},
		LbPolicy:             cluster.Cluster_ROUND_ROBIN,
		ConnectTimeout:       durationpb.New(time.Second),
	}
	host, portText, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return nil, err
	}
	eds := &endpointv3.ClusterLoadAssignment{
		ClusterName: service,
		Endpoints: []*endpointv3.LocalityLbEndpoints{{
			Locality:            &core.Locality{Region: "node"},
			LoadBalancingWeight: wrapperspb.UInt32(1), // grpc-go skips weightless localities
			LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(host, uint32(port))}},
				HealthStatus:   core.HealthStatus_HEALTHY,
			}},
		}},
	}
	return map[resource.Type][]types.Resource{
		resource.ListenerType: {lis},
		resource.RouteType:    {rc},
		resource.ClusterType:  {cl},
		resource.EndpointType: {eds},
	}, nil
}

// xdsClient dials xds:///target with grpc-go's xDS client as node nodeID,
// presenting credential ("" for none) in its node metadata, and returns a
// probe: does a call now reach the backend named want?
func xdsClient(t *testing.T, addr, nodeID, credential, target string) func(want string) func() bool {
	t.Helper()
	return xdsClientWith(t, addr, nodeID, credential, target, `{"type": "insecure"}`)
}

// xdsClientWith is xdsClient with the bootstrap's channel_creds entry
// channelCreds: how the client dials the xDS server.
func xdsClientWith(t *testing.T, addr, nodeID, credential, target, channelCreds string) func(want string) func() bool {
	t.Helper()
	meta := ""
	if credential != "" {
		meta = fmt.Sprintf(`, "metadata": {%q: %q}`, CredentialMetadataKey, credential)
	}
	bootstrap := fmt.Appendf(nil, `{
		"xds_servers": [{
			"server_uri": %q,
			"channel_creds": [%s],
			"server_features": ["xds_v3"]
		}],
		"node": {"id": %q%s}
	}`, addr, channelCreds, nodeID, meta)
	resolver, err := grpcxds.NewXDSResolverWithConfigForTesting(bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///"+target, grpc.WithResolvers(resolver), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := healthpb.NewHealthClient(conn)
	return func(want string) func() bool {
		return func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			var md metadata.MD
			if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&md)); err != nil {
				return false
			}
			return len(md.Get("backend")) == 1 && md.Get("backend")[0] == want
		}
	}
}

// startBackend serves the gRPC health service and names itself in a header.
func startBackend(t *testing.T, name string) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if err := grpc.SetHeader(ctx, metadata.Pairs("backend", name)); err != nil {
			return nil, err
		}
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

// TestGRPCClientFollowsTheServer drives the server with grpc-go's xDS
// client: it resolves xds:///orders through LDS → RDS → CDS → EDS, calls the
// backend they name, follows a policy change to another backend, and rejects
// a bad route configuration, which the server counts.
func TestGRPCClientFollowsTheServer(t *testing.T) {
	backendA, backendB := startBackend(t, "a"), startBackend(t, "b")
	target := &clientBackend{address: backendA}
	ts := startServer(t, securedConfig(t), nil)
	ts.build = target.build
	if err := ts.SetPolicy(loadPolicy(t, "testdata/policy.yaml")); err != nil {
		t.Fatal(err)
	}
	reaches := xdsClient(t, ts.addr, ordersNode, ordersCredential, "orders")

	eventually(t, "calls through xDS to reach backend a", reaches("a"))

	target.set(backendB, false)
	if err := ts.SetPolicy(ordersWithExtraRoute(t)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "calls to move to backend b", reaches("b"))

	target.set(backendB, true)
	if err := ts.SetPolicy(loadPolicy(t, "testdata/policy.yaml")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "grpc-go to reject the broken routes", func() bool { return ts.nacks("route") >= 1 })
	time.Sleep(quiet)
	if got := ts.nacks("route"); got != 1 {
		t.Errorf("route NACKs %v, want 1 (a rejected version is not resent)", got)
	}
	if !reaches("b")() {
		t.Error("the client lost its last good configuration")
	}
	if got := metricValue(ts.metrics.connectedNodes); got != 1 {
		t.Errorf("connected nodes %v, want 1", got)
	}
}

// serviceBackends sends each service's calls to its own backend, so which
// backend a call reaches says which service's configuration the client got.
type serviceBackends map[string]string

func (b serviceBackends) build(p *policy.Policy, service string, _ Config) (map[resource.Type][]types.Resource, error) {
	res, err := clientResources(p, service, b[service], false)
	if err != nil {
		return nil, err
	}
	// Every service's listener answers the same dial target, "app".
	res[resource.ListenerType][0].(*listener.Listener).Name = "app"
	res[resource.RouteType][0].(*route.RouteConfiguration).VirtualHosts[0].Domains = []string{"*"}
	return res, nil
}

// TestGRPCClientImpostorFirstCannotChooseTheService attacks with grpc-go's
// xDS client: an impostor that holds the files credential (files has a
// public "/") connects first under the orders sidecar's node id; then the
// real orders sidecar connects. The real one must reach orders' backend,
// and a client with no credential or a forged one must get nothing.
func TestGRPCClientImpostorFirstCannotChooseTheService(t *testing.T) {
	backends := serviceBackends{}
	for _, svc := range []string{"orders", "inventory", "files"} {
		backends[svc] = startBackend(t, svc)
	}
	ts := startServer(t, securedConfig(t), nil)
	ts.build = backends.build
	if err := ts.SetPolicy(loadPolicy(t, "testdata/policy.yaml")); err != nil {
		t.Fatal(err)
	}

	impostor := xdsClient(t, ts.addr, ordersNode, filesCredential, "app")
	eventually(t, "the impostor to get its own (files) configuration", impostor("files"))

	genuine := xdsClient(t, ts.addr, ordersNode, ordersCredential, "app")
	eventually(t, "the real sidecar to get orders' configuration", genuine("orders"))
	if !impostor("files")() {
		t.Error("the impostor's configuration changed")
	}
	if got := metricValue(ts.metrics.connectedNodes); got != 2 {
		t.Errorf("connected nodes %v, want 2 (one id, two services)", got)
	}

	for _, cred := range []string{"", "forged-" + ordersCredential} {
		if xdsClient(t, ts.addr, ordersNode, cred, "app")("orders")() {
			t.Errorf("a client presenting %q reached orders", cred)
		}
	}
	eventually(t, "both credential-less and forged clients to be refused", func() bool {
		return metricValue(ts.metrics.refused.WithLabelValues(refusedNoCredential)) >= 1 &&
			metricValue(ts.metrics.refused.WithLabelValues(refusedBadCredential)) >= 1
	})
	if got := metricValue(ts.metrics.connectedNodes); got != 2 {
		t.Errorf("connected nodes %v after refused clients, want 2", got)
	}
	if strings.Contains(ts.logs.String(), ordersCredential) {
		t.Error("a credential was logged")
	}
}
