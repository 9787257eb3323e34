package authz

import (
	"log/slog"
	"strings"
	"sync"
	"time"
)

// MisconfiguredWarnEvery is how often at most the agent warns about HTTP
// checks of one kind (endpoint kind and what is missing) denied
// proxy_misconfigured. The checks between two warnings are counted in the
// second. The denials themselves are all counted in
// tokenwarden_authz_checks_total{reason="proxy_misconfigured"}.
const MisconfiguredWarnEvery = time.Minute

// maxLoggedPath bounds the check path quoted in the warning: it comes from
// whoever reached the listener.
const maxLoggedPath = 128

// misconfiguredLog warns about proxies whose checks lack what their endpoint
// needs, at most once per MisconfiguredWarnEvery for each kind of fault, so
// a client that floods the listener with incomplete checks cannot flood
// the log. Its keys are an endpoint kind and a constant (missingEndpoint,
// missingService or a header name), never request data: the map is
// bounded.
type misconfiguredLog struct {
	log *slog.Logger
	now func() time.Time

	mu   sync.Mutex
	last map[misconfiguredKey]*misconfiguredSeen
}

type misconfiguredKey struct{ endpoint, missing string }

type misconfiguredSeen struct {
	at         time.Time
	suppressed int
}

func newMisconfiguredLog(log *slog.Logger, now func() time.Time) *misconfiguredLog {
	return &misconfiguredLog{log: log, now: now, last: map[misconfiguredKey]*misconfiguredSeen{}}
}

// warn logs one check denied proxy_misconfigured, unless one of its kind
// was logged less than MisconfiguredWarnEvery ago.
func (m *misconfiguredLog) warn(path, missing, peer string) {
	key := misconfiguredKey{endpoint: endpointKind(path), missing: missing}
	now := m.now()
	m.mu.Lock()
	seen, ok := m.last[key]
	if ok && now.Sub(seen.at) < MisconfiguredWarnEvery {
		seen.suppressed++
		m.mu.Unlock()
		return
	}
	if !ok {
		seen = &misconfiguredSeen{}
		m.last[key] = seen
	}
	suppressed := seen.suppressed
	seen.at, seen.suppressed = now, 0
	m.mu.Unlock()
	if len(path) > maxLoggedPath {
		path = path[:maxLoggedPath]
	}
	m.log.Warn("authz: HTTP check denied proxy_misconfigured: the proxy's auth configuration does not send what this endpoint needs (see docs/authz.md, HTTP mode)",
		"endpoint", key.endpoint, "missing", missing, "path", path, "peer", peer,
		"since_last_warning", suppressed)
}

// endpointKind is the HTTP-mode endpoint a check path is for, or "unknown".
func endpointKind(path string) string {
	for _, p := range []string{PathEnvoy, PathNginx, PathForwardAuth} {
		if path == p || strings.HasPrefix(path, p+"/") {
			return p
		}
	}
	return "unknown"
}
