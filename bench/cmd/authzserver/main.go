// Command authzserver is the server side of the authz benchmark: the real
// tokenwarden ext_authz server (warm token cache, a large revocation set,
// metrics and an observer on) or the no-op floor, over gRPC or HTTP. It
// prints "ready" once it listens and serves until SIGTERM. authzload starts
// it pinned to its own core.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"sync/atomic"
	"syscall"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/tokenwarden/tokenwarden/agent/authz"
	"github.com/tokenwarden/tokenwarden/agent/listen"
	"github.com/tokenwarden/tokenwarden/agent/revocation"
	"github.com/tokenwarden/tokenwarden/bench"
	"github.com/tokenwarden/tokenwarden/policy"
)

func main() {
	impl := flag.String("impl", "tokenwarden", "tokenwarden, noop, or noop-identity (the no-op answering with tokenwarden's identity headers)")
	mode := flag.String("mode", "grpc", "grpc or http")
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	policyFile := flag.String("policy", "deploy/policy.example.yaml", "policy file")
	tokensOut := flag.String("tokens-out", "", "write the benchmark's tokens here, one a line")
	tokens := flag.Int("tokens", 1000, "distinct tokens, all in the warm cache")
	revocations := flag.Int("revocations", 100_000, "revocation rules held")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the serving time here")
	stats := flag.Bool("stats", false, "print allocation and GC totals on exit")
	flag.StringVar(&memProfile, "memprofile", "", "write a profile of the live heap (what the collector marks on every cycle) here when the server stops, its caches full; records every allocation, so not for timing runs")
	flag.Parse()
	if memProfile != "" {
		runtime.MemProfileRate = 1 // every allocation from here on
	}
	if *stats {
		defer printStats()
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(*impl, *mode, *addr, *policyFile, *tokensOut, *tokens, *revocations); err != nil {
		log.Printf("authzserver: %v", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func run(impl, mode, addr, policyFile, tokensOut string, tokens, revocations int) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	var grpcServer *grpc.Server
	var handler http.Handler
	switch impl {
	case "noop", "noop-identity":
		grpcServer = grpc.NewServer(authz.ServerOptions(nil)...)
		authv3.RegisterAuthorizationServer(grpcServer, bench.NoopAuthorization{Identity: impl == "noop-identity"})
		handler = bench.NoopHTTP
		if impl == "noop-identity" {
			handler = bench.NoopHTTPIdentity
		}
	case "tokenwarden":
		// The collector target the agent's serve sets (GOGC wins if set).
		authz.TuneCollector()
		s, err := newServer(policyFile, tokensOut, tokens, revocations)
		if err != nil {
			return err
		}
		grpcServer, handler = s.GRPC(), s.Handler()
	default:
		return fmt.Errorf("-impl %q: want tokenwarden, noop or noop-identity", impl)
	}

	lis, err := listen.Open(addr, 0)
	if err != nil {
		return err
	}
	if memProfile != "" {
		// At the end, with the server still referenced: its per-token
		// caches fill during the load.
		defer func(g *grpc.Server, h http.Handler) {
			writeHeapProfile(memProfile)
			runtime.KeepAlive(g)
			runtime.KeepAlive(h)
		}(grpcServer, handler)
	}
	fmt.Printf("ready %s\n", lis.Addr())
	switch mode {
	case "grpc":
		go func() { <-ctx.Done(); grpcServer.Stop() }()
		return grpcServer.Serve(lis)
	case "http":
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}
		go func() { <-ctx.Done(); srv.Close() }()
		if err := srv.Serve(lis); err != http.ErrServerClosed {
			return err
		}
		return nil
	}
	return fmt.Errorf("-mode %q: want grpc or http", mode)
}

// newServer builds the authz server as the agent does: counting cache,
// metrics on a registry, an observer, and the cache warmed with every
// token the load generator will present.
func newServer(policyFile, tokensOut string, tokens, revocations int) (*authz.Server, error) {
	doc, err := os.ReadFile(policyFile)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	world, err := bench.NewAuthzWorld(doc, tokens, revocations, now)
	if err != nil {
		return nil, err
	}
	metrics, err := authz.NewMetrics(prometheus.NewRegistry(), authz.MetricsConfig{})
	if err != nil {
		return nil, err
	}
	go metrics.Run(context.Background(), 0)
	cache, err := revocation.NewCache(revocation.DefaultCacheSize)
	if err != nil {
		return nil, err
	}
	decider := world.Decider(cache, metrics)
	var denied atomic.Int64
	s, err := authz.New(authz.Config{
		Decider: decider,
		Metrics: metrics,
		Observer: authz.ObserverFunc(func(e authz.Event) {
			if !e.Decision.Allow {
				denied.Add(1)
			}
		}),
	})
	if err != nil {
		return nil, err
	}
	for i, tok := range world.Tokens {
		if dec := decider.Decide(policy.Request{Token: tok, Method: "GET", Host: "orders", Path: fmt.Sprintf("/orders/%d", i)}, now); !dec.Allow {
			return nil, fmt.Errorf("warming the cache: token %d denied (%s)", i, dec.Reason)
		}
	}
	if tokensOut != "" {
		f, err := os.Create(tokensOut)
		if err != nil {
			return nil, err
		}
		if err := bench.WriteTokens(f, world.Tokens); err != nil {
			f.Close()
			return nil, err
		}
		if err := f.Close(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// memProfile is the -memprofile path.
var memProfile string

// writeHeapProfile writes the live heap after a collection.
func writeHeapProfile(path string) {
	f, err := os.Create(path)
	if err != nil {
		log.Print(err)
		return
	}
	defer f.Close()
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		log.Print(err)
	}
}

// printStats reports what the process allocated and how often it collected.
func printStats() {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	log.Printf("authzserver: %d mallocs, %d MiB allocated, heap %d MiB, %d GCs, %v paused",
		m.Mallocs, m.TotalAlloc>>20, m.HeapAlloc>>20, m.NumGC, time.Duration(m.PauseTotalNs))
}
