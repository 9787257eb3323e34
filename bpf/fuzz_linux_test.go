//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpf

import (
	"testing"
)

// maxFuzzPayload keeps fuzzed frames under the ~3.7 KB BPF_PROG_TEST_RUN
// accepts for skb programs (a page less headroom and skb_shared_info).
const maxFuzzPayload = 3500

// FuzzParseAgreement runs the kernel program and ParseRequest on the same
// TCP payload and fails on any difference: request or not, token found,
// truncated or cut off, and the hash. Then, if the payload holds complete
// bearer tokens, it revokes one of them (picked by hook) and checks the
// program drops the request: every token counts, not only the first. The
// program is picked by hook, the IP
// version by v6. The seed corpus is the payload table plus
// testdata/fuzz/FuzzParseAgreement.
func FuzzParseAgreement(f *testing.F) {
	for i, c := range payloadCases {
		f.Add([]byte(c.payload), i%2 == 1, uint8(i))
	}
	s := loadSentry(f, Config{MaxTokens: 1024})

	f.Fuzz(func(t *testing.T, payload []byte, v6 bool, hook uint8) {
		if len(payload) > maxFuzzPayload {
			payload = payload[:maxFuzzPayload]
		}
		p := programs[int(hook)%len(programs)]
		fr := frame{v6: v6}.build(payload)
		all := scan(payload)
		want := all.parseResult

		got := runFrame(t, s, p.prog(s), fr)
		if got.ret != p.pass {
			t.Fatalf("%s returned %#x, want pass", p.name, got.ret)
		}
		kernel := parseResult{
			isRequest:  got.stats.Requests == 1,
			tokenFound: got.stats.Tokens == 1,
			truncated:  got.stats.Truncated == 1,
			incomplete: got.stats.Incomplete == 1,
		}
		for h := range got.counts {
			kernel.hash = h
		}
		if len(got.counts) > 1 || uint64(len(got.counts)) != got.stats.Tokens {
			t.Fatalf("%s counted %d hashes for %d tokens", p.name, len(got.counts), got.stats.Tokens)
		}
		if kernel != want {
			t.Fatalf("%s (%s) disagrees with ParseRequest on %q:\nkernel %+v\nGo     %+v",
				p.name, family(v6), payload, kernel, want)
		}

		if len(all.hashes) == 0 {
			return
		}
		h := all.hashes[int(hook/3)%len(all.hashes)]
		if err := s.Revoke(h); err != nil {
			t.Fatal(err)
		}
		got = runFrame(t, s, p.prog(s), fr)
		if err := s.Unrevoke(h); err != nil {
			t.Fatal(err)
		}
		if got.ret != p.drop || got.stats.Drops != 1 {
			t.Fatalf("%s (%s) with token %d of %d (%#x) revoked returned %#x with %d drops, want a drop, on %q",
				p.name, family(v6), int(hook/3)%len(all.hashes)+1, len(all.hashes), h, got.ret, got.stats.Drops, payload)
		}
	})
}
