package xds

import (
	"context"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
)

// streamKey names a stream. State-of-the-world and delta streams are
// numbered separately by go-control-plane, so the kind is part of the key.
type streamKey struct {
	delta bool
	id    int64
}

// stream is what the server knows of one xDS stream.
type stream struct {
	// headerService is the service of the credential in the call
	// metadata ("" for none), checked when the stream opened.
	headerService string
	id            identity
	attached      bool
	// lastNode is the node the client last sent; canonical is the node
	// the cache sees instead, named by the snapshot key.
	lastNode, canonical *core.Node
	// sent is the last response of each type on a state-of-the-world
	// stream. go-control-plane calls a stream's callbacks on that stream's
	// goroutine only, so sent needs no lock.
	sent map[string]sentResponse
}

type sentResponse struct{ nonce, version string }

// callbacks learn sidecars from their streams and watch for NACKs.
type callbacks struct{ s *Server }

var _ serverv3.Callbacks = callbacks{}

func (c callbacks) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	return c.s.beginStream(ctx, streamKey{id: id})
}

func (c callbacks) OnStreamClosed(id int64, _ *core.Node) { c.s.closeStream(streamKey{id: id}) }

func (c callbacks) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	return c.s.beginStream(ctx, streamKey{delta: true, id: id})
}

func (c callbacks) OnDeltaStreamClosed(id int64, _ *core.Node) {
	c.s.closeStream(streamKey{delta: true, id: id})
}

func (c callbacks) OnStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	st, err := c.s.admit(streamKey{id: id}, req.GetNode())
	if err != nil {
		return err
	}
	req.Node = st.canonical
	if req.GetErrorDetail() == nil {
		return nil
	}
	sent, latest := st.sent[req.GetTypeUrl()]
	latest = latest && sent.nonce == req.GetResponseNonce()
	version := req.GetVersionInfo()
	if latest {
		version = sent.version
		// go-control-plane answers a NACK with the version it just sent,
		// at once (envoyproxy/go-control-plane#46): a tight NACK loop. A
		// request that names the rejected version makes the cache wait
		// for the next snapshot instead.
		req.VersionInfo = sent.version
	}
	c.s.nack(st.id, req.GetTypeUrl(), version, req.GetErrorDetail())
	return nil
}

func (c callbacks) OnStreamResponse(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	if st := c.s.lookupStream(streamKey{id: id}); st != nil {
		st.sent[resp.GetTypeUrl()] = sentResponse{nonce: resp.GetNonce(), version: resp.GetVersionInfo()}
	}
}

func (c callbacks) OnStreamDeltaRequest(id int64, req *discovery.DeltaDiscoveryRequest) error {
	// The delta server marks what it sent as known to the client, so a NACK
	// does not loop there; it only needs reporting.
	st, err := c.s.admit(streamKey{delta: true, id: id}, req.GetNode())
	if err != nil {
		return err
	}
	// The delta server keeps the node of this request for the requests
	// that omit it.
	req.Node = st.canonical
	if req.GetErrorDetail() != nil {
		c.s.nack(st.id, req.GetTypeUrl(), "nonce "+req.GetResponseNonce(), req.GetErrorDetail())
	}
	return nil
}

func (c callbacks) OnStreamDeltaResponse(int64, *discovery.DeltaDiscoveryRequest, *discovery.DeltaDiscoveryResponse) {
}

// Fetch (REST) is not served: sidecars use ADS.
func (c callbacks) OnFetchRequest(context.Context, *discovery.DiscoveryRequest) error { return nil }

func (c callbacks) OnFetchResponse(*discovery.DiscoveryRequest, *discovery.DiscoveryResponse) {}

// beginStream records a new stream and checks the credential in its call
// metadata, if any: a stream presenting a wrong one is refused before its
// first request.
func (s *Server) beginStream(ctx context.Context, key streamKey) error {
	st := &stream{sent: map[string]sentResponse{}}
	md, _ := metadata.FromIncomingContext(ctx)
	if vals := md.Get(CredentialHeader); len(vals) > 0 {
		svc, ok := s.cfg.Credentials.service(vals[0])
		if len(vals) > 1 || !ok {
			return s.refused(refuse(refusedBadCredential, codes.PermissionDenied, "%s is not a known credential", CredentialHeader), "")
		}
		st.headerService = svc
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams[key] = st
	return nil
}

// lookupStream returns the state of stream key, or nil.
func (s *Server) lookupStream(key streamKey) *stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams[key]
}

// admit checks a request of stream key: the first must carry a node, which
// is identified and attached; a later one may omit the node or repeat the
// same one, and is refused if it names another node or identity. The
// error ends the stream.
func (s *Server) admit(key streamKey, node *core.Node) (*stream, error) {
	s.mu.Lock()
	st := s.streams[key]
	if st == nil {
		s.mu.Unlock()
		return nil, s.refused(refuse(refusedInvalidNode, codes.Internal, "unknown stream"), "")
	}
	if st.attached && (node == nil || node == st.lastNode) {
		s.mu.Unlock()
		return st, nil
	}
	s.mu.Unlock()
	if node == nil {
		return nil, s.refused(refuse(refusedInvalidNode, codes.InvalidArgument, "the first request names no node"), "")
	}
	// Identifying hashes the credential: outside the lock.
	id, r := s.identify(node, st.headerService)
	if r != nil {
		return nil, s.refused(r, node.GetId())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.attached {
		if id.key() != st.id.key() {
			return nil, s.refused(refuse(refusedNodeChanged, codes.InvalidArgument, "a later request names another node or service than the first"), st.id.nodeID)
		}
		st.lastNode = node
		return st, nil
	}
	if r := s.attachNode(id); r != nil {
		return nil, s.refused(r, id.nodeID)
	}
	st.id, st.attached, st.lastNode = id, true, node
	st.canonical = &core.Node{Id: id.key()}
	return st, nil
}

// refused counts and (rate-limited) logs a refused stream, and returns the
// status that ends it. nodeID is logged only if it is a valid one.
func (s *Server) refused(r *refusal, nodeID string) error {
	s.metrics.refused.WithLabelValues(r.reason).Inc()
	if checkNodeID(nodeID) != nil {
		nodeID = ""
	}
	if ok, suppressed := s.refusals.allow(r.reason, time.Now()); ok {
		s.log.Warn("xds: stream refused", "reason", r.reason, "node", nodeID, "why", r.msg, "suppressed_since_last", suppressed)
	}
	return r.grpcStatus()
}

func (s *Server) closeStream(key streamKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[key]
	if st == nil {
		return
	}
	delete(s.streams, key)
	if st.attached {
		s.detachNode(st.id.key())
	}
}

// nack reports a sidecar's rejection of a response. The version and error
// text are the client's: they are cut to a bounded length.
func (s *Server) nack(id identity, typeURL, version string, detail *status.Status) {
	s.metrics.nacks.WithLabelValues(typeName(typeURL)).Inc()
	s.log.Warn("xds: sidecar rejected its configuration",
		"node", id.nodeID, "service", id.service, "type", typeName(typeURL),
		"version", bounded(version, logField), "error", bounded(detail.GetMessage(), logField))
}
