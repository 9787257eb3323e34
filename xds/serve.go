package xds

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/graceful"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/tokenwarden/tokenwarden/agent/listen"
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
	// grpcMaxRecvMsgBytes bounds one DiscoveryRequest: a node (id,
	// metadata, Envoy's list of extensions, some 30 KiB) and the resource
	// names an ACK or NACK carries. grpc-go's default is 4 MiB.
	grpcMaxRecvMsgBytes = 128 << 10
	// grpcStreamWindowBytes and grpcConnWindowBytes fix the HTTP/2 flow-
	// control windows (grpc-go otherwise grows them with the measured
	// bandwidth, to 16 MiB per connection). Sidecars send small ACKs.
	grpcStreamWindowBytes = 64 << 10
	grpcConnWindowBytes   = 256 << 10
	// grpcConnectionTimeout bounds the HTTP/2 handshake; grpc-go's default
	// (120 s) let a connection that never sends its preface hold a
	// descriptor for two minutes.
	grpcConnectionTimeout = 5 * time.Second
	// grpcMaxConnectionIdle closes (GOAWAY) a connection without an open
	// stream this long; a sidecar keeps its ADS stream open, so only
	// connections that never open one, or abandoned ones, are closed.
	grpcMaxConnectionIdle = 5 * time.Minute
	// grpcReadBufferSize is each connection's read buffer, kept for its
	// life. Requests from sidecars are small ACKs; the default 32 KiB per
	// connection would dominate the memory a sidecar costs.
	grpcReadBufferSize = 4 << 10
	// gracefulStopTimeout bounds waiting for in-flight responses at shutdown.
	gracefulStopTimeout = 5 * time.Second
	// UnixSocketMode lets sidecars running as any user connect; who may
	// reach the socket at all is decided by the directory (hostPath) it is
	// mounted from. Pass it to listen.Open.
	UnixSocketMode = 0o666
)

// StreamLimits bound the ADS streams open across the server. A sidecar
// opens one; each may hold a half-sent request of up to grpcMaxRecvMsgBytes
// for as long as it stays open, so together they pin at most 1024 × 128 KiB,
// and one client (an IP address, or a process over a unix socket) at most
// 16 × 128 KiB. Streams live as long as the sidecar: no deadline.
var StreamLimits = listen.CallLimits{InFlight: 1024, PerClient: 16}

// Serve serves ADS (state of the world and delta) on lis until ctx ends,
// then stops gracefully. It returns nil after ctx ends and the listener's
// error otherwise.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	// Cancelling ctx also ends go-control-plane's stream loops: xDS streams
	// never finish on their own, and GracefulStop waits for every stream.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ads := serverv3.NewServer(ctx, s.cache, callbacks{s}, sotw.WithLogger(cacheLogger(s.log)))
	gate := listen.NewCallGate("xds", s.cfg.Streams, s.cfg.ListenerMetrics, s.log)
	gs := grpc.NewServer(
		gate.ServerOption(),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time: grpcKeepaliveTime, Timeout: grpcKeepaliveTimeout, MaxConnectionIdle: grpcMaxConnectionIdle,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: grpcKeepaliveMinTime, PermitWithoutStream: true}),
		grpc.MaxConcurrentStreams(grpcMaxConcurrentStreams),
		grpc.MaxRecvMsgSize(grpcMaxRecvMsgBytes),
		grpc.InitialWindowSize(grpcStreamWindowBytes),
		grpc.InitialConnWindowSize(grpcConnWindowBytes),
		grpc.ConnectionTimeout(grpcConnectionTimeout),
		grpc.ReadBufferSize(grpcReadBufferSize),
	)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, ads)

	s.log.Info("xds: serving ADS", "address", lis.Addr().String())
	if err := graceful.GRPC(ctx, gs, lis, gracefulStopTimeout, cancel); err != nil {
		return fmt.Errorf("xds: serve %s: %w", lis.Addr(), err)
	}
	return nil
}
