package xds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// The credentials of the test policy's services, as their Secrets would
// hold them.
const (
	ordersCredential    = "orders-0f9c2b7e4a1d6c8e3b5a7d9f1c2e4a6b"
	inventoryCredential = "inventory-7a3e9c1b5d2f8a4c6e0b9d3f7a1c5e2b"
	filesCredential     = "files-3c8e1a5d9b2f6c0e4a7d1b3f5c9e2a6d"
)

func digest(s string) string {
	d := sha256.Sum256([]byte(s))
	return hex.EncodeToString(d[:])
}

func testCredentials(t *testing.T) *Credentials {
	t.Helper()
	c, err := ParseCredentials(fmt.Appendf(nil, "credentials:\n  - {service: orders, sha256: %s}\n  - {service: inventory, sha256: %s}\n  - {service: files, sha256: %s}\n",
		digest(ordersCredential), digest(inventoryCredential), digest(filesCredential)))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// securedConfig is the default deployment: credentials, nothing else.
func securedConfig(t *testing.T) Config {
	return Config{Credentials: testCredentials(t)}
}

func withMetadata(id string, kv ...string) *core.Node {
	n := &core.Node{Id: id, Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{}}}
	for i := 0; i+1 < len(kv); i += 2 {
		n.Metadata.Fields[kv[i]] = structpb.NewStringValue(kv[i+1])
	}
	return n
}

// refusedWith waits for the stream to end and checks its status code.
func (c *adsClient) refusedWith(code codes.Code) {
	c.t.Helper()
	select {
	case resp, ok := <-c.responses:
		if ok {
			c.t.Fatalf("a refused stream got a %s response", typeName(resp.GetTypeUrl()))
		}
	case <-time.After(patience):
		c.t.Fatal("the stream was not ended")
	}
	if err := <-c.ended; status.Code(err) != code {
		c.t.Fatalf("stream ended with %v, want %v", err, code)
	}
}

func (ts *testServer) refusals(reason string) float64 {
	return metricValue(ts.metrics.refused.WithLabelValues(reason))
}

// TestImpostorFirstCannotChooseTheService: a client that connects first
// under the orders sidecar's node id, as another service, must not change
// what the real orders sidecar gets, and cannot be changed by it.
func TestImpostorFirstCannotChooseTheService(t *testing.T) {
	for _, tt := range []struct {
		name             string
		cfg              Config
		impostor         *core.Node
		impostorCred     string
		genuine          *core.Node
		genuineCred      string
		impostorServices string
	}{
		{
			name: "credentials", cfg: securedConfig(t),
			impostor: &core.Node{Id: ordersNode}, impostorCred: filesCredential,
			genuine: &core.Node{Id: ordersNode}, genuineCred: ordersCredential,
			impostorServices: "files,unknown_host",
		},
		{
			name: "credential in node metadata", cfg: securedConfig(t),
			impostor:         withMetadata(ordersNode, CredentialMetadataKey, inventoryCredential),
			genuine:          withMetadata(ordersNode, CredentialMetadataKey, ordersCredential),
			impostorServices: "inventory,unknown_host",
		},
		{
			// Even where unauthenticated nodes are allowed, a claim made
			// first under an id does not bind the id.
			name: "unauthenticated development mode", cfg: devConfig,
			impostor:         withMetadata(ordersNode, ServiceMetadataKey, "files"),
			genuine:          &core.Node{Id: ordersNode},
			impostorServices: "files,unknown_host",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, tt.cfg, loadPolicy(t, "testdata/policy.yaml"))
			impostor := dialADSWith(t, ts.addr, tt.impostor, tt.impostorCred)
			if got := strings.Join(vhostNames(routeConfigOf(t, impostor.handshake())), ","); got != tt.impostorServices {
				t.Fatalf("impostor got %s, want %s", got, tt.impostorServices)
			}
			genuine := dialADSWith(t, ts.addr, tt.genuine, tt.genuineCred)
			if got := strings.Join(vhostNames(routeConfigOf(t, genuine.handshake())), ","); got != "orders,unknown_host" {
				t.Fatalf("the orders sidecar got %s after an impostor took its node id", got)
			}
			impostor.expectNothing()
		})
	}
}

