//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpf

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// baselineObject is the program issue 15 measured (commit eea62ec: FNV-1a
// over the whole token, one byte per step), kept so that its cost and
// today's are measured in the same run: BPF_PROG_TEST_RUN figures on a
// shared VM move by half from one run to the next, ratios within a run far
// less.
var baselineObject = filepath.Join("..", "bench", "baseline", "tokenmeter-issue15.o")

// BenchmarkProgramVersusBaseline runs three programs in turn on the same
// packet, rounds times: an empty program (what BPF_PROG_TEST_RUN itself
// costs here), the program issue 15 measured, and today's. It reports the
// median ns/pkt of each and the median of the per-round ratios, so a figure
// can be stated against the baseline the issue names.
//
//	go test -run '^$' -bench BenchmarkProgramVersusBaseline -benchtime 300000x ./bpf/
func BenchmarkProgramVersusBaseline(b *testing.B) {
	s := loadSentry(b, Config{EventBufferBytes: 16 << 20})
	floor := loadFloor(b)
	base := loadBaseline(b)
	cases := []struct {
		name  string
		frame []byte
	}{
		{"non_tcp", frame{proto: 17}.build([]byte("\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06orders\x00\x00\x01\x00\x01"))},
		{"http_no_auth", frame{}.build([]byte(goRequest()))},
		{"http_token_100B", frame{}.build([]byte(goRequest("Authorization: Bearer " + benchTokenOf(100))))},
		{"http_token_200B", frame{}.build([]byte(goRequest("Authorization: Bearer " + benchToken)))},
		{"http_token_400B", frame{}.build([]byte(goRequest("Authorization: Bearer " + benchTokenOf(400))))},
		{"http_token_800B", frame{}.build([]byte(goRequest("Authorization: Bearer " + benchTokenOf(800))))},
		// The 800-byte case's length with a 100-byte token and a 700-byte
		// header line before it: what the token's length costs beyond the
		// scan of as many bytes of request.
		{"http_token_100B_pad_700B", frame{}.build([]byte(goRequest("X-Pad: "+strings.Repeat("p", 700-len("X-Pad: \r\n")), "Authorization: Bearer "+benchTokenOf(100))))},
	}
	const rounds = 7
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var fl, bs, now, vsBase, vsFloor []float64
			for r := 0; r < rounds; r++ {
				f := runs(b, floor, c.frame, b.N)
				o := runs(b, base, c.frame, b.N)
				n := runs(b, s.objs.TcxIngress, c.frame, b.N)
				fl, bs, now = append(fl, f), append(bs, o), append(now, n)
				vsBase = append(vsBase, n/o)
				vsFloor = append(vsFloor, n/f)
			}
			b.ReportMetric(median(now), "ns/pkt")
			b.ReportMetric(median(bs), "baseline-ns/pkt")
			b.ReportMetric(median(fl), "floor-ns/pkt")
			b.ReportMetric(median(vsBase), "x-baseline")
			b.ReportMetric(median(vsFloor), "x-floor")
		})
	}
}

// runs is the kernel's time per run of prog over n runs of frame, in ns.
func runs(b *testing.B, prog *ebpf.Program, frame []byte, n int) float64 {
	b.Helper()
	_, d, err := prog.Benchmark(frame, n, nil)
	if err != nil {
		b.Fatal(err)
	}
	return float64(d.Nanoseconds())
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// loadFloor loads a TC program that returns at once.
func loadFloor(b *testing.B) *ebpf.Program {
	b.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return p
}

// loadBaseline loads the TCX ingress program of baselineObject.
func loadBaseline(b *testing.B) *ebpf.Program {
	b.Helper()
	spec, err := ebpf.LoadCollectionSpec(baselineObject)
	if err != nil {
		b.Fatal(err)
	}
	if m, ok := spec.Maps["scratch"]; ok {
		cpus, err := ebpf.PossibleCPU()
		if err != nil {
			b.Fatal(err)
		}
		m.MaxEntries = uint32(cpus)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		b.Fatal(fmt.Errorf("%s: %w", baselineObject, err))
	}
	b.Cleanup(coll.Close)
	p, ok := coll.Programs["tcx_ingress"]
	if !ok {
		b.Fatalf("%s has no tcx_ingress program", baselineObject)
	}
	return p
}
