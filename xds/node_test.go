package xds

import (
	"errors"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

func TestNodeService(t *testing.T) {
	meta := func(v *structpb.Value) *structpb.Struct {
		return &structpb.Struct{Fields: map[string]*structpb.Value{ServiceMetadataKey: v}}
	}
	tests := map[string]struct {
		node    *core.Node
		want    string
		wantErr bool
	}{
		"metadata wins": {
			node: &core.Node{Id: "sidecar~10.0.0.1~orders-7d4b9c8f6d-x2x7k.default~default.svc.cluster.local", Metadata: meta(structpb.NewStringValue("billing"))},
			want: "billing",
		},
		"metadata on a plain id": {node: &core.Node{Id: "envoy-1", Metadata: meta(structpb.NewStringValue("orders"))}, want: "orders"},
		"metadata not a string":  {node: &core.Node{Id: "envoy-1", Metadata: meta(structpb.NewNumberValue(1))}, wantErr: true},
		"metadata empty":         {node: &core.Node{Id: "envoy-1", Metadata: meta(structpb.NewStringValue(""))}, wantErr: true},
		"deployment pod": {
			node: &core.Node{Id: "sidecar~10.1.2.3~orders-7d4b9c8f6d-x2x7k.default~default.svc.cluster.local"},
			want: "orders",
		},
		"dashed deployment name": {
			node: &core.Node{Id: "sidecar~10.1.2.3~order-history-5f6c8d9b7-qz2tw.shop~shop.svc.cluster.local"},
			want: "order-history",
		},
		"daemonset pod": {node: &core.Node{Id: "sidecar~10.1.2.3~node-exporter-8xk2p.monitoring~monitoring.svc.cluster.local"}, want: "node-exporter"},
		"word suffix kept": {
			// "agent" has vowels: it is a name, not a pod suffix.
			node: &core.Node{Id: "sidecar~10.1.2.3~token-agent.default~default.svc.cluster.local"},
			want: "token-agent",
		},
		"statefulset ordinal kept": {node: &core.Node{Id: "sidecar~10.1.2.3~db-0.default~default.svc.cluster.local"}, want: "db-0"},
		"bare pod":                 {node: &core.Node{Id: "sidecar~10.1.2.3~orders.default~default.svc.cluster.local"}, want: "orders"},
		"not istio-style":          {node: &core.Node{Id: "envoy-1"}, wantErr: true},
		"no namespace":             {node: &core.Node{Id: "sidecar~10.1.2.3~orders~x"}, wantErr: true},
		"nil node":                 {node: nil, wantErr: true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := NodeService(tt.node)
			if tt.wantErr {
				if !errors.Is(err, ErrNoService) {
					t.Fatalf("NodeService = %q, %v; want ErrNoService", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("NodeService = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func FuzzServiceFromNodeID(f *testing.F) {
	f.Add("sidecar~10.1.2.3~orders-7d4b9c8f6d-x2x7k.default~default.svc.cluster.local")
	f.Add("~~.~")
	f.Add("a~b~-bbbbb.c~d")
	f.Fuzz(func(t *testing.T, id string) {
		s, err := ServiceFromNodeID(id)
		if err == nil && s == "" {
			t.Fatalf("ServiceFromNodeID(%q) gave an empty service without an error", id)
		}
	})
}
