//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpf

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
)

// requireBPFEnv makes privileged tests fail instead of skip.
const requireBPFEnv = "TOKENWARDEN_REQUIRE_BPF"

// skipOrFail skips a test that needs BPF, or fails it when
// TOKENWARDEN_REQUIRE_BPF=1 (CI on a machine that must run them).
func skipOrFail(tb testing.TB, format string, args ...any) {
	tb.Helper()
	if os.Getenv(requireBPFEnv) == "1" {
		tb.Fatalf(format+" (and %s=1)", append(args, requireBPFEnv)...)
	}
	tb.Skipf(format+" (set %s=1 to make this a failure)", append(args, requireBPFEnv)...)
}

// loadSentry loads a Sentry that is closed when the test ends.
func loadSentry(tb testing.TB, cfg Config) *Sentry {
	tb.Helper()
	s := load(tb, cfg)
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("close: %v", err)
		}
	})
	return s
}

// load loads a Sentry, skipping the test when this process may not use BPF
// (see skipOrFail). Any other failure, such as a verifier rejection, fails
// the test.
func load(tb testing.TB, cfg Config) *Sentry {
	tb.Helper()
	s, err := Load(cfg)
	switch {
	case err == nil:
		return s
	case IsPermission(err), errors.Is(err, ErrUnsupported):
		skipOrFail(tb, "cannot load BPF programs here: %v", err)
	default:
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			tb.Fatalf("load: %+v", verr)
		}
		tb.Fatalf("load: %v", err)
	}
	return nil
}

// Return values of the programs, as BPF_PROG_TEST_RUN reports them.
const (
	tcPass     = 0xffffffff // TC_ACT_UNSPEC (-1): next program, then the stack
	tcDrop     = 2          // TC_ACT_SHOT
	cgroupPass = 1
	cgroupDrop = 0
)

// progCase is one of the three programs with its verdict values.
type progCase struct {
	name       string
	hook       Hook
	pass, drop uint32
	prog       func(*Sentry) *ebpf.Program
}

var programs = []progCase{
	{"tcx_ingress", HookTCXIngress, tcPass, tcDrop, func(s *Sentry) *ebpf.Program { return s.objs.TcxIngress }},
	{"tcx_egress", HookTCXEgress, tcPass, tcDrop, func(s *Sentry) *ebpf.Program { return s.objs.TcxEgress }},
	{"cgroup_ingress", HookCgroupIngress, cgroupPass, cgroupDrop, func(s *Sentry) *ebpf.Program { return s.objs.CgroupIngress }},
}

// runResult is what one BPF_PROG_TEST_RUN of a frame did.
type runResult struct {
	ret    uint32
	stats  Stats                           // growth of the global counters
	counts map[uint64]tokenmeterTokenStats // token_counts after the run
}

// runFrame empties token_counts, runs prog once on frame and reports what
// changed.
func runFrame(tb testing.TB, s *Sentry, prog *ebpf.Program, frame []byte) runResult {
	tb.Helper()
	clearTokenCounts(tb, s)
	before, err := s.Stats()
	if err != nil {
		tb.Fatal(err)
	}
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		tb.Fatalf("run %v on a %d-byte frame: %v", prog, len(frame), err)
	}
	after, err := s.Stats()
	if err != nil {
		tb.Fatal(err)
	}
	counts, err := s.snapshotCounts()
	if err != nil {
		tb.Fatal(err)
	}
	return runResult{ret: ret, stats: statsDelta(before, after), counts: counts}
}

func clearTokenCounts(tb testing.TB, s *Sentry) {
	tb.Helper()
	cur, err := s.snapshotCounts()
	if err != nil {
		tb.Fatal(err)
	}
	for k := range cur {
		if err := s.objs.TokenCounts.Delete(k); err != nil {
			tb.Fatal(err)
		}
	}
}

func statsDelta(a, b Stats) Stats {
	return Stats{
		Packets:    b.Packets - a.Packets,
		Requests:   b.Requests - a.Requests,
		Tokens:     b.Tokens - a.Tokens,
		Truncated:  b.Truncated - a.Truncated,
		Incomplete: b.Incomplete - a.Incomplete,
		Drops:      b.Drops - a.Drops,
		EventsLost: b.EventsLost - a.EventsLost,
		Unparsed:   b.Unparsed - a.Unparsed,
	}
}

