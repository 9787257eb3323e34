package xds

import (
	"fmt"
	"sync"
	"time"
	"unicode/utf8"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	// maxNodeIDLen bounds a node id. An Istio-style id (type, pod IP, pod
	// name of at most 253 and namespace of at most 63 characters, domain)
	// fits with room to spare.
	maxNodeIDLen = 512
	// maxStreamsPerNode bounds the open streams of one node: Envoy and
	// grpc-go open one ADS stream, two while reconnecting.
	maxStreamsPerNode = 4
	// logField bounds a client-chosen string written to the log.
	logField = 256
	// refusalLogEvery is the most often one refusal reason is logged; the
	// metric counts every refusal.
	refusalLogEvery = 10 * time.Second
)

// Reasons a stream is refused: the values of the reason label of
// tokenwarden_xds_refused_streams_total.
const (
	refusedNoCredential    = "no_credential"    // none presented, and unauthenticated nodes are not allowed
	refusedBadCredential   = "bad_credential"   // presented, but in no entry of the credentials file
	refusedServiceMismatch = "service_mismatch" // the node claims another service than its credential's
	refusedInvalidNode     = "invalid_node"     // no node on the first request, or an empty, long or non-printable id
	refusedNodeChanged     = "node_changed"     // a later request names another node or identity
	refusedNodeLimit       = "node_limit"       // Config.MaxNodes nodes are connected
	refusedStreamLimit     = "stream_limit"     // the node has maxStreamsPerNode streams open
)

var refusalReasons = []string{
	refusedNoCredential, refusedBadCredential, refusedServiceMismatch, refusedInvalidNode,
	refusedNodeChanged, refusedNodeLimit, refusedStreamLimit,
}

// refusal is why a stream is ended: a reason for the metric, a gRPC status
// for the client.
type refusal struct {
	reason string
	code   codes.Code
	msg    string
}

func (r *refusal) Error() string { return r.reason + ": " + r.msg }

func (r *refusal) grpcStatus() error { return status.Error(r.code, "xds: "+r.msg) }

func refuse(reason string, code codes.Code, format string, args ...any) *refusal {
	return &refusal{reason: reason, code: code, msg: fmt.Sprintf(format, args...)}
}

// identity is who a stream's node is, as the server decided.
type identity struct {
	nodeID        string
	service       string // "" when an unauthenticated node names none
	noName        error  // why service is "" (unauthenticated nodes)
	authenticated bool   // service comes from a credential
}

// key is the node's snapshot key. It holds the service, so two nodes that
// claim one id under different services never share, or change, each
// other's configuration.
func (id identity) key() string {
	mode := "unauthenticated"
	if id.authenticated {
		mode = "credential"
	}
	return mode + "/" + id.service + "/" + id.nodeID
}

// identify decides a node's identity. headerService is the service of the
// credential sent as gRPC metadata ("" for none). The service comes from a
// credential; only where Config.AllowUnauthenticated is set does a node
// without one name its own (NodeService).
func (s *Server) identify(node *core.Node, headerService string) (identity, *refusal) {
	id := node.GetId()
	if err := checkNodeID(id); err != nil {
		return identity{}, refuse(refusedInvalidNode, codes.InvalidArgument, "%v", err)
	}
	service := headerService
	if v, ok := node.GetMetadata().GetFields()[CredentialMetadataKey]; ok {
		svc, valid := s.cfg.Credentials.service(v.GetStringValue())
		if !valid {
			return identity{}, refuse(refusedBadCredential, codes.PermissionDenied, "node metadata %s is not a known credential", CredentialMetadataKey)
		}
		if service != "" && service != svc {
			return identity{}, refuse(refusedServiceMismatch, codes.PermissionDenied, "the credentials in the call metadata and the node metadata name different services")
		}
		service = svc
	}
	if service == "" {
		if !s.cfg.AllowUnauthenticated {
			return identity{}, refuse(refusedNoCredential, codes.Unauthenticated,
				"no credential: send it in the %s call metadata or the %s node metadata", CredentialHeader, CredentialMetadataKey)
		}
		claim, noName := NodeService(node)
		if len(claim) > 63 || !serviceName.MatchString(claim) && claim != "" {
			claim, noName = "", fmt.Errorf("%w: node %q names no valid service name", ErrNoService, id)
		}
		return identity{nodeID: id, service: claim, noName: noName}, nil
	}
	if v, ok := node.GetMetadata().GetFields()[ServiceMetadataKey]; ok && v.GetStringValue() != service {
		return identity{}, refuse(refusedServiceMismatch, codes.PermissionDenied,
			"node metadata %s differs from the service of its credential (%s)", ServiceMetadataKey, service)
	}
	return identity{nodeID: id, service: service, authenticated: true}, nil
}

// checkNodeID accepts ids of 1 to maxNodeIDLen printable ASCII characters.
// The error never repeats the id.
func checkNodeID(id string) error {
	if id == "" {
		return fmt.Errorf("node id is empty")
	}
	if len(id) > maxNodeIDLen {
		return fmt.Errorf("node id is %d bytes, at most %d", len(id), maxNodeIDLen)
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x21 || id[i] > 0x7e {
			return fmt.Errorf("node id has a byte 0x%02x at %d: want printable ASCII", id[i], i)
		}
	}
	return nil
}

// bounded cuts a client-chosen string to at most n bytes (at a rune
// boundary) for a log line, saying how much was cut.
func bounded(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s…[%d bytes cut]", s[:cut], len(s)-cut)
}

// refusalLog logs each refusal reason at most once per refusalLogEvery,
// with the number of refusals it did not log, so a flood of refused streams
// cannot flood the log.
type refusalLog struct {
	mu         sync.Mutex
	last       map[string]time.Time
	suppressed map[string]int
}

// allow says whether a refusal of reason is logged now, and how many of
// that reason were not logged since the last one.
func (l *refusalLog) allow(reason string, now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last, l.suppressed = map[string]time.Time{}, map[string]int{}
	}
	if t, ok := l.last[reason]; ok && now.Sub(t) < refusalLogEvery {
		l.suppressed[reason]++
		return false, 0
	}
	n := l.suppressed[reason]
	l.last[reason], l.suppressed[reason] = now, 0
	return true, n
}
