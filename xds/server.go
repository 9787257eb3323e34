package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"

	"github.com/tokenwarden/tokenwarden/policy"
)

// Server serves the sidecars on this node their configuration over ADS. It
// learns sidecars from their streams, gives each the snapshot of its service
// (or the deny-all one) on first sight, and pushes new versions to all of
// them on SetPolicy.
type Server struct {
	cfg     Config
	log     *slog.Logger
	cache   cachev3.SnapshotCache
	metrics *metrics
	build   builder // Resources; tests swap in other resource sets
	denyAll *cachev3.Snapshot

	mu         sync.Mutex
	policy     *policy.Policy
	generation int
	byService  map[string]*cachev3.Snapshot
	nodes      map[string]*sidecar // connected sidecars by identity.key()
	streams    map[streamKey]*stream
	refusals   refusalLog
}

// builder makes the resources of one service's sidecars.
type builder func(p *policy.Policy, service string, cfg Config) (map[resource.Type][]types.Resource, error)

// sidecar is one connected node. Its identity, and so its service, is
// fixed when its first stream is admitted: a stream that names the same
// node id under another service is another sidecar.
type sidecar struct {
	id      identity
	streams int  // open streams; the node is forgotten at zero
	denied  bool // served the deny-all configuration
}

// New checks cfg and builds a server. It serves nothing until SetPolicy:
// sidecars that connect before wait for their first configuration.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("xds config: %w", err)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	deny, err := denyAllResources(cfg)
	if err != nil {
		return nil, fmt.Errorf("deny-all configuration: %w", err)
	}
	denySnap, err := newSnapshot(deny)
	if err != nil {
		return nil, fmt.Errorf("deny-all configuration: %w", err)
	}
	if cfg.Credentials == nil && !cfg.AllowUnauthenticated {
		cfg.Logger.Warn("xds: no sidecar credentials configured: every xDS stream will be refused")
	} else if cfg.AllowUnauthenticated {
		cfg.Logger.Warn("xds: sidecars without a credential are admitted and name their own service; anyone who reaches the xDS port can choose a node's routes (development only)")
	}
	return &Server{
		cfg: cfg,
		log: cfg.Logger,
		// ADS: answer a sidecar only once it asks for every resource of a
		// type, so it never sees a route configuration its listener does not
		// name yet.
		cache:   cachev3.NewSnapshotCache(true, cachev3.IDHash{}, cacheLogger(cfg.Logger)),
		metrics: m,
		build:   Resources,
		denyAll: denySnap,
		nodes:   map[string]*sidecar{},
		streams: map[streamKey]*stream{},
	}, nil
}

// SetPolicy builds every service's configuration from p and pushes it to
// every connected sidecar; sidecars whose configuration did not change get
// nothing. If any service fails to build, SetPolicy changes nothing and
// returns the error: the sidecars keep the last good configuration.
func (s *Server) SetPolicy(p *policy.Policy) error {
	if p == nil {
		return errors.New("xds: nil policy")
	}
	byService := make(map[string]*cachev3.Snapshot, len(p.Doc.Services))
	for _, svc := range p.ServiceNames() {
		res, err := s.build(p, svc, s.cfg)
		if err != nil {
			return fmt.Errorf("xds: service %s: %w", svc, err)
		}
		snap, err := newSnapshot(res)
		if err != nil {
			return fmt.Errorf("xds: service %s: %w", svc, err)
		}
		byService[svc] = snap
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.policy = p
	s.byService = byService
	s.generation++
	var errs []error
	for key, n := range s.nodes {
		if err := s.configure(key, n); err != nil {
			errs = append(errs, err)
		}
	}
	s.metrics.snapshotVersion.Set(float64(s.generation))
	s.log.Info("xds: policy applied", "generation", s.generation, "services", len(byService), "sidecars", len(s.nodes))
	return errors.Join(errs...)
}

// configure sets the snapshot of sidecar key: its service's, or the deny-all
// one, reported once each time the sidecar lands on it. Called with s.mu held
// and a policy set.
func (s *Server) configure(key string, n *sidecar) error {
	snap, ok := s.byService[n.id.service]
	if !ok {
		snap = s.denyAll
		if !n.denied {
			s.metrics.unknownNodes.Inc()
			reason := fmt.Sprintf("service %q is not in the policy", n.id.service)
			if n.id.service == "" {
				reason = n.id.noName.Error()
			}
			s.log.Warn("xds: sidecar has no service in the policy; serving it the deny-all configuration",
				"node", n.id.nodeID, "reason", reason)
		}
	}
	n.denied = !ok
	if err := s.cache.SetSnapshot(context.Background(), key, snap); err != nil {
		return fmt.Errorf("xds: set snapshot of node %s: %w", n.id.nodeID, err)
	}
	return nil
}

// attachNode counts a stream of node id, configuring the node on first
// sight. It refuses a new node beyond Config.MaxNodes and a stream beyond
// maxStreamsPerNode, so no client makes the server hold unbounded
// snapshots. Called with s.mu held.
func (s *Server) attachNode(id identity) *refusal {
	key := id.key()
	n := s.nodes[key]
	if n == nil {
		if len(s.nodes) >= s.cfg.MaxNodes {
			return refuse(refusedNodeLimit, codes.ResourceExhausted, "%d nodes are connected, the most this server holds", s.cfg.MaxNodes)
		}
		n = &sidecar{id: id}
		s.nodes[key] = n
		s.metrics.connectedNodes.Inc()
		s.log.Debug("xds: sidecar connected", "node", id.nodeID, "service", id.service, "authenticated", id.authenticated)
		if s.policy != nil {
			if err := s.configure(key, n); err != nil {
				s.log.Error("xds: configure sidecar", "node", id.nodeID, "err", err)
			}
		}
	}
	if n.streams >= maxStreamsPerNode {
		return refuse(refusedStreamLimit, codes.ResourceExhausted, "the node has %d streams open, the most it may", maxStreamsPerNode)
	}
	n.streams++
	return nil
}

// detachNode uncounts a stream of node key and forgets the node with its
// last stream, so pods that come and go leave nothing behind. Called with
// s.mu held.
func (s *Server) detachNode(key string) {
	n := s.nodes[key]
	if n == nil {
		return
	}
	n.streams--
	if n.streams > 0 {
		return
	}
	delete(s.nodes, key)
	s.cache.ClearSnapshot(key)
	s.metrics.connectedNodes.Dec()
	s.log.Debug("xds: sidecar disconnected", "node", n.id.nodeID)
}

// cacheLogger hands go-control-plane's logs to slog. Its per-watch
// information lines are chatter at a thousand sidecars, so they go to debug.
func cacheLogger(l *slog.Logger) log.Logger {
	at := func(level slog.Level) func(string, ...any) {
		return func(format string, args ...any) {
			if l.Enabled(context.Background(), level) {
				l.Log(context.Background(), level, "xds: "+fmt.Sprintf(format, args...))
			}
		}
	}
	return log.LoggerFuncs{
		DebugFunc: at(slog.LevelDebug),
		InfoFunc:  at(slog.LevelDebug),
		WarnFunc:  at(slog.LevelWarn),
		ErrorFunc: at(slog.LevelError),
	}
}
