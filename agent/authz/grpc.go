package authz

import (
	"context"
	"net"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/graceful"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/tokenwarden/tokenwarden/agent/listen"
	"github.com/tokenwarden/tokenwarden/policy"
)

// gRPC settings. Envoy opens one HTTP/2 connection per worker thread to the
// authz cluster and multiplexes every check of that thread over it; it
// opens another connection when one has maxConcurrentStreams in flight.
//
// What one client can make the server hold is bounded three ways: its
// connections (listen.Limits, per listener and per client), the checks it
// has in flight (CheckLimits, each ending at checkDeadline) and the bytes
// each check may buffer (maxRecvMsgBytes). A half-sent check therefore
// pins at most maxRecvMsgBytes for at most checkDeadline, and all of them
// together at most CheckLimits.InFlight × maxRecvMsgBytes (80 MiB).
const (
	// maxConcurrentStreams bounds in-flight checks per connection. A
	// check takes microseconds, so 128 per connection serves tens of
	// thousands of checks a second; Envoy opens another connection when
	// it needs more.
	maxConcurrentStreams = 128
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
	// accept (DefaultMaxHeaderBytes; Envoy's own limit is 60 KiB) plus
	// 16 KiB for the rest of it (addresses, metadata, a small body with
	// with_request_body). Anything larger fails the RPC, which Envoy
	// treats as a denial unless failure_mode_allow is set.
	maxRecvMsgBytes = DefaultMaxHeaderBytes + 16<<10
	// streamWindowBytes and connWindowBytes fix the HTTP/2 flow-control
	// windows (grpc-go otherwise grows them with the measured bandwidth,
	// to 16 MiB per connection): what a client may send ahead of the
	// server reading it. A check fits in one stream window.
	streamWindowBytes = 64 << 10
	connWindowBytes   = 1 << 20
	// connectionTimeout bounds the HTTP/2 handshake (the client's preface
	// and settings). grpc-go's default, 120 s, let a connection that never
	// sends them hold a descriptor for two minutes.
	connectionTimeout = 5 * time.Second
	// maxConnectionIdle closes (GOAWAY) a connection with no check in
	// flight for this long. Envoy reconnects on its next check; a flood
	// of idle connections lasts no longer.
	maxConnectionIdle = 2 * time.Minute
	// checkDeadline ends a check this long after its headers arrive, even
	// when the client set none (Envoy's ext_authz timeout is 200 ms by
	// default, 250 ms in our xDS config): a check still half-sent by then
	// fails with DEADLINE_EXCEEDED and its buffers are freed.
	checkDeadline = 5 * time.Second
	// shutdownGrace is how long a graceful stop waits for in-flight checks
	// before closing connections.
	shutdownGrace = 5 * time.Second
)

// CheckLimits bound the checks in flight across the gRPC server: 1024 is
// Envoy's default circuit breaker for a cluster (max_requests), so Envoy
// queues before we refuse; one client (an IP address, or a process over a
// unix socket) gets a quarter, so that no single client can take them all.
var CheckLimits = listen.CallLimits{InFlight: 1024, PerClient: 256, Deadline: checkDeadline}

// authorizationService is the health-checked service name.
const authorizationService = "envoy.service.auth.v3.Authorization"

// ServerOptions are the gRPC server options the authz server runs with,
// exported so that benchmarks compare like with like. gate admits checks
// (see CheckLimits); nil means a gate with CheckLimits and no metrics.
func ServerOptions(gate *listen.CallGate) []grpc.ServerOption {
	if gate == nil {
		gate = listen.NewCallGate("authz-grpc", CheckLimits, nil, nil)
	}
	return []grpc.ServerOption{
		grpc.MaxConcurrentStreams(maxConcurrentStreams),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time: keepaliveTime, Timeout: keepaliveTimeout, MaxConnectionIdle: maxConnectionIdle,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(maxRecvMsgBytes),
		grpc.InitialWindowSize(streamWindowBytes),
		grpc.InitialConnWindowSize(connWindowBytes),
		grpc.ConnectionTimeout(connectionTimeout),
		grpc.ForceServerCodecV2(newAnswerCodec()),
		gate.ServerOption(),
	}
}

