//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpf

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// Sentry owns one loaded copy of the kernel programs and their maps: the
// per-token counters, the revoked set, the global counters and the
// drop-event ring buffer. Attach it to interfaces and cgroups; every
// attachment shares the same maps. Methods are safe for concurrent use.
type Sentry struct {
	cfg Config

	// mu guards closed and links; map operations hold it for reading so
	// Close never pulls a map away from under them.
	mu     sync.RWMutex
	closed bool
	links  []link.Link
	objs   tokenmeterObjects
	events *ringbuf.Reader

	// revokeMu serializes changes to the revoked set, so SetRevoked is
	// not interleaved with Revoke and Unrevoke.
	revokeMu sync.Mutex

	// countsMu guards prev: the totals at the previous ReadCounts.
	countsMu sync.Mutex
	prev     map[uint64]tokenmeterTokenStats

	reading atomic.Bool
}

// Load loads the programs and creates their maps. Nothing is attached yet.
//
// On kernels older than 5.11 the caller must raise RLIMIT_MEMLOCK first
// (rlimit.RemoveMemlock in main); newer kernels account BPF memory to the
// cgroup.
func Load(cfg Config) (*Sentry, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	spec, err := loadTokenmeter()
	if err != nil {
		return nil, fmt.Errorf("load tokenmeter object: %w", err)
	}
	spec.Maps[tokenmeterMapTokenCounts].MaxEntries = cfg.MaxTokens
	spec.Maps[tokenmeterMapRevoked].MaxEntries = cfg.MaxRevoked
	spec.Maps[tokenmeterMapEvents].MaxEntries = cfg.EventBufferBytes
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("count possible CPUs: %w", err)
	}
	spec.Maps[tokenmeterMapScratch].MaxEntries = uint32(cpus)

	s := &Sentry{cfg: cfg, prev: make(map[uint64]tokenmeterTokenStats)}
	if err := spec.LoadAndAssign(&s.objs, nil); err != nil {
		return nil, fmt.Errorf("load tokenmeter programs: %w", classify(err))
	}
	s.events, err = ringbuf.NewReader(s.objs.Events)
	if err != nil {
		s.objs.Close()
		return nil, fmt.Errorf("open drop-event ring buffer: %w", classify(err))
	}
	return s, nil
}

// Supported reports whether this process can load the kernel side, by
// loading it and releasing it again. A nil error means Load will work; see
// IsPermission and ErrUnsupported for the reasons it will not.
func Supported() error {
	s, err := Load(Config{MaxTokens: 16, MaxRevoked: 16, EventBufferBytes: uint32(os.Getpagesize())})
	if err != nil {
		return err
	}
	return s.Close()
}

// classify marks errors that mean "no privilege" or "kernel too old" so the
// agent can tell them from bugs.
func classify(err error) error {
	return classifyFor(err, missingCaps())
}

// classifyFor is classify for a process that lacks the capabilities in
// missing. EPERM or EACCES means no privilege, except that an EACCES with a
// verifier log from a fully privileged process is a rejected program (a
// bug). Without CAP_PERFMON the verifier itself refuses pointer arithmetic
// "for !root", so then a log does not make it a bug.
func classifyFor(err error, missing []string) error {
	var verr *ebpf.VerifierError
	switch {
	case !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EACCES):
		if errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("%w: %w", ErrUnsupported, err)
		}
		return err
	case len(missing) > 0:
		return fmt.Errorf("%w (missing %s): %w", ErrPermission, strings.Join(missing, ", "), err)
	case errors.As(err, &verr) && len(verr.Log) > 0:
		return err
	}
	return fmt.Errorf("%w: %w", ErrPermission, err)
}

