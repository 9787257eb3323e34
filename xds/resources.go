package xds

import (
	"errors"
	"fmt"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tokenwarden/tokenwarden/policy"
)

// Names of the resources every sidecar gets. They are the same on every
// node: a sidecar serves one service, so nothing needs telling apart.
const (
	ListenerName     = "tokenwarden_inbound"
	RouteConfigName  = "tokenwarden_inbound"
	AppClusterName   = "tokenwarden_app"
	AuthzClusterName = "tokenwarden_authz"
)

const (
	// localConnectTimeout bounds connecting to the application or the agent.
	// Both are on this node: a connection slower than this is not coming.
	localConnectTimeout = time.Second

	// httpProtocolOptionsName is the key Envoy looks up a cluster's HTTP
	// protocol options under.
	httpProtocolOptionsName = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// ErrUnknownService says the policy has no such service.
var ErrUnknownService = errors.New("service not in the policy")

// Resources builds the Envoy v3 resources of a sidecar of service: the
// inbound listener (ext_authz, then the router), its route configuration
// (fetched over ADS), the application cluster and the agent's ext_authz
// cluster. Every resource has passed ValidateAll.
func Resources(p *policy.Policy, service string, cfg Config) (map[resource.Type][]types.Resource, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if _, ok := p.Doc.Services[service]; !ok {
		return nil, fmt.Errorf("%w: %q (services: %v)", ErrUnknownService, service, p.ServiceNames())
	}
	rc, err := routeConfiguration(p, service)
	if err != nil {
		return nil, err
	}
	return sidecarResources(rc, cfg)
}

// denyAllResources is the configuration of a sidecar whose service the
// policy does not know: every request goes through ext_authz, which denies it.
func denyAllResources(cfg Config) (map[resource.Type][]types.Resource, error) {
	rc, err := routeConfiguration(nil, "")
	if err != nil {
		return nil, err
	}
	return sidecarResources(rc, cfg)
}

func sidecarResources(rc *route.RouteConfiguration, cfg Config) (map[resource.Type][]types.Resource, error) {
	m, err := httpConnectionManager(cfg)
	if err != nil {
		return nil, err
	}
	m.RouteSpecifier = &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
		ConfigSource:    adsConfigSource(),
		RouteConfigName: rc.GetName(),
	}}
	lis, err := inboundListener(cfg, m)
	if err != nil {
		return nil, err
	}
	app, authz, err := localClusters(cfg)
	if err != nil {
		return nil, err
	}
	res := map[resource.Type][]types.Resource{
		resource.ListenerType: {lis},
		resource.RouteType:    {rc},
		resource.ClusterType:  {app, authz},
	}
	if err := validateResources(res); err != nil {
		return nil, err
	}
	return res, nil
}

// httpConnectionManager is the inbound HTTP connection manager without its
// routes: ext_authz on every request, then the router.
func httpConnectionManager(cfg Config) (*hcm.HttpConnectionManager, error) {
	authz, err := typed(&extauthz.ExtAuthz{
		Services: &extauthz.ExtAuthz_GrpcService{GrpcService: &core.GrpcService{
			TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{
				ClusterName: AuthzClusterName,
			}},
			Timeout: durationpb.New(cfg.AuthzTimeout),
		}},
		TransportApiVersion: core.ApiVersion_V3,
		// Fail closed: without an answer from the agent, nothing passes.
		FailureModeAllow: false,
		// 503, not 403, so an agent outage is told apart from a denial.
		StatusOnError:          &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable},
		IncludePeerCertificate: true,
	})
	if err != nil {
		return nil, err
	}
	routerConfig, err := typed(&router.Router{})
	if err != nil {
		return nil, err
	}
	return &hcm.HttpConnectionManager{
		StatPrefix: ListenerName,
		CodecType:  hcm.HttpConnectionManager_AUTO,
		// ext_authz, the routes and the application must all see the same
		// path, or a route could match one path while the application serves
		// another: resolve dot segments, merge slashes, refuse %2F and %5C.
		NormalizePath:                wrapperspb.Bool(true),
		MergeSlashes:                 true,
		PathWithEscapedSlashesAction: hcm.HttpConnectionManager_REJECT_REQUEST,
		// Policy hosts carry no port; "orders:8080" must match "orders".
		StripPortMode: &hcm.HttpConnectionManager_StripAnyHostPort{StripAnyHostPort: true},
		HttpFilters: []*hcm.HttpFilter{
			{Name: wellknown.HTTPExternalAuthorization, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: authz}},
			{Name: wellknown.Router, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: routerConfig}},
		},
	}, nil
}

func inboundListener(cfg Config, m *hcm.HttpConnectionManager) (*listener.Listener, error) {
	manager, err := typed(m)
	if err != nil {
		return nil, err
	}
	return &listener.Listener{
		Name:             ListenerName,
		Address:          socketAddress(cfg.InboundAddress, cfg.InboundPort),
		TrafficDirection: core.TrafficDirection_INBOUND,
		FilterChains: []*listener.FilterChain{{
			Filters: []*listener.Filter{{
				Name:       wellknown.HTTPConnectionManager,
				ConfigType: &listener.Filter_TypedConfig{TypedConfig: manager},
			}},
		}},
	}, nil
}

// localClusters are the application and the agent's ext_authz service. Both
// are fixed node-local addresses, so they are STATIC: no EDS round trip, and
// unix sockets work.
func localClusters(cfg Config) (app, authz *cluster.Cluster, err error) {
	app, err = staticCluster(AppClusterName, cfg.AppAddress)
	if err != nil {
		return nil, nil, err
	}
	authz, err = staticCluster(AuthzClusterName, cfg.AuthzAddress)
	if err != nil {
		return nil, nil, err
	}
	// ext_authz over gRPC needs HTTP/2 to the agent.
	h2, err := typed(&upstreamhttp.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &core.Http2ProtocolOptions{},
				},
			},
		},
	})
	if err != nil {
		return nil, nil, err
	}
	authz.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsName: h2}
	if authz.TransportSocket, err = cfg.AuthzTLS.transportSocket("h2"); err != nil {
		return nil, nil, err
	}
	return app, authz, nil
}

func staticCluster(name, address string) (*cluster.Cluster, error) {
	ep, err := parseEndpoint(address)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", name, err)
	}
	addr := socketAddress(ep.ip, ep.port)
	if ep.unixPath != "" {
		addr = &core.Address{Address: &core.Address_Pipe{Pipe: &core.Pipe{Path: ep.unixPath}}}
	}
	return &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(localConnectTimeout),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: addr}},
				}},
			}},
		},
	}, nil
}

func socketAddress(ip string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address:       ip,
		PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
	}}}
}

func adsConfigSource() *core.ConfigSource {
	return &core.ConfigSource{
		ResourceApiVersion:    core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	}
}

// typed wraps m in an Any, marshalled deterministically so that equal
// configurations hash to equal versions.
func typed(m proto.Message) (*anypb.Any, error) {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		return nil, fmt.Errorf("marshal %T: %w", m, err)
	}
	return a, nil
}
