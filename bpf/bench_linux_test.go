//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpf

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// benchToken is a 200-byte token shaped like the ones tokenwarden issues:
// header, claims and an 86-character signature segment.
var benchToken = jws(40, 69)

// benchTokenOf returns a token of n bytes in the same shape: a third of
// what is not prefix, dots or signature is header, the rest claims.
func benchTokenOf(n int) string {
	rest := n - len("tw_..") - 86
	return jws(rest/3, rest-rest/3)
}

// headerBlock returns a request of about size bytes whose bearer token
// comes last, after filler headers: the whole block is scanned.
func headerBlock(size int) string {
	var filler []string
	tail := len(goRequest("Authorization: Bearer " + benchToken))
	for i := 0; tail < size; i++ {
		h := fmt.Sprintf("X-Filler-%03d: %s", i, strings.Repeat("v", 40))
		filler = append(filler, h)
		tail += len(h) + 2
	}
	return goRequest(append(filler, "Authorization: Bearer "+benchToken)...)
}

// BenchmarkProgram measures the TCX ingress program per packet with
// BPF_PROG_TEST_RUN, reported as ns/pkt. BPF_PROG_TEST_RUN accepts frames of
// at most about 3.7 KB (a page less skb headroom and shared info), so the
// largest header block measured is 3 KiB; docs/kernel.md extrapolates.
func BenchmarkProgram(b *testing.B) {
	s := loadSentry(b, Config{EventBufferBytes: 16 << 20})
	for _, n := range []int{100, 200, 400, 800, 2048} {
		if len(benchTokenOf(n)) != n {
			b.Fatalf("benchTokenOf(%d) is %d bytes", n, len(benchTokenOf(n)))
		}
	}

	udp := frame{proto: 17}.build([]byte("\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06orders\x00\x00\x01\x00\x01"))
	withToken := goRequest("Authorization: Bearer " + benchToken)
	cases := []struct {
		name   string
		frame  []byte
		revoke bool
		want   uint32
	}{
		{"non_tcp", udp, false, tcPass},
		{"tcp_no_payload", frame{}.build(nil), false, tcPass},
		{"tcp_not_http", frame{}.build([]byte("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + strings.Repeat("\xaa", 300))), false, tcPass},
		{"tcp_http_response", frame{}.build([]byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")), false, tcPass},
		{"http_no_auth", frame{}.build([]byte(goRequest())), false, tcPass},
		{"http_token_100B", frame{}.build([]byte(goRequest("Authorization: Bearer " + benchTokenOf(100)))), false, tcPass},
		{"http_token_200B", frame{}.build([]byte(withToken)), false, tcPass},
		{"http_token_400B", frame{}.build([]byte(goRequest("Authorization: Bearer " + benchTokenOf(400)))), false, tcPass},
		{"http_token_800B", frame{}.build([]byte(goRequest("Authorization: Bearer " + benchTokenOf(800)))), false, tcPass},
		{"http_token_2KiB", frame{}.build([]byte(goRequest("Authorization: Bearer " + benchTokenOf(2048)))), false, tcPass},
		{"http_header_1KiB", frame{}.build([]byte(headerBlock(1 << 10))), false, tcPass},
		{"http_header_2KiB", frame{}.build([]byte(headerBlock(2 << 10))), false, tcPass},
		{"http_header_3KiB", frame{}.build([]byte(headerBlock(3 << 10))), false, tcPass},
		// The most scan work a packet can cause: MaxHeaderLines lines that
		// each take all three scan phases and hold no token.
		{"http_worst_case", frame{}.build([]byte("GET / HTTP/1.1\r\n" + strings.Repeat("authorization:\tBearer  \n", MaxHeaderLines+1))), false, tcPass},
		// Every line a bearer token: each is hashed and looked up in the
		// revoked set.
		{"http_worst_case_tokens", frame{}.build([]byte("GET / HTTP/1.1\r\n" + strings.Repeat("authorization:bearer x\n", MaxHeaderLines+1))), false, tcPass},
		{"http_revoked", frame{}.build([]byte(withToken)), true, tcDrop},
	}
	carriesToken := map[string]bool{"http_token_100B": true, "http_token_200B": true, "http_token_400B": true, "http_token_800B": true, "http_token_2KiB": true, "http_header_1KiB": true, "http_header_2KiB": true, "http_header_3KiB": true, "http_revoked": true}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			if c.revoke {
				if err := s.Revoke(HashToken(benchToken)); err != nil {
					b.Fatal(err)
				}
				defer s.Unrevoke(HashToken(benchToken))
				// Drain events as the agent would, so the ring buffer
				// has room and the measured path is reserve+submit.
				ctx, cancel := context.WithCancel(context.Background())
				var wg sync.WaitGroup
				wg.Add(1)
				go func() {
					defer wg.Done()
					_ = s.ReadEvents(ctx, func(DropEvent) {})
				}()
				defer wg.Wait()
				defer cancel()
			}
			before, err := s.Stats()
			if err != nil {
				b.Fatal(err)
			}
			ret, perRun, err := s.objs.TcxIngress.Benchmark(c.frame, b.N, b.ResetTimer)
			if err != nil {
				b.Fatal(err)
			}
			if ret != c.want {
				b.Fatalf("program returned %#x, want %#x", ret, c.want)
			}
			after, err := s.Stats()
			if err != nil {
				b.Fatal(err)
			}
			// A figure for a token request is only worth quoting if the
			// program reached and hashed the token on every run.
			if carriesToken[c.name] && after.Tokens-before.Tokens < uint64(b.N) {
				b.Fatalf("%d tokens hashed in %d runs: the program did not reach the token", after.Tokens-before.Tokens, b.N)
			}
			b.ReportMetric(float64(perRun.Nanoseconds()), "ns/pkt")
			b.ReportMetric(float64(len(c.frame)), "B/frame")
			if c.revoke {
				b.ReportMetric(float64(after.EventsLost-before.EventsLost)/float64(b.N), "lost/pkt")
			}
		})
	}
}
