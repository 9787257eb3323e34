//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpf

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tokenwarden/tokenwarden/policy"
)

// checkRun compares one BPF_PROG_TEST_RUN with the expected parse result.
func checkRun(t *testing.T, got runResult, want parseResult, ipLen int, p progCase) {
	t.Helper()
	if got.ret != p.pass {
		t.Errorf("returned %#x, want pass (%#x)", got.ret, p.pass)
	}
	wantStats := Stats{
		Packets:    1,
		Requests:   uint64(btoi(want.isRequest)),
		Tokens:     uint64(btoi(want.tokenFound)),
		Truncated:  uint64(btoi(want.truncated)),
		Incomplete: uint64(btoi(want.incomplete)),
	}
	if got.stats != wantStats {
		t.Errorf("stats grew by %+v, want %+v", got.stats, wantStats)
	}
	if !want.tokenFound {
		if len(got.counts) != 0 {
			t.Errorf("counted %v, want nothing", got.counts)
		}
		return
	}
	c, ok := got.counts[want.hash]
	if !ok || len(got.counts) != 1 {
		t.Fatalf("counted %v, want only hash %#x", got.counts, want.hash)
	}
	if c.Requests != 1 || c.Bytes != uint64(ipLen) || c.Drops != 0 || c.LastSeenNs == 0 {
		t.Errorf("counters %+v, want 1 request of %d bytes, no drops, a last-seen time", c, ipLen)
	}
}

// TestProgramPayloads runs every payload case through the three programs,
// over IPv4 and IPv6, and checks the kernel found what the table says.
func TestProgramPayloads(t *testing.T) {
	s := loadSentry(t, Config{})
	for _, pc := range payloadCases {
		want := parseResult{
			isRequest:  pc.isRequest,
			tokenFound: pc.token != "",
			truncated:  pc.truncated,
			incomplete: pc.incomplete,
		}
		if want.tokenFound {
			want.hash = HashToken(pc.token)
		}
		for _, v6 := range []bool{false, true} {
			fr := frame{v6: v6}.build([]byte(pc.payload))
			for _, p := range programs {
				t.Run(fmt.Sprintf("%s/%s/%s", pc.name, family(v6), p.name), func(t *testing.T) {
					got := runFrame(t, s, p.prog(s), fr)
					checkRun(t, got, want, len(fr)-14, p)
				})
			}
		}
	}
}

// TestProgramSplitRequest sends one request as two segments: only the first
// segment is a request, so a token in the second is never seen and a token
// in the first is counted once.
func TestProgramSplitRequest(t *testing.T) {
	s := loadSentry(t, Config{})
	for name, tc := range map[string]struct {
		first, second string
		want          string // token counted, if any
	}{
		"split_in_header_name": {"GET / HTTP/1.1\r\nHost: a\r\nAuthoriz", "ation: Bearer " + tok + "\r\n\r\n", ""},
		"split_after_header":   {"GET / HTTP/1.1\r\nHost: a\r\n", "Authorization: Bearer " + tok + "\r\n\r\n", ""},
		"token_in_first":       {"GET / HTTP/1.1\r\nAuthorization: Bearer " + tok + "\r\nX-Pad: ", "b\r\nAuthorization: Bearer other\r\n\r\n", tok},
	} {
		for _, p := range programs {
			t.Run(name+"/"+p.name, func(t *testing.T) {
				clearTokenCounts(t, s)
				before, err := s.Stats()
				if err != nil {
					t.Fatal(err)
				}
				for _, seg := range []string{tc.first, tc.second} {
					if _, err := p.prog(s).Run(&ebpf.RunOptions{Data: frame{}.build([]byte(seg))}); err != nil {
						t.Fatal(err)
					}
				}
				after, err := s.Stats()
				if err != nil {
					t.Fatal(err)
				}
				if d := statsDelta(before, after); d.Packets != 2 || d.Requests != 1 || d.Tokens != uint64(btoi(tc.want != "")) {
					t.Errorf("stats grew by %+v", d)
				}
				counts, err := s.snapshotCounts()
				if err != nil {
					t.Fatal(err)
				}
				if tc.want == "" && len(counts) != 0 || tc.want != "" && (len(counts) != 1 || counts[HashToken(tc.want)].Requests != 1) {
					t.Errorf("counted %v, want only %q once", counts, tc.want)
				}
			})
		}
	}
}