var _ authv3.AuthorizationServer = (*Server)(nil)

// Check implements envoy.service.auth.v3.Authorization/Check. It never
// returns an error: every fault is a denial in the CheckResponse, so Envoy
// denies even with failure_mode_allow set.
func (s *Server) Check(_ context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return s.checkEncoded(req).Message(), nil
}

// checkEncoded is what the gRPC server runs per check (checkService): the
// answer Check gives, with the bytes of a shared answer encoded once (see
// answer).
func (s *Server) checkEncoded(req *authv3.CheckRequest) *answer {
	start := time.Now()
	ev := Event{Protocol: ProtocolGRPC}
	var token string
	defer func() { s.stop(start, &ev, token) }()
	a := s.check(req, &ev, &token)
	if a.empty() {
		// An empty answer would read as OK (status 0): never send one.
		s.log.Error("authz: check produced no answer; denying")
		ev.Decision = denyDecision(policy.ReasonInternalError)
		return &s.denied(policy.ReasonInternalError).answer
	}
	return a
}

// check answers one CheckRequest, filling ev. A panic anywhere in it is an
// internal_error denial.
func (s *Server) check(req *authv3.CheckRequest, ev *Event, token *string) (resp *answer) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("authz: check panicked; denying", "panic", r)
			ev.Decision = denyDecision(policy.ReasonInternalError)
			resp = &s.denied(policy.ReasonInternalError).answer
		}
	}()
	attrs := req.GetAttributes()
	ev.Source = attrs.GetSource().GetAddress().GetSocketAddress().GetAddress()
	// Envoy sets source.principal from the peer certificate (its URI SAN,
	// a SPIFFE ID under Istio or SPIRE) when the downstream connection is
	// mTLS, and leaves it empty otherwise.
	ev.Principal = attrs.GetSource().GetPrincipal()
	httpReq := attrs.GetRequest().GetHttp()
	if httpReq == nil {
		ev.Decision = denyDecision(policy.ReasonInternalError)
		return &s.denied(policy.ReasonInternalError).answer
	}
	h, ok := s.readHeaders(httpReq)
	if !ok {
		ev.Decision = denyDecision(policy.ReasonInternalError)
		return &s.denied(policy.ReasonInternalError).answer
	}
	*token = policy.BearerToken(h.authorization)
	preq := policy.Request{
		Token:  *token,
		Method: httpReq.GetMethod(),
		Host:   httpReq.GetHost(),
		Path:   httpReq.GetPath(),

		Principal: ev.Principal,
	}
	if *token == "" {
		if t := policy.DPoPToken(h.authorization); t != "" {
			*token = t
			preq.Token, preq.DPoP, preq.Scheme = t, true, httpReq.GetScheme()
			if m := httpReq.GetHeaders(); len(m) > 0 {
				preq.Proof = m[headerDPoP]
			} else {
				preq.Proof = h.dpop
			}
		}
	}
	ev.Decision = s.decide(preq)
	if !ev.Decision.Allow {
		return &s.denied(ev.Decision.Reason).answer
	}
	return s.answerGRPC(&ev.Decision, h.forged)
}

// checkHeaders is what a check needs from the request headers.
type checkHeaders struct {
	authorization string
	forged        []string // incoming x-tokenwarden- header names
	dpop          string   // the DPoP header, from the raw header list only
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
		case len(k) == len(headerDPoP) && equalFold(k, headerDPoP):
			// Two proofs joined make one invalid proof (RFC 9449 4.3).
			if h.dpop != "" {
				h.dpop += "," + string(v)
			} else {
				h.dpop = string(v)
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
		s.checks = listen.NewCallGate("authz-grpc", CheckLimits, s.listenerMetrics, s.log)
		gs := grpc.NewServer(ServerOptions(s.checks)...)
		gs.RegisterService(&checkService, s)
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
	return graceful.GRPC(ctx, s.GRPC(), lis, shutdownGrace, s.healthServer.Shutdown)
}