// missingCaps lists the capabilities the kernel side needs that this
// process does not have in its effective set.
func missingCaps() []string {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil // unknown: let the errno speak
	}
	has := func(c int) bool { return data[c/32].Effective&(1<<(uint(c)%32)) != 0 }
	admin := has(unix.CAP_SYS_ADMIN)
	var missing []string
	if !has(unix.CAP_BPF) && !admin {
		missing = append(missing, "CAP_BPF")
	}
	if !has(unix.CAP_PERFMON) && !admin {
		missing = append(missing, "CAP_PERFMON")
	}
	if !has(unix.CAP_NET_ADMIN) {
		missing = append(missing, "CAP_NET_ADMIN")
	}
	return missing
}

// AttachTCX attaches the program for dir to the interface ifaceName, ahead
// of any TCX programs already there. The interface is looked up in the
// network namespace of the calling thread. Interfaces must use Ethernet
// framing (veth, lo, physical NICs); L3 devices such as WireGuard are not
// parsed.
func (s *Sentry) AttachTCX(ifaceName string, dir Direction) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	var (
		prog   *ebpf.Program
		attach ebpf.AttachType
	)
	switch dir {
	case Ingress:
		prog, attach = s.objs.TcxIngress, ebpf.AttachTCXIngress
	case Egress:
		prog, attach = s.objs.TcxEgress, ebpf.AttachTCXEgress
	default:
		return fmt.Errorf("attach tcx %s: unknown direction %v", ifaceName, dir)
	}
	iface, err := net.InterfaceByName(ifaceName)
	if err != nil {
		return fmt.Errorf("attach tcx %s %v: %w", ifaceName, dir, err)
	}
	l, err := link.AttachTCX(link.TCXOptions{
		Interface: iface.Index,
		Program:   prog,
		Attach:    attach,
		Anchor:    link.Head(),
	})
	if err != nil {
		return fmt.Errorf("attach tcx %s %v: %w", ifaceName, dir, classify(err))
	}
	s.links = append(s.links, l)
	return nil
}

// AttachCgroup attaches the ingress program to the cgroup v2 directory at
// path: it sees packets delivered to sockets of that cgroup and its
// descendants, after IP reassembly.
func (s *Sentry) AttachCgroup(path string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	l, err := link.AttachCgroup(link.CgroupOptions{
		Path:    path,
		Attach:  ebpf.AttachCGroupInetIngress,
		Program: s.objs.CgroupIngress,
	})
	if err != nil {
		return fmt.Errorf("attach cgroup %s: %w", path, classify(err))
	}
	s.links = append(s.links, l)
	return nil
}

// Revoke adds a token hash to the revoked set: from now on requests that
// carry the token are dropped and reported. Revoking twice is not an error.
func (s *Sentry) Revoke(hash uint64) error {
	return s.changeRevoked(func() error { return s.revoke(hash) })
}

// changeRevoked runs change with the revoked set locked against Close and
// against other changes, or returns ErrClosed.
func (s *Sentry) changeRevoked(change func() error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	s.revokeMu.Lock()
	defer s.revokeMu.Unlock()
	if s.closed {
		return ErrClosed
	}
	return change()
}

func (s *Sentry) revoke(hash uint64) error {
	if err := s.objs.Revoked.Update(hash, uint8(1), ebpf.UpdateAny); err != nil {
		if errors.Is(err, unix.E2BIG) {
			return fmt.Errorf("revoke %#016x: %w", hash, ErrRevokedFull)
		}
		return fmt.Errorf("revoke %#016x: %w", hash, err)
	}
	return nil
}

// Unrevoke removes a token hash from the revoked set. Removing a hash that
// is not there is not an error.
func (s *Sentry) Unrevoke(hash uint64) error {
	return s.changeRevoked(func() error { return s.unrevoke(hash) })
}

func (s *Sentry) unrevoke(hash uint64) error {
	if err := s.objs.Revoked.Delete(hash); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unrevoke %#016x: %w", hash, err)
	}
	return nil
}

