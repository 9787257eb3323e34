package bench

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/tokenwarden/tokenwarden/agent/listen"
	"github.com/tokenwarden/tokenwarden/policy"
	"github.com/tokenwarden/tokenwarden/xds"
)

const (
	// xdsSidecars is how many simulated sidecars the push reaches.
	xdsSidecars = 1000
	// xdsFleetAddrEnv, set, makes TestXDSSidecarFleet the sidecar fleet
	// of BenchmarkXDSPush, in a process of its own so that the server's
	// memory is measured alone.
	xdsFleetAddrEnv = "TOKENWARDEN_BENCH_XDS_FLEET_ADDR"
	xdsFleetSizeEnv = "TOKENWARDEN_BENCH_XDS_FLEET_SIZE"
	// xdsFleetLine starts the fleet's reports: "xds-fleet round N" once
	// every sidecar has ACKed the N-th new route version (0: the first).
	xdsFleetLine = "xds-fleet round "
	// xdsFleetPatience bounds waiting for one report.
	xdsFleetPatience = 60 * time.Second
	// xdsFleetCredential is the orders sidecars' xDS credential.
	xdsFleetCredential = "orders-bench-6f1d0c9a8e7b5d3c2a1f0e9d8c7b6a59"
	// xdsRoutes is the size of the benchmark service's route table.
	xdsRoutes = 20
)

// BenchmarkXDSPush measures the xDS server against 100, 300 and 1,000
// sidecars, each a raw ADS stream on its own connection that asks for
// clusters, listeners and routes and ACKs every response, as Envoy does:
//
//   - seconds/push: from SetPolicy with a changed route table until every
//     sidecar has ACKed the new route configuration;
//   - bytes/node: the server's live heap plus goroutine stacks per connected
//     sidecar (runtime.MemStats after GC, before and after the fleet
//     connects; the fleet runs in a child process);
//   - goroutines/node: the server's goroutines per connected sidecar.
func BenchmarkXDSPush(b *testing.B) {
	for _, n := range []int{100, 300, xdsSidecars} {
		b.Run(fmt.Sprintf("sidecars=%d", n), func(b *testing.B) { xdsPush(b, n) })
	}
}

// xdsPush is BenchmarkXDSPush with a fleet of sidecars.
func xdsPush(b *testing.B, sidecars int) {
	creds, err := xds.ParseCredentials(fmt.Appendf(nil, "credentials:\n  - {service: orders, sha256: %x}\n", sha256.Sum256([]byte(xdsFleetCredential))))
	if err != nil {
		b.Fatal(err)
	}
	// Every sidecar of the fleet connects from 127.0.0.1: one client.
	streams := listen.CallLimits{InFlight: 2 * sidecars, PerClient: 2 * sidecars}
	srv, err := xds.New(xds.Config{Credentials: creds, Logger: slog.New(slog.DiscardHandler), Streams: streams})
	if err != nil {
		b.Fatal(err)
	}
	policies := [2]*policy.Policy{xdsBenchPolicy(b, 0), xdsBenchPolicy(b, 1)}
	if err := srv.SetPolicy(policies[0]); err != nil {
		b.Fatal(err)
	}
	lis, err := listen.Open("127.0.0.1:0", 0)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	b.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			b.Error(err)
		}
	})

	heapBefore, goroutinesBefore := liveMemory(), runtime.NumGoroutine()
	fleet := startXDSFleet(b, lis.Addr().String(), sidecars)
	fleet.waitRound(b, 0)
	heapAfter, goroutinesAfter := liveMemory(), runtime.NumGoroutine()

	round := 0
	var setTotal time.Duration
	for b.Loop() {
		round++
		t0 := time.Now()
		if err := srv.SetPolicy(policies[round%2]); err != nil {
			b.Fatal(err)
		}
		setTotal += time.Since(t0)
		fleet.waitRound(b, round)
	}
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "seconds/push")
	b.ReportMetric(setTotal.Seconds()/float64(b.N), "setpolicy-seconds/push")
	b.ReportMetric(float64(heapAfter-heapBefore)/float64(sidecars), "bytes/node")
	b.ReportMetric(float64(goroutinesAfter-goroutinesBefore)/float64(sidecars), "goroutines/node")
}

// liveMemory is the live heap and goroutine stacks. The second collection
// empties the sync.Pool victim caches, which hold buffers no connection owns.
func liveMemory() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc + m.StackInuse)
}

