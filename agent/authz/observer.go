package authz

import (
	"time"

	"github.com/tokenwarden/tokenwarden/policy"
)

// Protocol names the mode a check arrived by.
type Protocol string

const (
	ProtocolGRPC Protocol = "grpc"
	ProtocolHTTP Protocol = "http"
)

// Event is what an Observer learns of one check. It never holds the token.
type Event struct {
	// Decision is Decide's answer. Its Scopes are shared with the token
	// cache: read them, never modify them.
	Decision policy.Decision
	// Source is the client's address as the proxy reported it ("" when
	// unknown): Envoy's source socket address, nginx's X-Real-IP, the last
	// X-Forwarded-For hop, or the peer of the HTTP connection.
	Source string
	// WireHash is the wire identity of the presented token
	// (policy.WireHash: the first 64 bits of its signature), as the kernel
	// side computes it; 0 when the request carried none. With
	// Decision.TokenID it maps kernel counters to token ids.
	WireHash uint64
	// Principal is the peer's workload identity as the proxy established
	// it (Envoy's source.principal, or the trusted client-certificate
	// header in HTTP mode); "" when none. With Decision.Bound it tells whom
	// a bound token was stolen from and who presented it.
	Principal string
	Protocol  Protocol
	Duration  time.Duration
}

// Observer sees every check, allowed or denied. ObserveCheck is called
// synchronously on the hot path, once per check: it must be cheap and must
// not block (hand work to a channel or counters). A panic in it is
// recovered and logged.
type Observer interface {
	ObserveCheck(Event)
}

// ObserverFunc adapts a function to an Observer.
type ObserverFunc func(Event)

// ObserveCheck calls f.
func (f ObserverFunc) ObserveCheck(e Event) { f(e) }

var _ Observer = ObserverFunc(nil)