// Test addresses. They only ever appear in crafted frames handed to
// BPF_PROG_TEST_RUN, never on an interface.
var (
	testSrc4 = netip.MustParseAddr("10.199.0.1")
	testDst4 = netip.MustParseAddr("10.199.0.2")
	testSrc6 = netip.MustParseAddr("fd00:7701::1")
	testDst6 = netip.MustParseAddr("fd00:7701::2")
)

const (
	testSport = 40123
	testDport = 8080
)

// frame describes an Ethernet frame to build around a TCP payload.
type frame struct {
	v6         bool
	proto      uint8  // IP protocol; 0 means TCP
	etherType  uint16 // 0 means IPv4 or IPv6 as v6 says
	ipv6Ext    []byte // IPv6 extension headers, inserted before TCP (v6 only)
	extProto   uint8  // next header value announcing ipv6Ext
	fragOff    uint16 // IPv4 fragment offset in 8-byte units (v4 only)
	mf         bool   // IPv4 "more fragments"
	tcpOpts    int    // bytes of TCP options (NOPs), a multiple of 4
	ipOpts     int    // bytes of IPv4 options (NOPs), a multiple of 4
	trailer    []byte // Ethernet padding after the IP packet
	badIHL     bool   // IPv4 header length below 20
	badDoff    bool   // TCP data offset below 20
	badVersion bool   // wrong IP version nibble
}

// build returns the Ethernet frame carrying payload.
func (f frame) build(payload []byte) []byte {
	proto := f.proto
	if proto == 0 {
		proto = 6
	}
	l4 := payload
	if proto == 6 {
		doff := 20 + f.tcpOpts
		tcp := make([]byte, doff, doff+len(payload))
		binary.BigEndian.PutUint16(tcp[0:], testSport)
		binary.BigEndian.PutUint16(tcp[2:], testDport)
		binary.BigEndian.PutUint32(tcp[4:], 1000) // seq
		binary.BigEndian.PutUint32(tcp[8:], 2000) // ack
		tcp[12] = byte(doff/4) << 4
		if f.badDoff {
			tcp[12] = 4 << 4
		}
		tcp[13] = 0x18 // PSH|ACK
		binary.BigEndian.PutUint16(tcp[14:], 65535)
		for i := 20; i < doff; i++ {
			tcp[i] = 1 // NOP
		}
		l4 = append(tcp, payload...)
	}

	eth := make([]byte, 14)
	copy(eth[0:6], []byte{0x02, 0, 0, 0, 0, 2})
	copy(eth[6:12], []byte{0x02, 0, 0, 0, 0, 1})

	var ip []byte
	if f.v6 {
		binary.BigEndian.PutUint16(eth[12:], 0x86dd)
		next := proto
		if len(f.ipv6Ext) > 0 {
			next = f.extProto
		}
		ip = make([]byte, 40)
		ip[0] = 0x60
		if f.badVersion {
			ip[0] = 0x40
		}
		binary.BigEndian.PutUint16(ip[4:], uint16(len(f.ipv6Ext)+len(l4)))
		ip[6] = next
		ip[7] = 64
		src, dst := testSrc6.As16(), testDst6.As16()
		copy(ip[8:], src[:])
		copy(ip[24:], dst[:])
		ip = append(ip, f.ipv6Ext...)
	} else {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		ihl := 20 + f.ipOpts
		ip = make([]byte, ihl)
		ip[0] = 0x40 | byte(ihl/4)
		if f.badIHL {
			ip[0] = 0x44
		}
		if f.badVersion {
			ip[0] = 0x60 | byte(ihl/4)
		}
		binary.BigEndian.PutUint16(ip[2:], uint16(ihl+len(l4)))
		frag := f.fragOff & 0x1fff
		if f.mf {
			frag |= 0x2000
		}
		binary.BigEndian.PutUint16(ip[6:], frag)
		ip[8] = 64
		ip[9] = proto
		src, dst := testSrc4.As4(), testDst4.As4()
		copy(ip[12:], src[:])
		copy(ip[16:], dst[:])
		for i := 20; i < ihl; i++ {
			ip[i] = 1 // NOP
		}
	}
	if f.etherType != 0 {
		binary.BigEndian.PutUint16(eth[12:], f.etherType)
	}
	out := append(eth, ip...)
	out = append(out, l4...)
	return append(out, f.trailer...)
}