// xdsBenchPolicy is one service with a route table of xdsRoutes routes; the
// variants differ in one route, so switching between them changes the
// route configuration alone.
func xdsBenchPolicy(b *testing.B, variant int) *policy.Policy {
	b.Helper()
	var doc strings.Builder
	doc.WriteString(`version: 1
issuer: bench
environments: { prod: { max_ttl: 24h } }
classes: { svc: { scopes: [orders:read, orders:write], default_ttl: 1h, max_ttl: 24h, environments: [prod] } }
services:
  orders:
    hosts: [orders, orders.default.svc.cluster.local]
    routes:
      - { path: /healthz, public: true }
`)
	for i := range xdsRoutes - 2 {
		fmt.Fprintf(&doc, "      - { methods: [GET], path: \"/api/r%d/*/items/**\", scopes: [orders:read] }\n", i)
	}
	fmt.Fprintf(&doc, "      - { methods: [POST, PUT], path: \"/v%d/orders/**\", scopes: [orders:write] }\n", variant)
	p, err := policy.Load("bench", []byte(doc.String()))
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// xdsFleet is the child process running the simulated sidecars.
type xdsFleet struct {
	rounds chan int
}

func startXDSFleet(b *testing.B, addr string, size int) *xdsFleet {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestXDSSidecarFleet$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), xdsFleetAddrEnv+"="+addr, xdsFleetSizeEnv+"="+strconv.Itoa(size))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		// Closing its stdin ends the fleet; kill it if it lingers.
		stdin.Close()
		exited := make(chan struct{})
		go func() {
			cmd.Wait()
			close(exited)
		}()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	f := &xdsFleet{rounds: make(chan int, 16)}
	go func() {
		defer close(f.rounds)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if n, ok := strings.CutPrefix(sc.Text(), xdsFleetLine); ok {
				r, _ := strconv.Atoi(n)
				f.rounds <- r
			}
		}
	}()
	return f
}

func (f *xdsFleet) waitRound(b *testing.B, round int) {
	b.Helper()
	timeout := time.After(xdsFleetPatience)
	for {
		select {
		case r, ok := <-f.rounds:
			if !ok {
				b.Fatalf("the sidecar fleet exited before round %d", round)
			}
			if r == round {
				return
			}
		case <-timeout:
			b.Fatalf("round %d: not every sidecar ACKed within %s", round, xdsFleetPatience)
		}
	}
}

// TestXDSSidecarFleet is the sidecar fleet of BenchmarkXDSPush; it runs only
// in the benchmark's child process.
func TestXDSSidecarFleet(t *testing.T) {
	addr := os.Getenv(xdsFleetAddrEnv)
	if addr == "" {
		t.Skip("the sidecar fleet of BenchmarkXDSPush runs only in its child process")
	}
	size, err := strconv.Atoi(os.Getenv(xdsFleetSizeEnv))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tally := &roundTally{size: size, counts: map[int]int{}}
	for i := range size {
		go func() {
			if err := runSidecar(ctx, addr, sidecarNode(i), tally); err != nil && ctx.Err() == nil {
				fmt.Fprintf(os.Stderr, "sidecar %d: %v\n", i, err)
			}
		}()
	}
	// The benchmark closes stdin when it is done.
	io.Copy(io.Discard, os.Stdin)
}

// sidecarNode is an Istio-style node of the orders Deployment, with a pod
// suffix made of Kubernetes' random alphabet.
func sidecarNode(i int) *core.Node {
	const alphabet = "bcdfghjklmnpqrstvwxz2456789"
	suffix := make([]byte, 5)
	for j, n := 0, i; j < len(suffix); j, n = j+1, n/len(alphabet) {
		suffix[j] = alphabet[n%len(alphabet)]
	}
	return &core.Node{Id: fmt.Sprintf("sidecar~10.0.%d.%d~orders-7d4b9c8f6d-%s.default~default.svc.cluster.local", i/250, i%250, suffix)}
}

// roundTally prints a round once every sidecar has ACKed it.
type roundTally struct {
	mu     sync.Mutex
	size   int
	counts map[int]int
}

func (t *roundTally) acked(round int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.counts[round]++
	if t.counts[round] == t.size {
		delete(t.counts, round)
		fmt.Printf("%s%d\n", xdsFleetLine, round)
	}
}

// runSidecar speaks ADS as Envoy does: clusters and listeners, then the
// routes the listener names; it ACKs every response and tallies each new
// route version.
func runSidecar(ctx context.Context, addr string, node *core.Node, tally *roundTally) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx = metadata.AppendToOutgoingContext(ctx, xds.CredentialHeader, xdsFleetCredential)
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	for _, req := range []*discovery.DiscoveryRequest{
		{Node: node, TypeUrl: resource.ClusterType},
		{TypeUrl: resource.ListenerType},
	} {
		if err := stream.Send(req); err != nil {
			return err
		}
	}
	var routeNames []string
	routeVersion, round := "", -1
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		ack := &discovery.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
		switch resp.GetTypeUrl() {
		case resource.ListenerType:
			if err := stream.Send(ack); err != nil {
				return err
			}
			if routeNames == nil {
				if routeNames, err = listenerRoutes(resp); err != nil {
					return err
				}
				if err := stream.Send(&discovery.DiscoveryRequest{TypeUrl: resource.RouteType, ResourceNames: routeNames}); err != nil {
					return err
				}
			}
		case resource.RouteType:
			ack.ResourceNames = routeNames
			if err := stream.Send(ack); err != nil {
				return err
			}
			if resp.GetVersionInfo() != routeVersion {
				routeVersion = resp.GetVersionInfo()
				round++
				tally.acked(round)
			}
		default:
			if err := stream.Send(ack); err != nil {
				return err
			}
		}
	}
}

// listenerRoutes lists the route configurations the listeners name.
func listenerRoutes(resp *discovery.DiscoveryResponse) ([]string, error) {
	var names []string
	for _, r := range resp.GetResources() {
		var l listener.Listener
		if err := r.UnmarshalTo(&l); err != nil {
			return nil, err
		}
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				if m := resource.GetHTTPConnectionManager(f); m != nil && m.GetRds() != nil {
					names = append(names, m.GetRds().GetRouteConfigName())
				}
			}
		}
	}
	return names, nil
}