func family(v6 bool) string {
	if v6 {
		return "ipv6"
	}
	return "ipv4"
}

// TestProgramFrames covers what is around the payload: IP and TCP options,
// IPv6 extension headers, fragments, other protocols, Ethernet padding.
func TestProgramFrames(t *testing.T) {
	s := loadSentry(t, Config{})
	withToken := []byte(req("Authorization: Bearer " + tok))
	found := parseResult{isRequest: true, tokenFound: true, hash: HashToken(tok)}
	skipped := parseResult{}

	hop := func(next byte) []byte { return []byte{next, 0, 1, 4, 0, 0, 0, 0} }
	routing24 := func(next byte) []byte { return append([]byte{next, 2, 0, 0}, make([]byte, 20)...) }

	tests := map[string]struct {
		frame frame
		data  []byte
		want  parseResult
	}{
		"ipv4_options":             {frame{ipOpts: 8}, withToken, found},
		"ipv4_max_options":         {frame{ipOpts: 40}, withToken, found},
		"tcp_options":              {frame{tcpOpts: 12}, withToken, found},
		"tcp_max_options":          {frame{v6: true, tcpOpts: 40}, withToken, found},
		"ipv4_first_fragment":      {frame{mf: true}, withToken, found},
		"ipv4_later_fragment":      {frame{fragOff: 185}, withToken, skipped},
		"ipv4_udp":                 {frame{proto: 17}, withToken, skipped},
		"ipv6_udp":                 {frame{v6: true, proto: 17}, withToken, skipped},
		"ipv6_hop_by_hop":          {frame{v6: true, extProto: 0, ipv6Ext: hop(6)}, withToken, found},
		"ipv6_hop_dest":            {frame{v6: true, extProto: 0, ipv6Ext: append(hop(60), hop(6)...)}, withToken, found},
		"ipv6_routing_24":          {frame{v6: true, extProto: 43, ipv6Ext: routing24(6)}, withToken, found},
		"ipv6_first_fragment":      {frame{v6: true, extProto: 44, ipv6Ext: []byte{6, 0, 0, 1, 0, 0, 0, 7}}, withToken, found},
		"ipv6_later_fragment":      {frame{v6: true, extProto: 44, ipv6Ext: []byte{6, 0, 0, 8, 0, 0, 0, 7}}, withToken, skipped},
		"ipv6_four_extensions":     {frame{v6: true, extProto: 0, ipv6Ext: concat(hop(43), routing24(60), hop(44), []byte{6, 0, 0, 0, 0, 0, 0, 1})}, withToken, found},
		"ipv6_five_extensions":     {frame{v6: true, extProto: 0, ipv6Ext: concat(hop(60), hop(60), hop(60), hop(60), hop(6))}, withToken, skipped},
		"ipv6_unknown_extension":   {frame{v6: true, extProto: 51, ipv6Ext: hop(6)}, withToken, skipped},
		"tcp_no_payload":           {frame{}, nil, skipped},
		"ipv6_tcp_no_payload":      {frame{v6: true}, nil, skipped},
		"not_ip":                   {frame{etherType: 0x0806}, withToken, skipped},
		"padding_not_payload":      {frame{trailer: []byte("def\r\n\r\n")}, []byte("GET / HTTP/1.1\r\nAuthorization: Bearer abc"), parseResult{isRequest: true, incomplete: true}},
		"padding_not_method":       {frame{trailer: []byte("T / HTTP/1.1\r\n\r\n")}, []byte("GE"), skipped},
		"padding_not_target":       {frame{trailer: []byte("/ HTTP/1.1\r\n\r\n")}, []byte("GET "), skipped},
		"padding_not_method_end":   {frame{v6: true, trailer: []byte(" / HTTP/1.1\r\n\r\n")}, []byte("PROPFIND"), skipped},
		"shortest_request":         {frame{trailer: []byte("\r\nAuthorization: Bearer x\r\n")}, []byte("X /"), parseResult{isRequest: true}},
		"any_method_token":         {frame{tcpOpts: 40}, []byte("PROPFIND /dav HTTP/1.1\r\nAuthorization:\tBearer\t" + tok + "\r\n\r\n"), found},
		"ipv6_any_method_token":    {frame{v6: true, extProto: 0, ipv6Ext: hop(6)}, []byte("M-SEARCH * HTTP/1.1\r\nAuthorization: Bearer \t" + tok + "\r\n\r\n"), found},
		"ipv4_header_too_short":    {frame{badIHL: true}, withToken, skipped},
		"tcp_header_too_short":     {frame{badDoff: true}, withToken, skipped},
		"ipv4_wrong_version":       {frame{badVersion: true}, withToken, skipped},
		"ipv6_wrong_version":       {frame{v6: true, badVersion: true}, withToken, skipped},
		"ipv6_padding_not_payload": {frame{v6: true, trailer: []byte("XYZ")}, []byte("GET / HTTP/1.1\r\nAuthorization: Bearer abc"), parseResult{isRequest: true, incomplete: true}},
	}
	for name, tc := range tests {
		fr := tc.frame.build(tc.data)
		ipLen := len(fr) - 14 - len(tc.frame.trailer)
		for _, p := range programs {
			t.Run(name+"/"+p.name, func(t *testing.T) {
				checkRun(t, runFrame(t, s, p.prog(s), fr), tc.want, ipLen, p)
			})
		}
	}
}