// TestStreamsWithoutAValidCredentialAreRefused: every way of not proving
// the service is refused before any configuration is sent, and counted.
func TestStreamsWithoutAValidCredentialAreRefused(t *testing.T) {
	secured := securedConfig(t)
	for _, tt := range []struct {
		name       string
		cfg        Config
		node       *core.Node
		credential string
		code       codes.Code
		reason     string
	}{
		{"no credential", secured, &core.Node{Id: ordersNode}, "", codes.Unauthenticated, refusedNoCredential},
		{"nothing configured refuses all", Config{}, &core.Node{Id: ordersNode}, "", codes.Unauthenticated, refusedNoCredential},
		{"claim alone", secured, withMetadata(ordersNode, ServiceMetadataKey, "orders"), "", codes.Unauthenticated, refusedNoCredential},
		{"wrong credential", secured, &core.Node{Id: ordersNode}, ordersCredential + "x", codes.PermissionDenied, refusedBadCredential},
		{"digest as credential", secured, &core.Node{Id: ordersNode}, digest(ordersCredential), codes.PermissionDenied, refusedBadCredential},
		{"long credential", secured, &core.Node{Id: ordersNode}, strings.Repeat("a", 4096), codes.PermissionDenied, refusedBadCredential},
		{"wrong node credential", secured, withMetadata(ordersNode, CredentialMetadataKey, "guess"), "", codes.PermissionDenied, refusedBadCredential},
		{"empty node credential", secured, withMetadata(ordersNode, CredentialMetadataKey, ""), "", codes.PermissionDenied, refusedBadCredential},
		{"wrong credential in dev mode", devConfig, &core.Node{Id: ordersNode}, "guess", codes.PermissionDenied, refusedBadCredential},
		{"credentials of two services", secured, withMetadata(ordersNode, CredentialMetadataKey, filesCredential), ordersCredential, codes.PermissionDenied, refusedServiceMismatch},
		{"claim of another service", secured, withMetadata(ordersNode, ServiceMetadataKey, "files"), ordersCredential, codes.PermissionDenied, refusedServiceMismatch},
		{"no node", secured, nil, ordersCredential, codes.InvalidArgument, refusedInvalidNode},
		{"empty node id", secured, &core.Node{}, ordersCredential, codes.InvalidArgument, refusedInvalidNode},
		{"control characters in node id", secured, &core.Node{Id: "orders\n level=ERROR forged=1"}, ordersCredential, codes.InvalidArgument, refusedInvalidNode},
		{"100 KB node id", secured, &core.Node{Id: strings.Repeat("A", 100<<10)}, ordersCredential, codes.InvalidArgument, refusedInvalidNode},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, tt.cfg, loadPolicy(t, "testdata/policy.yaml"))
			c := dialADSWith(t, ts.addr, tt.node, tt.credential)
			c.subscribe(resource.ClusterType)
			c.refusedWith(tt.code)
			if got := ts.refusals(tt.reason); got != 1 {
				t.Errorf("%s refusals %v, want 1", tt.reason, got)
			}
			if got := metricValue(ts.metrics.connectedNodes); got != 0 {
				t.Errorf("connected nodes %v, want 0", got)
			}
			if keys := ts.cache.GetStatusKeys(); len(keys) != 0 {
				t.Errorf("the cache holds %d nodes for a refused stream", len(keys))
			}
			logs := ts.logs.String()
			if len(logs) > 4<<10 {
				t.Errorf("%d bytes logged for one refused stream", len(logs))
			}
			for _, secret := range []string{ordersCredential, filesCredential, "forged=1"} {
				if strings.Contains(logs, secret) {
					t.Errorf("logs hold %q:\n%s", secret, logs)
				}
			}
		})
	}
}

// TestLaterRequestCannotChangeTheNode: once a stream is admitted, a request
// naming another node id or service ends it, on both protocols; it never
// gets another node's snapshot.
func TestLaterRequestCannotChangeTheNode(t *testing.T) {
	t.Run("state of the world", func(t *testing.T) {
		for _, tt := range []struct {
			name       string
			cfg        Config
			credential string
			next       *core.Node
		}{
			{"another id", securedConfig(t), ordersCredential, &core.Node{Id: "sidecar~10.0.0.9~files-6b8c9d7f5-k2x9p.default~default.svc.cluster.local"}},
			{"another credential", securedConfig(t), ordersCredential, withMetadata(ordersNode, CredentialMetadataKey, filesCredential)},
			{"another claim", devConfig, "", withMetadata(ordersNode, ServiceMetadataKey, "files")},
		} {
			t.Run(tt.name, func(t *testing.T) {
				ts := startServer(t, tt.cfg, loadPolicy(t, "testdata/policy.yaml"))
				c := dialADSWith(t, ts.addr, &core.Node{Id: ordersNode}, tt.credential)
				c.handshake()
				c.send(&discovery.DiscoveryRequest{Node: tt.next, TypeUrl: resource.ListenerType})
				code := codes.InvalidArgument
				if tt.name == "another credential" {
					code = codes.PermissionDenied // the call and node credentials disagree
				}
				c.refusedWith(code)
				eventually(t, "the node to be forgotten", func() bool { return metricValue(ts.metrics.connectedNodes) == 0 })
			})
		}
	})
	t.Run("delta", func(t *testing.T) {
		ts := startServer(t, securedConfig(t), loadPolicy(t, "testdata/policy.yaml"))
		conn, err := grpc.NewClient(ts.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), CredentialHeader, ordersCredential), patience)
		defer cancel()
		stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: ordersNode}, TypeUrl: resource.ClusterType}); err != nil {
			t.Fatal(err)
		}
		cds, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "victim"}, TypeUrl: resource.ClusterType, ResponseNonce: cds.GetNonce()}); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("delta stream after a node change: %v, want InvalidArgument", err)
		}
		if got := ts.refusals(refusedNodeChanged); got != 1 {
			t.Errorf("node_changed refusals %v, want 1", got)
		}
	})
}

