package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"
)

var (
	// ErrUnsupported means this system cannot run the kernel side: not
	// Linux, a big-endian CPU, or a kernel without a feature it needs (TCX
	// needs Linux 6.6).
	ErrUnsupported = errors.New("eBPF kernel side not supported on this system")

	// ErrPermission means the process may not load or attach BPF programs.
	// It needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, or root.
	ErrPermission = errors.New("not permitted to load eBPF programs (needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, or root)")

	// ErrClosed is returned by the methods of a closed Sentry.
	ErrClosed = errors.New("sentry is closed")

	// ErrRevokedFull means the kernel's revoked set is at Config.MaxRevoked
	// entries: the revocation is not enforced in the kernel.
	ErrRevokedFull = errors.New("kernel revoked set is full (raise Config.MaxRevoked)")

	// ErrBusy is returned by ReadEvents while another ReadEvents runs.
	ErrBusy = errors.New("drop events are already being read")

	// ErrInvalidConfig wraps the reason a Config was refused.
	ErrInvalidConfig = errors.New("invalid bpf config")
)

// IsPermission reports whether err means the process lacks the privilege to
// use BPF (as opposed to, say, a program the verifier rejected).
func IsPermission(err error) bool {
	return errors.Is(err, ErrPermission)
}

// Config sizes the kernel maps. The zero value is a usable default.
type Config struct {
	// MaxTokens is how many token hashes are counted at once. The map is
	// an LRU: when it is full, the least recently seen token's counters
	// are evicted. Default 65536.
	MaxTokens uint32

	// MaxRevoked is the capacity of the revoked set. Revocations are never
	// evicted; Revoke fails with ErrRevokedFull instead. Default 65536.
	MaxRevoked uint32

	// EventBufferBytes is the size of the drop-event ring buffer: a power
	// of two and a multiple of the page size. Default 256 KiB (4096 events).
	EventBufferBytes uint32
}

const (
	defaultMaxTokens        = 65536
	defaultMaxRevoked       = 65536
	defaultEventBufferBytes = 256 << 10
)

func (c Config) withDefaults() (Config, error) {
	if c.MaxTokens == 0 {
		c.MaxTokens = defaultMaxTokens
	}
	if c.MaxRevoked == 0 {
		c.MaxRevoked = defaultMaxRevoked
	}
	if c.EventBufferBytes == 0 {
		c.EventBufferBytes = defaultEventBufferBytes
	}
	page := uint32(os.Getpagesize())
	if b := c.EventBufferBytes; b&(b-1) != 0 || b%page != 0 {
		return c, fmt.Errorf("%w: EventBufferBytes %d is not a power of two multiple of the page size (%d)",
			ErrInvalidConfig, b, page)
	}
	return c, nil
}

// Direction selects the TCX hook of an interface.
type Direction int

const (
	// Ingress sees packets arriving on the interface.
	Ingress Direction = iota + 1
	// Egress sees packets leaving through the interface.
	Egress
)

func (d Direction) String() string {
	switch d {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return fmt.Sprintf("Direction(%d)", int(d))
}

// Hook names the program that saw a packet.
type Hook uint8

// Values match enum hook in tokenmeter.c.
const (
	HookTCXIngress    Hook = 1
	HookTCXEgress     Hook = 2
	HookCgroupIngress Hook = 3
)

func (h Hook) String() string {
	switch h {
	case HookTCXIngress:
		return "tcx_ingress"
	case HookTCXEgress:
		return "tcx_egress"
	case HookCgroupIngress:
		return "cgroup_ingress"
	}
	return fmt.Sprintf("Hook(%d)", uint8(h))
}

// TokenCount is the traffic of one token since the previous ReadCounts.
type TokenCount struct {
	Hash     uint64 // HashToken of the token
	Requests uint64 // requests counted, dropped ones included
	Bytes    uint64 // IP length of the requests' first packets
	Drops    uint64 // of those, dropped because a bearer token in the request is revoked
	LastSeen time.Time
}

// Stats are the kernel's global counters, summed over CPUs, since Load.
type Stats struct {
	Packets    uint64 // packets seen by any attached program
	Requests   uint64 // packets whose TCP payload starts like a request line (method, SP, target)
	Tokens     uint64 // requests whose first bearer token was found, hashed and counted
	Truncated  uint64 // bearer tokens longer than MaxTokenLen (not counted)
	Incomplete uint64 // bearer tokens cut by the end of the packet (not counted)
	Drops      uint64 // requests dropped because any of their bearer tokens is revoked
	EventsLost uint64 // drop events lost because the ring buffer was full
	Unparsed   uint64 // packets whose IP/TCP headers could not be read
}

// DropEvent reports one request dropped for carrying a revoked token.
type DropEvent struct {
	Hash    uint64    // the revoked token's hash (not always the first token's)
	Time    time.Time // when the kernel dropped it
	Src     netip.AddrPort
	Dst     netip.AddrPort
	Ifindex int
	Hook    Hook
}