func concat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

// TestProgramRevoked checks that a revoked token's request is dropped and
// reported, by every program and for both IP versions, while another token
// still passes.
func TestProgramRevoked(t *testing.T) {
	s := loadSentry(t, Config{})
	events := collectEvents(t, s)
	const other = "tw_other.token.other-sig"
	if err := s.Revoke(HashToken(tok)); err != nil {
		t.Fatal(err)
	}

	for _, v6 := range []bool{false, true} {
		for _, p := range programs {
			t.Run(family(v6)+"/"+p.name, func(t *testing.T) {
				fr := frame{v6: v6}.build([]byte(goRequest("Authorization: Bearer " + tok)))
				start := time.Now()
				got := runFrame(t, s, p.prog(s), fr)
				if got.ret != p.drop {
					t.Fatalf("returned %#x, want drop (%#x)", got.ret, p.drop)
				}
				want := Stats{Packets: 1, Requests: 1, Tokens: 1, Drops: 1}
				if got.stats != want {
					t.Errorf("stats grew by %+v, want %+v", got.stats, want)
				}
				if c := got.counts[HashToken(tok)]; c.Requests != 1 || c.Drops != 1 {
					t.Errorf("counters %+v, want 1 request and 1 drop", c)
				}

				ev := waitEvent(t, events, time.Second)
				src, dst := testSrc4, testDst4
				if v6 {
					src, dst = testSrc6, testDst6
				}
				if ev.Hash != HashToken(tok) || ev.Hook != p.hook ||
					ev.Src != netip.AddrPortFrom(src, testSport) || ev.Dst != netip.AddrPortFrom(dst, testDport) {
					t.Errorf("event %+v, want hash %#x from %v:%d to %v:%d at %v",
						ev, HashToken(tok), src, testSport, dst, testDport, p.hook)
				}
				if ev.Time.Before(start.Add(-time.Second)) || ev.Time.After(time.Now().Add(time.Second)) {
					t.Errorf("event time %v, want about %v", ev.Time, start)
				}

				pass := runFrame(t, s, p.prog(s), frame{v6: v6}.build([]byte(goRequest("Authorization: Bearer "+other))))
				if pass.ret != p.pass || pass.stats.Drops != 0 {
					t.Errorf("another token: returned %#x with %d drops, want pass", pass.ret, pass.stats.Drops)
				}
			})
		}
	}
	select {
	case ev := <-events:
		t.Errorf("unexpected extra event %+v", ev)
	default:
	}
}

