package xds

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

// parseBootstrap reads Envoy YAML the way Envoy does: every typed_config
// must name a type linked into this binary, unknown fields are errors.
func parseBootstrap(t *testing.T, y []byte) *bootstrap.Bootstrap {
	t.Helper()
	js, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatalf("yaml: %v", err)
	}
	var b bootstrap.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatalf("not an envoy.config.bootstrap.v3.Bootstrap: %v", err)
	}
	if err := validate(&b); err != nil {
		t.Fatalf("ValidateAll: %v", err)
	}
	return &b
}

func TestRenderBootstrap(t *testing.T) {
	p := loadPolicy(t, "testdata/policy.yaml")
	const node = "sidecar~10.1.2.3~orders-7d4b9c8f6d-x2x7k.default~default.svc.cluster.local"
	out, err := RenderBootstrap(p, node, "", Config{AuthzAddress: "unix:///run/tokenwarden/authz.sock"})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(out, []byte("# Envoy sidecar of service orders")) {
		t.Errorf("output starts %q, want the header comment", out[:40])
	}
	b := parseBootstrap(t, out)

	if b.GetNode().GetId() != node || b.GetNode().GetCluster() != "orders" {
		t.Errorf("node %v", b.GetNode())
	}
	if b.GetDynamicResources() != nil {
		t.Error("a static render has dynamic resources")
	}
	lis := b.GetStaticResources().GetListeners()
	if len(lis) != 1 || lis[0].GetName() != ListenerName {
		t.Fatalf("listeners %v", lis)
	}
	m := resource.GetHTTPConnectionManager(lis[0].GetFilterChains()[0].GetFilters()[0])
	rc := m.GetRouteConfig()
	if rc == nil {
		t.Fatalf("routes not inline: %T", m.GetRouteSpecifier())
	}
	want, err := routeConfiguration(p, "orders")
	if err != nil {
		t.Fatal(err)
	}
	if len(rc.GetVirtualHosts()) != len(want.GetVirtualHosts()) || len(rc.GetVirtualHosts()[0].GetRoutes()) != len(want.GetVirtualHosts()[0].GetRoutes()) {
		t.Errorf("rendered routes differ from the served ones")
	}
	if n := len(b.GetStaticResources().GetClusters()); n != 2 {
		t.Errorf("%d clusters, want app and authz", n)
	}
}

func TestRenderBootstrapErrors(t *testing.T) {
	p := loadPolicy(t, "testdata/policy.yaml")
	tests := map[string]struct {
		node, service string
		wantUnknown   bool
	}{
		"no node":                {node: "", service: "orders"},
		"node names no service":  {node: "envoy-1"},
		"service not in policy":  {node: "envoy-1", service: "billing", wantUnknown: true},
		"derived service absent": {node: "sidecar~10.0.0.1~billing-7d4b9c8f6d-x2x7k.default~x", wantUnknown: true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := RenderBootstrap(p, tt.node, tt.service, Config{})
			if err == nil {
				t.Fatal("rendered")
			}
			if tt.wantUnknown && !errors.Is(err, ErrUnknownService) {
				t.Fatalf("err = %v, want ErrUnknownService", err)
			}
		})
	}
}

func TestDeployBootstrapIsValid(t *testing.T) {
	y, err := os.ReadFile("../deploy/envoy/bootstrap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b := parseBootstrap(t, y)
	ads := b.GetDynamicResources().GetAdsConfig()
	if ads.GetTransportApiVersion().String() != "V3" || ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != "tokenwarden_xds" {
		t.Errorf("ADS config %v", ads)
	}
	if b.GetDynamicResources().GetLdsConfig().GetAds() == nil || b.GetDynamicResources().GetCdsConfig().GetAds() == nil {
		t.Error("listeners and clusters not over ADS")
	}
	md := ads.GetGrpcServices()[0].GetInitialMetadata()
	if len(md) != 1 || md[0].GetKey() != CredentialHeader || md[0].GetValue() != "${XDS_CREDENTIAL}" {
		t.Errorf("the ADS grpc_service sends %v, want the credential in %s", md, CredentialHeader)
	}
	// As envsubst renders it, with a credential made as docs/xds.md says.
	rendered := parseBootstrap(t, bytes.ReplaceAll(y, []byte("${XDS_CREDENTIAL}"), []byte("q3Zk9_Xw-0aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0uVw")))
	if got := rendered.GetDynamicResources().GetAdsConfig().GetGrpcServices()[0].GetInitialMetadata()[0].GetValue(); !strings.HasPrefix(got, "q3Zk9") {
		t.Errorf("rendered credential %q", got)
	}
	if b.GetNode().GetMetadata().GetFields()[ServiceMetadataKey] == nil {
		t.Errorf("node metadata lacks %s", ServiceMetadataKey)
	}
	if _, ok := b.GetStaticResources().GetClusters()[0].GetTypedExtensionProtocolOptions()[httpProtocolOptionsName]; !ok {
		t.Error("the xDS cluster does not speak HTTP/2")
	}
}
