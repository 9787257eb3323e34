package authz

import (
	"context"
	"net"
	"sync"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/tokenwarden/tokenwarden/policy"
)

// gRPC settings. Envoy opens one HTTP/2 connection per worker thread to the
// authz cluster and multiplexes every check of that thread over it.
const (
	// maxConcurrentStreams bounds in-flight checks per connection, so one
	// client cannot make the server spawn unbounded goroutines. It matches
	// Envoy's default circuit breaker (max_requests 1024 per cluster), so
	// Envoy queues before we would.
	maxConcurrentStreams = 1024
	// keepaliveTime pings a connection idle this long, so a sidecar that
	// vanished (pod killed, node partitioned) is noticed and its
	// connection freed.
	keepaliveTime = 30 * time.Second
	// keepaliveTimeout is how long a ping may go unanswered before the
	// connection is closed.
	keepaliveTimeout = 10 * time.Second
	// keepaliveMinTime lets clients ping as often as every 5s. grpc-go's
	// default (5m) answers faster pings with GOAWAY "too_many_pings",
	// which would drop Envoy's connection, and the checks on it, whenever
	// an operator turns on HTTP/2 keepalive for the authz cluster.
	keepaliveMinTime = 5 * time.Second
	// maxRecvMsgBytes admits a CheckRequest with the largest headers we
	// accept (DefaultMaxHeaderBytes) plus a body Envoy may buffer
	// (with_request_body); anything larger fails the RPC, which Envoy
	// treats as a denial unless failure_mode_allow is set.
	maxRecvMsgBytes = 1 << 20
	// shutdownGrace is how long a graceful stop waits for in-flight checks
	// before closing connections.
	shutdownGrace = 5 * time.Second
)

// authorizationService is the health-checked service name.
const authorizationService = "envoy.service.auth.v3.Authorization"

// ServerOptions are the gRPC server options the authz server runs with,
// exported so that benchmarks compare like with like.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxConcurrentStreams(maxConcurrentStreams),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: keepaliveTime, Timeout: keepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(maxRecvMsgBytes),
	}
}

var _ authv3.AuthorizationServer = (*Server)(nil)

// Check implements envoy.service.auth.v3.Authorization/Check. It never
// returns an error: every fault is a denial in the CheckResponse, so Envoy
// denies even with failure_mode_allow set.
func (s *Server) Check(_ context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	start := time.Now()
	ev := Event{Protocol: ProtocolGRPC}
	var token string
	defer func() { s.stop(start, &ev, token) }()
	return s.check(req, &ev, &token), nil
}

// check answers one CheckRequest, filling ev. A panic anywhere in it is an
// internal_error denial.
func (s *Server) check(req *authv3.CheckRequest, ev *Event, token *string) (resp *authv3.CheckResponse) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("authz: check panicked; denying", "panic", r)
			ev.Decision = denyDecision(policy.ReasonInternalError)
			resp = s.denied(policy.ReasonInternalError).grpc
		}
	}()
	attrs := req.GetAttributes()
	ev.Source = attrs.GetSource().GetAddress().GetSocketAddress().GetAddress()
	httpReq := attrs.GetRequest().GetHttp()
	if httpReq == nil {
		ev.Decision = denyDecision(policy.ReasonInternalError)
		return s.denied(policy.ReasonInternalError).grpc
	}
	h, ok := s.readHeaders(httpReq)
	if !ok {
		ev.Decision = denyDecision(policy.ReasonInternalError)
		return s.denied(policy.ReasonInternalError).grpc
	}
	*token = policy.BearerToken(h.authorization)
	ev.Decision = s.decide(policy.Request{
		Token:  *token,
		Method: httpReq.GetMethod(),
		Host:   httpReq.GetHost(),
		Path:   httpReq.GetPath(),
	})
	if !ev.Decision.Allow {
		return s.denied(ev.Decision.Reason).grpc
	}
	return s.answerGRPC(&ev.Decision, h.forged)
}

// checkHeaders is what a check needs from the request headers.
type checkHeaders struct {
	authorization string
	forged        []string // incoming x-tokenwarden- header names
}

// readHeaders finds Authorization and forged x-tokenwarden- headers in
// either header encoding Envoy uses, and refuses headers over the limit.
// Envoy lower-cases names and joins repeated headers with ",", so two
// Authorization headers make one malformed token.
func (s *Server) readHeaders(r *authv3.AttributeContext_HttpRequest) (checkHeaders, bool) {
	var h checkHeaders
	size := 0
	if m := r.GetHeaders(); len(m) > 0 {
		for k, v := range m {
			size += len(k) + len(v)
			if isTokenwardenHeader(k) {
				h.forged = append(h.forged, k)
			}
		}
		h.authorization = m[headerAuthorization]
		return h, size <= s.maxHeaderBytes
	}
	// encode_raw_headers: a list, values as bytes, repeats not joined.
	for _, hv := range r.GetHeaderMap().GetHeaders() {
		k := hv.GetKey()
		v := hv.GetRawValue()
		if len(v) == 0 {
			v = []byte(hv.GetValue())
		}
		size += len(k) + len(v)
		if size > s.maxHeaderBytes {
			return h, false
		}
		switch {
		case isTokenwardenHeader(k):
			h.forged = append(h.forged, k)
		case len(k) == len(headerAuthorization) && equalFold(k, headerAuthorization):
			if h.authorization != "" {
				h.authorization += "," + string(v)
			} else {
				h.authorization = string(v)
			}
		}
	}
	return h, true
}

func equalFold(a, b string) bool {
	for i := 0; i < len(a); i++ {
		c := a[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != b[i] {
			return false
		}
	}
	return true
}

// GRPC returns the gRPC server: ext_authz, grpc.health.v1 and server
// reflection, with ServerOptions. It is built once.
func (s *Server) GRPC() *grpc.Server {
	s.grpcOnce.Do(func() {
		gs := grpc.NewServer(ServerOptions()...)
		authv3.RegisterAuthorizationServer(gs, s)
		s.healthServer = health.NewServer()
		s.healthServer.SetServingStatus(authorizationService, healthpb.HealthCheckResponse_SERVING)
		healthpb.RegisterHealthServer(gs, s.healthServer)
		reflection.Register(gs)
		s.grpcServer = gs
	})
	return s.grpcServer
}

// ServeGRPC serves the gRPC mode on lis until ctx ends, then reports
// NOT_SERVING, stops accepting, lets in-flight checks finish (for at most
// shutdownGrace) and returns nil.
func (s *Server) ServeGRPC(ctx context.Context, lis net.Listener) error {
	gs := s.GRPC()
	var wg sync.WaitGroup
	served := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
		case <-served:
			return
		}
		s.healthServer.Shutdown()
		stopped := make(chan struct{})
		go func() {
			gs.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-time.After(shutdownGrace):
			gs.Stop()
			<-stopped
		}
	}()
	err := gs.Serve(lis)
	close(served)
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}