// SetRevoked makes the revoked set exactly hashes. New hashes are added
// before old ones are removed, so a hash in both the old and the new set is
// enforced throughout. It fails with ErrRevokedFull, changing nothing, if
// hashes has more distinct entries than Config.MaxRevoked.
func (s *Sentry) SetRevoked(hashes []uint64) error {
	return s.changeRevoked(func() error { return s.setRevoked(hashes) })
}

func (s *Sentry) setRevoked(hashes []uint64) error {
	want := make(map[uint64]struct{}, len(hashes))
	for _, h := range hashes {
		want[h] = struct{}{}
	}
	if len(want) > int(s.cfg.MaxRevoked) {
		return fmt.Errorf("set revoked: %d hashes: %w", len(want), ErrRevokedFull)
	}

	var stale []uint64
	err := walkMap(s.objs.Revoked, func(h uint64, _ uint8) {
		if _, ok := want[h]; ok {
			delete(want, h) // already there
		} else {
			stale = append(stale, h)
		}
	})
	if err != nil {
		return fmt.Errorf("set revoked: list current set: %w", err)
	}
	for h := range want {
		if err := s.revoke(h); err != nil {
			return fmt.Errorf("set revoked: %w", err)
		}
	}
	for _, h := range stale {
		if err := s.unrevoke(h); err != nil {
			return fmt.Errorf("set revoked: %w", err)
		}
	}
	return nil
}

// walkBatch is how many entries one BPF_MAP_LOOKUP_BATCH call returns.
const walkBatch = 4096

// walkMap calls fn for every entry of a hash map, with batch lookups where
// the kernel has them. A walk over a map that changes underneath may see a
// key twice or miss one that comes or goes meanwhile.
func walkMap[K, V any](m *ebpf.Map, fn func(K, V)) error {
	keys := make([]K, walkBatch)
	vals := make([]V, walkBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			fn(keys[i], vals[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) && n == 0 {
			break
		}
		if err != nil {
			return err
		}
	}

	// No batch lookups for this map type: one key at a time.
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		fn(k, v)
	}
	return it.Err()
}

// ReadCounts returns, for every token seen since the previous call, how much
// its counters grew. The first call reports everything since Load. Traffic
// of a token whose entry the LRU map evicted before it was read is lost;
// size Config.MaxTokens above the number of tokens active per read
// interval.
func (s *Sentry) ReadCounts() ([]TokenCount, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	s.countsMu.Lock()
	defer s.countsMu.Unlock()

	cur, err := s.snapshotCounts()
	if err != nil {
		return nil, fmt.Errorf("read token counts: %w", err)
	}
	clock := newClockMapper()
	var out []TokenCount
	for h, c := range cur {
		p, ok := s.prev[h]
		if !ok || p.FirstSeenNs != c.FirstSeenNs {
			p = tokenmeterTokenStats{} // new, or evicted and recreated
		}
		if c.Requests == p.Requests {
			continue
		}
		out = append(out, TokenCount{
			Hash:     h,
			Requests: c.Requests - p.Requests,
			Bytes:    c.Bytes - p.Bytes,
			Drops:    c.Drops - p.Drops,
			LastSeen: clock.wall(c.LastSeenNs),
		})
	}
	s.prev = cur
	return out, nil
}

// snapshotCounts reads the whole token_counts map.
func (s *Sentry) snapshotCounts() (map[uint64]tokenmeterTokenStats, error) {
	cur := make(map[uint64]tokenmeterTokenStats, len(s.prev))
	err := walkMap(s.objs.TokenCounts, func(h uint64, c tokenmeterTokenStats) { cur[h] = c })
	return cur, err
}

// Stats returns the global counters summed over all CPUs.
func (s *Sentry) Stats() (Stats, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return Stats{}, ErrClosed
	}
	var perCPU []tokenmeterGlobalStats
	if err := s.objs.Stats.Lookup(uint32(0), &perCPU); err != nil {
		return Stats{}, fmt.Errorf("read stats: %w", err)
	}
	var st Stats
	for _, c := range perCPU {
		st.Packets += c.Packets
		st.Requests += c.Requests
		st.Tokens += c.Tokens
		st.Truncated += c.Truncated
		st.Incomplete += c.Incomplete
		st.Drops += c.Drops
		st.EventsLost += c.EventsLost
		st.Unparsed += c.Unparsed
	}
	return st, nil
}