// TestProgramRevokedAnyToken checks that a request is dropped when any of
// its bearer tokens is revoked, not only the first, while it is still
// counted for the first token.
func TestProgramRevokedAnyToken(t *testing.T) {
	s := loadSentry(t, Config{})
	events := collectEvents(t, s)
	sig := strings.Repeat("revokedSig", 9)[:86]
	revoked := "tw_revoked.token." + sig
	if err := s.Revoke(HashToken(revoked)); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		payload string
		drop    bool
		counted string // the token counted, if any
		stats   Stats
	}{
		"second_line":          {req("Authorization: Bearer first", "Authorization: Bearer "+revoked), true, "first", Stats{Packets: 1, Requests: 1, Tokens: 1, Drops: 1}},
		"first_line":           {req("Authorization: Bearer "+revoked, "Authorization: Bearer other"), true, revoked, Stats{Packets: 1, Requests: 1, Tokens: 1, Drops: 1}},
		"after_basic_and_tabs": {req("Authorization: Bearer first", "Authorization: Basic Zm9v", "authorization:\t\tBEARER\t \t"+revoked), true, "first", Stats{Packets: 1, Requests: 1, Tokens: 1, Drops: 1}},
		"after_3000B_token":    {req("Authorization: Bearer "+jws(600, 2200), "Authorization: Bearer "+revoked), true, jws(600, 2200), Stats{Packets: 1, Requests: 1, Tokens: 1, Drops: 1}},
		// The identity is the signature: other header and claims bytes
		// around the revoked token's signature are dropped all the same.
		"same_signature":     {req("Authorization: Bearer tw_other.claims." + sig), true, revoked, Stats{Packets: 1, Requests: 1, Tokens: 1, Drops: 1}},
		"signature_suffix":   {req("Authorization: Bearer " + revoked + "X"), false, revoked + "X", Stats{Packets: 1, Requests: 1, Tokens: 1}},
		"after_long_headers": {req("Authorization: Bearer first", strings.Repeat("X-Long: "+strings.Repeat("z", 100)+"\r\n", 20)+"Authorization: Bearer "+revoked), true, "first", Stats{Packets: 1, Requests: 1, Tokens: 1, Drops: 1}},
		"any_method":         {"PROPFIND /dav HTTP/1.1\r\nAuthorization: Bearer first\r\nAuthorization: Bearer\t" + revoked + "\r\n\r\n", true, "first", Stats{Packets: 1, Requests: 1, Tokens: 1, Drops: 1}},
		"in_body":            {req("Authorization: Bearer first") + "Authorization: Bearer " + revoked + "\r\n", false, "first", Stats{Packets: 1, Requests: 1, Tokens: 1}},
		"prefix_of_revoked":  {req("Authorization: Bearer first", "Authorization: Bearer "+revoked[:10]), false, "first", Stats{Packets: 1, Requests: 1, Tokens: 1}},
	} {
		for _, v6 := range []bool{false, true} {
			for _, p := range programs {
				t.Run(name+"/"+family(v6)+"/"+p.name, func(t *testing.T) {
					got := runFrame(t, s, p.prog(s), frame{v6: v6}.build([]byte(tc.payload)))
					want := p.pass
					if tc.drop {
						want = p.drop
					}
					if got.ret != want {
						t.Fatalf("returned %#x, want %#x", got.ret, want)
					}
					if got.stats != tc.stats {
						t.Errorf("stats grew by %+v, want %+v", got.stats, tc.stats)
					}
					if tc.counted == "" && len(got.counts) != 0 {
						t.Errorf("counted %v, want nothing", got.counts)
					}
					if tc.counted != "" {
						c, ok := got.counts[HashToken(tc.counted)]
						if !ok || len(got.counts) != 1 || c.Requests != 1 || c.Drops != uint64(btoi(tc.drop)) {
							t.Errorf("counted %v, want only %q once with %d drops", got.counts, tc.counted, btoi(tc.drop))
						}
					}
					if tc.drop {
						if ev := waitEvent(t, events, time.Second); ev.Hash != HashToken(revoked) || ev.Hook != p.hook {
							t.Errorf("event %+v, want hash %#x at %v", ev, HashToken(revoked), p.hook)
						}
					}
				})
			}
		}
	}
	select {
	case ev := <-events:
		t.Errorf("unexpected extra event %+v", ev)
	default:
	}
}

