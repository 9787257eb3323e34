package graceful

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func listen(t *testing.T) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}

// TestHTTPDrains: the serve call returns only after the request in flight
// has finished, so it never races what the caller closes next.
func TestHTTPDrains(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	finished := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		close(finished)
	})}
	lis := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- HTTP(ctx, srv, lis, time.Minute) }()
	go http.Get("http://" + lis.Addr().String() + "/")
	<-started
	cancel()
	select {
	case err := <-done:
		t.Fatalf("returned (%v) while a request was in flight", err)
	default:
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	select {
	case <-finished:
	default:
		t.Fatal("HTTP returned before the request finished")
	}
}

// TestHTTPForcesAfterGrace: a request that never finishes holds the drain
// only for the grace.
func TestHTTPForcesAfterGrace(t *testing.T) {
	started := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
	})}
	lis := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- HTTP(ctx, srv, lis, 50*time.Millisecond) }()
	go http.Get("http://" + lis.Addr().String() + "/")
	<-started
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("a hung request held the drain past its grace")
	}
}

// TestServeErrorIsReturned: a listener that fails is an error, not a quiet
// return.
func TestServeErrorIsReturned(t *testing.T) {
	lis := listen(t)
	lis.Close()
	if err := HTTP(context.Background(), &http.Server{}, lis, time.Second); err == nil {
		t.Fatal("serving on a closed listener returned nil")
	}
	lis = listen(t)
	lis.Close()
	if err := GRPC(context.Background(), grpc.NewServer(), lis, time.Second, nil); err == nil {
		t.Fatal("serving gRPC on a closed listener returned nil")
	}
}

// TestGRPCStopsAndCallsOnStop: onStop runs when the context ends, and a
// stream that never finishes is cut after the grace.
func TestGRPCStopsAndCallsOnStop(t *testing.T) {
	gs := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	lis := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	onStop := make(chan struct{})
	go func() { done <- GRPC(ctx, gs, lis, 100*time.Millisecond, func() { hs.Shutdown(); close(onStop) }) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	watch, err := healthpb.NewHealthClient(conn).Watch(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("an open stream held the stop past its grace")
	}
	select {
	case <-onStop:
	default:
		t.Fatal("onStop was not called")
	}
}