// TestNodeFloodIsBounded: one client opening streams under ever new node
// ids holds at most MaxNodes snapshots, one node at most maxStreamsPerNode
// streams, and everything is released when the streams close. The refusals
// are counted, and logged once.
func TestNodeFloodIsBounded(t *testing.T) {
	const maxNodes, flood = 8, 40
	cfg := securedConfig(t)
	cfg.MaxNodes = maxNodes
	ts := startServer(t, cfg, loadPolicy(t, "testdata/policy.yaml"))
	var clients []*adsClient
	defer func() {
		for _, c := range clients {
			c.close()
		}
	}()
	for i := range flood {
		c := dialADSWith(t, ts.addr, &core.Node{Id: fmt.Sprintf("flood-%d", i)}, ordersCredential)
		c.subscribe(resource.ClusterType)
		if i < maxNodes {
			c.recv(resource.ClusterType)
		} else {
			c.refusedWith(codes.ResourceExhausted)
		}
		clients = append(clients, c)
	}
	if got := len(ts.cache.GetStatusKeys()); got != maxNodes {
		t.Errorf("the cache holds %d nodes, want %d", got, maxNodes)
	}
	if got := ts.refusals(refusedNodeLimit); got != flood-maxNodes {
		t.Errorf("node_limit refusals %v, want %d", got, flood-maxNodes)
	}
	if n := strings.Count(ts.logs.String(), "stream refused"); n != 1 {
		t.Errorf("%d refusal log lines for one burst, want 1", n)
	}

	// Streams of one node are bounded too (here under the node limit: the
	// first flood node's id, on new connections).
	for range maxStreamsPerNode - 1 {
		c := dialADSWith(t, ts.addr, &core.Node{Id: "flood-0"}, ordersCredential)
		c.subscribe(resource.ClusterType)
		c.recv(resource.ClusterType)
		clients = append(clients, c)
	}
	extra := dialADSWith(t, ts.addr, &core.Node{Id: "flood-0"}, ordersCredential)
	extra.subscribe(resource.ClusterType)
	extra.refusedWith(codes.ResourceExhausted)
	if got := ts.refusals(refusedStreamLimit); got != 1 {
		t.Errorf("stream_limit refusals %v, want 1", got)
	}

	for _, c := range clients {
		c.close()
	}
	eventually(t, "every node and snapshot to be released", func() bool {
		return metricValue(ts.metrics.connectedNodes) == 0 && len(ts.cache.GetStatusKeys()) == 0
	})
}

// TestStreamsPerConnectionAreBounded: a connection may not open more than
// grpcMaxConcurrentStreams streams at once.
func TestStreamsPerConnectionAreBounded(t *testing.T) {
	ts := startServer(t, securedConfig(t), loadPolicy(t, "testdata/policy.yaml"))
	conn, err := grpc.NewClient(ts.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), CredentialHeader, ordersCredential)
	client := discovery.NewAggregatedDiscoveryServiceClient(conn)
	for i := range grpcMaxConcurrentStreams {
		s, err := client.StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: fmt.Sprintf("n%d", i)}, TypeUrl: resource.ClusterType}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	// The next stream waits for the server's stream quota, which an open
	// stream never returns.
	short, cancel := context.WithTimeout(ctx, quiet)
	defer cancel()
	s, err := client.StreamAggregatedResources(short)
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("stream beyond the connection's limit: %v, want it held until its deadline", err)
	}
}

// TestNACKLogIsBounded: the error text and version of a NACK are the
// client's; a huge one is cut in the log.
func TestNACKLogIsBounded(t *testing.T) {
	ts := startServer(t, securedConfig(t), loadPolicy(t, "testdata/policy.yaml"))
	c := dialADSWith(t, ts.addr, &core.Node{Id: ordersNode}, ordersCredential)
	c.subscribe(resource.ClusterType)
	cds := c.recv(resource.ClusterType)
	// Two of them stay under grpcMaxRecvMsgBytes.
	huge := strings.Repeat("E", 60<<10)
	c.send(&discovery.DiscoveryRequest{TypeUrl: resource.ClusterType, VersionInfo: huge, ResponseNonce: cds.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Code: 3, Message: huge}})
	eventually(t, "the NACK to be logged", func() bool { return strings.Contains(ts.logs.String(), "rejected its configuration") })
	if n := len(ts.logs.String()); n > 8<<10 {
		t.Errorf("%d bytes logged for one NACK", n)
	}
	if !strings.Contains(ts.logs.String(), "bytes cut") {
		t.Error("the cut is not marked")
	}
}