// collectEvents reads drop events into a channel until the test ends.
func collectEvents(t *testing.T, s *Sentry) <-chan DropEvent {
	t.Helper()
	ch := make(chan DropEvent, 1024)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ReadEvents(ctx, func(ev DropEvent) { ch <- ev }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("ReadEvents: %v", err)
		}
	})
	return ch
}

func waitEvent(t *testing.T, ch <-chan DropEvent, timeout time.Duration) DropEvent {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(timeout):
		t.Fatalf("no drop event within %v", timeout)
		return DropEvent{}
	}
}

// TestReadCounts checks that ReadCounts reports growth since the previous
// call, per token, and nothing for tokens that were not seen again.
func TestReadCounts(t *testing.T) {
	s := loadSentry(t, Config{})
	prog := s.objs.TcxIngress
	send := func(token string, n int) int {
		fr := frame{}.build([]byte(goRequest("Authorization: Bearer " + token)))
		for range n {
			if _, err := prog.Run(&ebpf.RunOptions{Data: fr}); err != nil {
				t.Fatal(err)
			}
		}
		return len(fr) - 14
	}
	read := func() map[uint64]TokenCount {
		t.Helper()
		counts, err := s.ReadCounts()
		if err != nil {
			t.Fatal(err)
		}
		m := make(map[uint64]TokenCount)
		for _, c := range counts {
			if _, dup := m[c.Hash]; dup {
				t.Fatalf("hash %#x reported twice", c.Hash)
			}
			m[c.Hash] = c
		}
		return m
	}
	a, b := "tw_a.b.c", "tw_d.e.f"
	sizeA := send(a, 3)
	sizeB := send(b, 2)
	start := time.Now()
	got := read()
	if len(got) != 2 || got[HashToken(a)].Requests != 3 || got[HashToken(b)].Requests != 2 ||
		got[HashToken(a)].Bytes != uint64(3*sizeA) || got[HashToken(b)].Bytes != uint64(2*sizeB) {
		t.Fatalf("first read %+v, want a: 3 requests, b: 2", got)
	}
	if ls := got[HashToken(a)].LastSeen; ls.Before(start.Add(-5*time.Second)) || ls.After(start.Add(time.Second)) {
		t.Errorf("last seen %v, want about %v", ls, start)
	}

	send(a, 1)
	got = read()
	if len(got) != 1 || got[HashToken(a)].Requests != 1 || got[HashToken(a)].Bytes != uint64(sizeA) {
		t.Fatalf("second read %+v, want only a: 1 request", got)
	}
	if got = read(); len(got) != 0 {
		t.Fatalf("third read %+v, want nothing", got)
	}

	// An entry evicted and recreated with more requests than before is
	// reported from zero, not as the difference.
	if err := s.objs.TokenCounts.Delete(HashToken(b)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // a new coarse-clock tick for first_seen
	send(b, 5)
	if got = read(); got[HashToken(b)].Requests != 5 {
		t.Fatalf("after eviction: %+v, want b: 5 requests", got)
	}
}

func TestSetRevoked(t *testing.T) {
	s := loadSentry(t, Config{MaxRevoked: 4})
	list := func() map[uint64]bool {
		m := make(map[uint64]bool)
		var k uint64
		var v uint8
		it := s.objs.Revoked.Iterate()
		for it.Next(&k, &v) {
			m[k] = true
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		return m
	}
	if err := s.Revoke(1); err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(1); err != nil {
		t.Fatalf("revoking twice: %v", err)
	}
	if err := s.SetRevoked([]uint64{2, 3, 3, 4}); err != nil {
		t.Fatal(err)
	}
	if got := list(); len(got) != 3 || !got[2] || !got[3] || !got[4] {
		t.Fatalf("after SetRevoked: %v, want {2,3,4}", got)
	}
	if err := s.Unrevoke(3); err != nil {
		t.Fatal(err)
	}
	if err := s.Unrevoke(3); err != nil {
		t.Fatalf("unrevoking twice: %v", err)
	}
	if err := s.SetRevoked([]uint64{5, 6, 7, 8, 9}); !errors.Is(err, ErrRevokedFull) {
		t.Fatalf("SetRevoked over capacity: %v, want ErrRevokedFull", err)
	}
	if got := list(); len(got) != 2 || !got[2] || !got[4] {
		t.Fatalf("a refused SetRevoked changed the set: %v", got)
	}
	for h := uint64(10); h < 12; h++ {
		if err := s.Revoke(h); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Revoke(12); !errors.Is(err, ErrRevokedFull) {
		t.Fatalf("Revoke into a full set: %v, want ErrRevokedFull", err)
	}
	if err := s.SetRevoked(nil); err != nil {
		t.Fatal(err)
	}
	if got := list(); len(got) != 0 {
		t.Fatalf("after SetRevoked(nil): %v", got)
	}
}

func TestReadEventsLifecycle(t *testing.T) {
	s := loadSentry(t, Config{})

	// A cancelled context ends ReadEvents with nil.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ReadEvents(ctx, func(DropEvent) {}) }()
	time.Sleep(20 * time.Millisecond)
	if err := s.ReadEvents(context.Background(), func(DropEvent) {}); !errors.Is(err, ErrBusy) {
		t.Errorf("second concurrent ReadEvents: %v, want ErrBusy", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("ReadEvents after cancel: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("ReadEvents did not return after cancel")
	}

	// Close ends a running ReadEvents with ErrClosed.
	go func() { done <- s.ReadEvents(context.Background(), func(DropEvent) {}) }()
	time.Sleep(20 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("ReadEvents after Close: %v, want ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("ReadEvents did not return after Close")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := s.Revoke(1); !errors.Is(err, ErrClosed) {
		t.Errorf("Revoke after Close: %v, want ErrClosed", err)
	}
	if _, err := s.ReadCounts(); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadCounts after Close: %v, want ErrClosed", err)
	}
	if _, err := s.Stats(); !errors.Is(err, ErrClosed) {
		t.Errorf("Stats after Close: %v, want ErrClosed", err)
	}
	if err := s.AttachTCX("lo", Ingress); !errors.Is(err, ErrClosed) {
		t.Errorf("AttachTCX after Close: %v, want ErrClosed", err)
	}
}

func TestConfig(t *testing.T) {
	for name, tc := range map[string]struct {
		cfg Config
		ok  bool
	}{
		"zero":              {Config{}, true},
		"small":             {Config{MaxTokens: 1, MaxRevoked: 1, EventBufferBytes: 4096}, true},
		"ring_not_pow2":     {Config{EventBufferBytes: 3 * 4096}, false},
		"ring_below_a_page": {Config{EventBufferBytes: 1024}, false},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := tc.cfg.withDefaults()
			if tc.ok != (err == nil) {
				t.Fatalf("withDefaults(%+v) = %v, want ok=%v", tc.cfg, err, tc.ok)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalidConfig) {
					t.Errorf("error %v is not ErrInvalidConfig", err)
				}
				return
			}
			if got.MaxTokens == 0 || got.MaxRevoked == 0 || got.EventBufferBytes == 0 {
				t.Errorf("defaults not filled in: %+v", got)
			}
		})
	}
	if _, err := Load(Config{EventBufferBytes: 1000}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("Load with a bad config: %v, want ErrInvalidConfig", err)
	}
}

func TestErrorClassification(t *testing.T) {
	verifier := &ebpf.VerifierError{Cause: unix.EACCES, Log: []string{"R3 pointer arithmetic with it prohibited for !root"}}
	for name, tc := range map[string]struct {
		err        error
		missing    []string
		permission bool
		unsupp     bool
	}{
		"eperm":               {fmt.Errorf("load: %w", unix.EPERM), nil, true, false},
		"eacces":              {fmt.Errorf("load: %w", unix.EACCES), nil, true, false},
		"verifier_privileged": {verifier, nil, false, false},
		"verifier_no_perfmon": {verifier, []string{"CAP_PERFMON"}, true, false},
		"eperm_no_caps":       {unix.EPERM, []string{"CAP_BPF", "CAP_NET_ADMIN"}, true, false},
		"unsupported":         {fmt.Errorf("tcx: %w", ebpf.ErrNotSupported), nil, false, true},
		"other":               {errors.New("boom"), nil, false, false},
		"other_without_caps":  {errors.New("boom"), []string{"CAP_BPF"}, false, false},
	} {
		t.Run(name, func(t *testing.T) {
			err := classifyFor(tc.err, tc.missing)
			if got := IsPermission(err); got != tc.permission {
				t.Errorf("IsPermission(%v) = %v, want %v", err, got, tc.permission)
			}
			if got := errors.Is(err, ErrUnsupported); got != tc.unsupp {
				t.Errorf("errors.Is(%v, ErrUnsupported) = %v, want %v", err, got, tc.unsupp)
			}
			if !errors.Is(err, tc.err) {
				t.Errorf("classify lost the cause %v", tc.err)
			}
		})
	}
}

// TestProgramBorrowedSignature attacks the identity in the real program: a
// request carrying any bytes around a victim token's signature segment is
// counted under the victim (ext_authz refuses such a token: see
// agent/authz TestBorrowedSignatureIsRefused), one with a signature
// character changed is not, and nothing but the signature moves the count.
func TestProgramBorrowedSignature(t *testing.T) {
	s := loadSentry(t, Config{})
	key, err := policy.NewSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	mint := func(sub string) string {
		tok, err := policy.Mint(key, policy.Claims{ID: policy.NewTokenID(), Subject: sub, IssuedAt: 1, Expires: 2})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	victim, attacker := mint("victim"), mint("attacker")
	sig := victim[strings.LastIndexByte(victim, '.')+1:]
	changed := []byte(victim)
	changed[len(changed)-80] ^= 'A' ^ 'B'
	for name, tc := range map[string]struct {
		token  string
		victim bool
	}{
		"victim":                   {victim, true},
		"attacker_claims":          {attacker[:strings.LastIndexByte(attacker, '.')+1] + sig, true},
		"garbage":                  {"tw_x.y." + sig, true},
		"signature_char_changed":   {string(changed), false},
		"attacker":                 {attacker, false},
		"victim_claims_attack_sig": {victim[:strings.LastIndexByte(victim, '.')+1] + attacker[strings.LastIndexByte(attacker, '.')+1:], false},
	} {
		t.Run(name, func(t *testing.T) {
			got := runFrame(t, s, s.objs.TcxIngress, frame{}.build([]byte(goRequest("Authorization: Bearer "+tc.token))))
			if len(got.counts) != 1 {
				t.Fatalf("counted %v, want one identity", got.counts)
			}
			if _, underVictim := got.counts[policy.WireHash(victim)]; underVictim != tc.victim {
				t.Errorf("counted under the victim: %v, want %v", underVictim, tc.victim)
			}
		})
	}
}
