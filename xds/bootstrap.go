package xds

import (
	"fmt"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"sigs.k8s.io/yaml"

	"github.com/tokenwarden/tokenwarden/policy"
)

// adminPort is where a rendered sidecar's admin interface listens, on
// loopback only: the port Istio's sidecars use, for /ready probes and stats.
const adminPort = 15000

// RenderBootstrap renders the complete static Envoy configuration of a
// sidecar of service (an envoy.config.bootstrap.v3.Bootstrap with
// static_resources, as YAML) for operators who run without xDS. An empty
// service is derived from nodeID by ServiceFromNodeID. It carries the same
// listener, routes and clusters the xDS server would serve, with the routes
// inline, and has passed ValidateAll. It is static: render it again after
// every policy change.
func RenderBootstrap(p *policy.Policy, nodeID, service string, cfg Config) ([]byte, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if nodeID == "" {
		return nil, fmt.Errorf("render: a node id is required (Envoy's node.id)")
	}
	if service == "" {
		if service, err = ServiceFromNodeID(nodeID); err != nil {
			return nil, fmt.Errorf("render: %w; name the service instead", err)
		}
	}
	if _, ok := p.Doc.Services[service]; !ok {
		return nil, fmt.Errorf("render: %w: %q (services: %v)", ErrUnknownService, service, p.ServiceNames())
	}
	b, err := staticBootstrap(p, nodeID, service, cfg)
	if err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	if err := validate(b); err != nil {
		return nil, fmt.Errorf("render: invalid bootstrap: %w", err)
	}
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	y, err := yaml.JSONToYAML(js)
	if err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	header := fmt.Sprintf("# Envoy sidecar of service %s (node %s), rendered by `tokenwarden xds render`.\n"+
		"# Static: render again after every policy change. ext_authz fails closed\n"+
		"# (failure_mode_allow is false, the default, so it is not written out).\n", service, nodeID)
	return append([]byte(header), y...), nil
}

func staticBootstrap(p *policy.Policy, nodeID, service string, cfg Config) (*bootstrap.Bootstrap, error) {
	rc, err := routeConfiguration(p, service)
	if err != nil {
		return nil, err
	}
	m, err := httpConnectionManager(cfg)
	if err != nil {
		return nil, err
	}
	m.RouteSpecifier = &hcm.HttpConnectionManager_RouteConfig{RouteConfig: rc}
	lis, err := inboundListener(cfg, m)
	if err != nil {
		return nil, err
	}
	app, authz, err := localClusters(cfg)
	if err != nil {
		return nil, err
	}
	return &bootstrap.Bootstrap{
		Node: &core.Node{
			Id:      nodeID,
			Cluster: service,
			Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
				ServiceMetadataKey: structpb.NewStringValue(service),
			}},
		},
		StaticResources: &bootstrap.Bootstrap_StaticResources{
			Listeners: []*listener.Listener{lis},
			Clusters:  []*cluster.Cluster{app, authz},
		},
		Admin: &bootstrap.Admin{Address: socketAddress("127.0.0.1", adminPort)},
	}, nil
}
