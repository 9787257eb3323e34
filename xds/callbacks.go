package xds

import (
	"context"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
)

// streamKey names a stream. State-of-the-world and delta streams are
// numbered separately by go-control-plane, so the kind is part of the key.
type streamKey struct {
	delta bool
	id    int64
}

// stream is what the server knows of one xDS stream.
type stream struct {
	nodeID   string
	attached bool
	// sent is the last response of each type on a state-of-the-world
	// stream. go-control-plane calls a stream's callbacks on that stream's
	// goroutine only, so sent needs no lock.
	sent map[string]sentResponse
}

type sentResponse struct{ nonce, version string }

// callbacks learn sidecars from their streams and watch for NACKs.
type callbacks struct{ s *Server }

var _ serverv3.Callbacks = callbacks{}

func (c callbacks) OnStreamOpen(context.Context, int64, string) error { return nil }

func (c callbacks) OnStreamClosed(id int64, _ *core.Node) { c.s.closeStream(streamKey{id: id}) }

func (c callbacks) OnDeltaStreamOpen(context.Context, int64, string) error { return nil }

func (c callbacks) OnDeltaStreamClosed(id int64, _ *core.Node) {
	c.s.closeStream(streamKey{delta: true, id: id})
}

func (c callbacks) OnStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	st := c.s.openStream(streamKey{id: id}, req.GetNode())
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
	c.s.nack(st.nodeID, req.GetTypeUrl(), version, req.GetErrorDetail())
	return nil
}

func (c callbacks) OnStreamResponse(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	st := c.s.openStream(streamKey{id: id}, nil)
	st.sent[resp.GetTypeUrl()] = sentResponse{nonce: resp.GetNonce(), version: resp.GetVersionInfo()}
}

func (c callbacks) OnStreamDeltaRequest(id int64, req *discovery.DeltaDiscoveryRequest) error {
	// The delta server marks what it sent as known to the client, so a NACK
	// does not loop there; it only needs reporting.
	st := c.s.openStream(streamKey{delta: true, id: id}, req.GetNode())
	if req.GetErrorDetail() != nil {
		c.s.nack(st.nodeID, req.GetTypeUrl(), "nonce "+req.GetResponseNonce(), req.GetErrorDetail())
	}
	return nil
}

func (c callbacks) OnStreamDeltaResponse(int64, *discovery.DeltaDiscoveryRequest, *discovery.DeltaDiscoveryResponse) {
}

// Fetch (REST) is not served: sidecars use ADS.
func (c callbacks) OnFetchRequest(context.Context, *discovery.DiscoveryRequest) error { return nil }

func (c callbacks) OnFetchResponse(*discovery.DiscoveryRequest, *discovery.DiscoveryResponse) {}

// openStream returns the state of stream key, attaching its node on the
// first request that carries one (later requests may omit it).
func (s *Server) openStream(key streamKey, node *core.Node) *stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[key]
	if st == nil {
		st = &stream{sent: map[string]sentResponse{}}
		s.streams[key] = st
	}
	if !st.attached && node != nil {
		st.nodeID = s.attachNode(node)
		st.attached = true
	}
	return st
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
		s.detachNode(st.nodeID)
	}
}

// nack reports a sidecar's rejection of a response.
func (s *Server) nack(nodeID, typeURL, version string, detail *status.Status) {
	s.metrics.nacks.WithLabelValues(typeName(typeURL)).Inc()
	s.log.Warn("xds: sidecar rejected its configuration",
		"node", nodeID, "service", s.service(nodeID), "type", typeName(typeURL),
		"version", version, "error", detail.GetMessage())
}