// ReadEvents calls fn for each drop event, in order, until ctx ends (then it
// returns nil) or the Sentry is closed (ErrClosed). Only one ReadEvents may
// run at a time. fn runs on the calling goroutine; a slow fn makes the ring
// buffer fill up, and events that find it full are counted in
// Stats.EventsLost.
func (s *Sentry) ReadEvents(ctx context.Context, fn func(DropEvent)) error {
	if !s.reading.CompareAndSwap(false, true) {
		return ErrBusy
	}
	defer s.reading.Store(false)

	s.mu.RLock()
	rd, closed := s.events, s.closed
	s.mu.RUnlock()
	if closed {
		return ErrClosed
	}

	// Flush wakes a blocked read; a flush that lands after we return only
	// makes a later ReadEvents see ErrFlushed with a live ctx, which it
	// ignores.
	stop := context.AfterFunc(ctx, func() { _ = rd.Flush() })
	defer stop()

	var rec ringbuf.Record
	for {
		err := rd.ReadInto(&rec)
		switch {
		case err == nil:
			ev, derr := decodeDropEvent(rec.RawSample, newClockMapper())
			if derr != nil {
				return derr
			}
			fn(ev)
		case errors.Is(err, ringbuf.ErrFlushed):
			if ctx.Err() != nil {
				return nil
			}
		case errors.Is(err, os.ErrClosed):
			return ErrClosed
		default:
			return fmt.Errorf("read drop events: %w", err)
		}
	}
}

func decodeDropEvent(raw []byte, clock clockMapper) (DropEvent, error) {
	var e tokenmeterDropEvent
	if _, err := binary.Decode(raw, binary.LittleEndian, &e); err != nil {
		return DropEvent{}, fmt.Errorf("decode drop event (%d bytes): %w", len(raw), err)
	}
	var src, dst netip.Addr
	switch e.Family {
	case unix.AF_INET:
		src = netip.AddrFrom4([4]byte(e.Saddr[:4]))
		dst = netip.AddrFrom4([4]byte(e.Daddr[:4]))
	case unix.AF_INET6:
		src = netip.AddrFrom16(e.Saddr)
		dst = netip.AddrFrom16(e.Daddr)
	}
	return DropEvent{
		Hash:    e.Hash,
		Time:    clock.wall(e.KtimeNs),
		Src:     netip.AddrPortFrom(src, e.Sport),
		Dst:     netip.AddrPortFrom(dst, e.Dport),
		Ifindex: int(e.Ifindex),
		Hook:    Hook(e.Hook),
	}, nil
}

// Close detaches every program and releases every map, program, link and
// the ring-buffer reader. A running ReadEvents returns ErrClosed. Calling
// Close again does nothing.
func (s *Sentry) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	for _, l := range s.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach: %w", err))
		}
	}
	s.links = nil
	if err := s.events.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close ring buffer reader: %w", err))
	}
	if err := s.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close programs and maps: %w", err))
	}
	return errors.Join(errs...)
}

// clockMapper turns bpf_ktime_get_ns readings (CLOCK_MONOTONIC) into wall
// clock times, using one reading of both clocks.
type clockMapper struct {
	wallNow time.Time
	monoNow int64
}

func newClockMapper() clockMapper {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return clockMapper{wallNow: time.Now(), monoNow: ts.Nano()}
}

func (c clockMapper) wall(ktimeNs uint64) time.Time {
	if ktimeNs == 0 {
		return time.Time{}
	}
	return c.wallNow.Add(-time.Duration(c.monoNow - int64(ktimeNs)))
}
