package xds

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

const (
	// grpcKeepaliveTime pings a sidecar connection idle this long, so one
	// whose pod vanished without a FIN is noticed and its node forgotten.
	grpcKeepaliveTime = 30 * time.Second
	// grpcKeepaliveTimeout is how long a ping may go unanswered before the
	// connection is closed.
	grpcKeepaliveTimeout = 5 * time.Second
	// grpcKeepaliveMinTime is the most often a sidecar may ping us; the
	// bootstrap in deploy/envoy pings every 30 s, well above it. Pinging
	// more often gets the connection closed (too_many_pings).
	grpcKeepaliveMinTime = 10 * time.Second
	// grpcMaxConcurrentStreams bounds the streams of one connection. A
	// sidecar opens one ADS stream; this caps what a misbehaving client can
	// make the server hold per connection.
	grpcMaxConcurrentStreams = 4
	// grpcMaxRecvMsgSize bounds one request. Envoy's first request carries
	// its node with the list of its extensions (tens of KB); ACKs are small.
	grpcMaxRecvMsgSize = 256 << 10
	// grpcReadBufferSize is each connection's read buffer, kept for its
	// life. Requests from sidecars are small ACKs; the default 32 KiB per
	// connection would dominate the memory a sidecar costs.
	grpcReadBufferSize = 4 << 10
	// gracefulStopTimeout bounds waiting for in-flight responses at shutdown.
	gracefulStopTimeout = 5 * time.Second
	// unixSocketMode lets sidecars running as any user connect; who may
	// reach the socket at all is decided by the directory (hostPath) it is
	// mounted from.
	unixSocketMode = 0o666
)

// Serve serves ADS (state of the world and delta) on lis until ctx ends,
// then stops gracefully. It returns nil after ctx ends and the listener's
// error otherwise.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	// Cancelling ctx also ends go-control-plane's stream loops: xDS streams
	// never finish on their own, and GracefulStop waits for every stream.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ads := serverv3.NewServer(ctx, s.cache, callbacks{s}, sotw.WithLogger(cacheLogger(s.log)))
	gs := grpc.NewServer(
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: grpcKeepaliveTime, Timeout: grpcKeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: grpcKeepaliveMinTime, PermitWithoutStream: true}),
		grpc.MaxConcurrentStreams(grpcMaxConcurrentStreams),
		grpc.MaxRecvMsgSize(grpcMaxRecvMsgSize),
		// xDS connections are idle almost always: share write buffers
		// between them rather than holding one per sidecar.
		grpc.SharedWriteBuffer(true),
	)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, ads)

	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	s.log.Info("xds: serving ADS", "address", lis.Addr().String())
	select {
	case err := <-served:
		return fmt.Errorf("xds: serve %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	cancel()
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(gracefulStopTimeout):
		gs.Stop()
		<-stopped
	}
	return nil
}

// Listen opens the address Serve listens on: host:port, or a unix socket
// as unix:///path (or unix:/path). A stale socket file left by a previous
// run is replaced; any other file at the path is an error.
func Listen(addr string) (net.Listener, error) {
	rest, isUnix := strings.CutPrefix(addr, unixPrefix)
	if !isUnix {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("xds: listen on %s: %w", addr, err)
		}
		return lis, nil
	}
	path := strings.TrimPrefix(rest, "//")
	if !strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("xds: listen on %s: want an absolute socket path, e.g. unix:///run/tokenwarden/xds.sock", addr)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("xds: listen on %s: %s exists and is not a socket", addr, path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("xds: remove stale socket: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("xds: listen on %s: %w", addr, err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("xds: listen on %s: %w", addr, err)
	}
	if err := os.Chmod(path, unixSocketMode); err != nil {
		lis.Close()
		return nil, fmt.Errorf("xds: listen on %s: %w", addr, err)
	}
	return lis, nil
}
