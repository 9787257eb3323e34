// Command authzload benchmarks the authz server against the no-op floor.
// It starts bench/cmd/authzserver processes pinned (taskset) to one core,
// drives Check over gRPC, or the HTTP mode, from this process (run it pinned
// to another core), alternating tokenwarden and no-op runs, and prints a
// markdown table: checks/s, p50, p99 and the server's CPU time per check
// (utime+stime from /proc/PID/stat over each run).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/tokenwarden/tokenwarden/bench"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat:
// 100 on every Linux architecture Go supports.
const clockTicks = 100

func main() {
	serverBin := flag.String("server", "", "path to the authzserver binary (required)")
	serverCPU := flag.String("server-cpu", "0", "taskset CPU list for the server processes")
	policyFile := flag.String("policy", "deploy/policy.example.yaml", "policy file")
	modes := flag.String("modes", "grpc,http", "modes to run")
	concurrency := flag.String("concurrency", "1,16", "concurrent clients to run with")
	rounds := flag.Int("rounds", 8, "rounds; each runs tokenwarden then no-op at every concurrency")
	duration := flag.Duration("duration", 1500*time.Millisecond, "measured time of one run")
	warmup := flag.Duration("warmup", 300*time.Millisecond, "unmeasured load before each run")
	profiles := flag.String("profile-dir", "", "have each server write a CPU profile <impl>-<mode>.prof here")
	stats := flag.Bool("server-stats", false, "have each server print allocation and GC totals when it stops")
	ghzBin := flag.String("ghz", "", "also drive gRPC checks with this ghz binary (rows \"grpc/ghz\"), alternating with authzload's own")
	flag.StringVar(&floorImpl, "floor", "noop", "the floor server: noop (answers OK and nothing else) or noop-identity (answers with the four identity headers tokenwarden's allowed answer carries, to tell what the client's handling of a larger answer costs)")
	ghzRPS := flag.String("ghz-rps", "", "ghz's request rate per -concurrency entry (e.g. 1500,3000), the same for both servers; empty: as fast as ghz goes. ghz is the bottleneck on its core, and a larger answer costs it more to decode: at a fixed rate both servers see the same load")
	jsonOut := flag.String("json", "", "also write the table's figures here as JSON (for bench/cmd/benchreport)")
	tokenCount := flag.Int("tokens", 1000, "distinct tokens the load rotates over, all in the server's warm cache")
	revocations := flag.Int("revocations", 10_000, "revocation rules the server holds")
	flag.Parse()
	if *serverBin == "" {
		log.Fatal("authzload: -server is required (build bench/cmd/authzserver)")
	}
	var concs []int
	for _, c := range strings.Split(*concurrency, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil || n < 1 {
			log.Fatalf("authzload: -concurrency %q: want a list of positive numbers", *concurrency)
		}
		concs = append(concs, n)
	}
	rps := make([]int, len(concs))
	if *ghzRPS != "" {
		parts := strings.Split(*ghzRPS, ",")
		if len(parts) != len(concs) {
			log.Fatalf("authzload: -ghz-rps %q: want one rate per -concurrency entry (%d)", *ghzRPS, len(concs))
		}
		for i, p := range parts {
			n, err := strconv.Atoi(strings.TrimSpace(p))
			if err != nil || n < 0 {
				log.Fatalf("authzload: -ghz-rps %q: want non-negative numbers", *ghzRPS)
			}
			rps[i] = n
		}
	}

	dir, err := os.MkdirTemp("", "authzload")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	loadStart := loadAverage()
	var rows []row
	for _, mode := range strings.Split(*modes, ",") {
		world := []string{"-tokens", strconv.Itoa(*tokenCount), "-revocations", strconv.Itoa(*revocations)}
		tw, err := startServer(*serverBin, *serverCPU, "tokenwarden", mode, *policyFile, filepath.Join(dir, "tokens-"+mode), *profiles, *stats, world...)
		if err != nil {
			log.Fatal(err)
		}
		noop, err := startServer(*serverBin, *serverCPU, floorImpl, mode, *policyFile, "", *profiles, *stats, world...)
		if err != nil {
			tw.stop()
			log.Fatal(err)
		}
		noop.impl = "noop" // its role in the table, whichever floor it is
		f, err := os.Open(filepath.Join(dir, "tokens-"+mode))
		if err != nil {
			log.Fatal(err)
		}
		tokens, err := bench.ReadTokens(f)
		f.Close()
		if err != nil {
			log.Fatal(err)
		}
		// The load generators: authzload's own, and ghz for gRPC.
		gens := []string{mode}
		var g *ghzLoad
		if *ghzBin != "" && mode == "grpc" {
			if g, err = newGHZ(*ghzBin, dir, tokens); err != nil {
				log.Fatal(err)
			}
			gens = append(gens, "grpc/ghz")
		}
		// Short runs, interleaved: tokenwarden and no-op alternate within
		// each round, so that load from other processes on the machine
		// falls on both alike.
		results := map[string][]map[string]*result{}
		perRound := map[string][][]ratios{}
		for _, gen := range gens {
			perRound[gen] = make([][]ratios, len(concs))
			results[gen] = make([]map[string]*result, len(concs))
			for i := range concs {
				results[gen][i] = map[string]*result{"tokenwarden": {}, "noop": {}}
			}
		}
		for r := range *rounds {
			for i, c := range concs {
				for _, gen := range gens {
					pair := map[string]*result{}
					for _, s := range []*server{tw, noop} {
						var res *result
						if gen == "grpc/ghz" {
							if _, err = g.run(s, c, rps[i], *warmup, false); err == nil {
								res, err = g.run(s, c, rps[i], *duration, true)
							}
						} else {
							res, err = drive(s, mode, tokens, c, *warmup, *duration)
						}
						if err != nil {
							tw.stop()
							noop.stop()
							log.Fatalf("authzload: %s %s c=%d: %v", s.impl, gen, c, err)
						}
						fmt.Fprintf(os.Stderr, "round %d %-8s c=%-3d %-12s %8.0f checks/s  p50 %6.1fµs  p99 %6.1fµs  %5.1f µs CPU/check  load %s\n",
							r+1, gen, c, s.impl, res.rate(), res.quantile(0.50), res.quantile(0.99), res.cpuPerCheck(), loadAverage())
						pair[s.impl] = res
						results[gen][i][s.impl].merge(res)
					}
					perRound[gen][i] = append(perRound[gen][i], ratiosOf(pair["tokenwarden"], pair["noop"]))
				}
			}
		}
		for _, gen := range gens {
			for i, c := range concs {
				rows = append(rows, row{gen, c, results[gen][i]["tokenwarden"], results[gen][i]["noop"], perRound[gen][i]})
			}
		}
		tw.stop()
		noop.stop()
	}
	printTable(os.Stdout, rows, *rounds, *duration, loadStart)
	if *jsonOut != "" {
		if err := writeJSON(*jsonOut, rows, *rounds, *duration, loadStart); err != nil {
			log.Fatal(err)
		}
	}
}

// floorImpl is -floor: the authzserver -impl of the no-op server.
var floorImpl string

// Figures is what -json writes: one Cell per mode (load generator) and
// concurrency.
type Figures struct {
	Floor     string `json:"floor"` // authzserver -impl of the no-op server
	Rounds    int    `json:"rounds"`
	Duration  string `json:"duration"`
	LoadStart string `json:"load_start"`
	LoadEnd   string `json:"load_end"`
	Cells     []Cell `json:"cells"`
}

// Cell is one row pair of the table.
type Cell struct {
	Mode        string `json:"mode"`
	Clients     int    `json:"clients"`
	Tokenwarden Server `json:"tokenwarden"`
	Noop        Server `json:"noop"`
	// MedianCPURatio and MedianP99Ratio are the medians of the per-round
	// ratios (each round's tokenwarden run over its no-op run).
	MedianCPURatio float64 `json:"median_cpu_ratio"`
	MedianP99Ratio float64 `json:"median_p99_ratio"`
}

// Server is one server's figures in a cell.
type Server struct {
	ChecksPerSec float64 `json:"checks_per_sec"`
	P50us        float64 `json:"p50_us"`
	P99us        float64 `json:"p99_us"`
	CPUus        float64 `json:"cpu_us_per_check"`
}

func writeJSON(path string, rows []row, rounds int, duration time.Duration, loadStart string) error {
	f := Figures{Floor: floorImpl, Rounds: rounds, Duration: duration.String(), LoadStart: loadStart, LoadEnd: loadAverage()}
	fig := func(r *result) Server {
		return Server{ChecksPerSec: r.rate(), P50us: r.quantile(0.5), P99us: r.quantile(0.99), CPUus: r.cpuPerCheck()}
	}
	for _, r := range rows {
		m := medianRatios(r.rounds)
		f.Cells = append(f.Cells, Cell{Mode: r.mode, Clients: r.clients, Tokenwarden: fig(r.tw), Noop: fig(r.floor), MedianCPURatio: m.cpu, MedianP99Ratio: m.p99})
	}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}

// loadAverage is the 1-minute load average: a busy machine inflates tails.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(data))[0]
}

// server is one authzserver process.
type server struct {
	impl, mode, addr string
	cmd              *exec.Cmd
}

func startServer(bin, cpus, impl, mode, policyFile, tokensOut, profiles string, stats bool, extra ...string) (*server, error) {
	args := append([]string{"-c", cpus, bin, "-impl", impl, "-mode", mode, "-addr", "127.0.0.1:0", "-policy", policyFile}, extra...)
	if tokensOut != "" {
		args = append(args, "-tokens-out", tokensOut)
	}
	if profiles != "" {
		args = append(args, "-cpuprofile", filepath.Join(profiles, impl+"-"+mode+".prof"))
	}
	if stats {
		args = append(args, "-stats")
	}
	cmd := exec.Command("taskset", args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w (is taskset installed?)", bin, err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "ready ")
	if err != nil || !ok {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("%s %s server did not report ready: %q %v", impl, mode, line, err)
	}
	go io.Copy(io.Discard, out)
	return &server{impl: impl, mode: mode, addr: addr, cmd: cmd}, nil
}

func (s *server) stop() {
	s.cmd.Process.Signal(os.Interrupt)
	s.cmd.Wait()
}

// cpuTicks is utime+stime of the process, in clock ticks. taskset execs
// the server, so the pid is the server's.
func (s *server) cpuTicks() (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	// Fields after the parenthesised command name, which may hold spaces.
	i := strings.LastIndexByte(string(data), ')')
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc stat: %q", data)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc stat: %q", data)
	}
	return utime + stime, nil
}

// result is what runs measured.
type result struct {
	checks    int64
	elapsed   time.Duration
	cpu       time.Duration
	latencies []time.Duration
	sorted    bool
}

func (r *result) merge(o *result) {
	r.checks += o.checks
	r.elapsed += o.elapsed
	r.cpu += o.cpu
	r.latencies = append(r.latencies, o.latencies...)
	r.sorted = false
}

func (r *result) rate() float64 { return float64(r.checks) / r.elapsed.Seconds() }

func (r *result) cpuPerCheck() float64 {
	return float64(r.cpu.Microseconds()) / float64(r.checks)
}

func (r *result) quantile(q float64) float64 {
	if len(r.latencies) == 0 {
		return 0
	}
	if !r.sorted {
		slices.Sort(r.latencies)
		r.sorted = true
	}
	return float64(r.latencies[int(q*float64(len(r.latencies)-1))].Nanoseconds()) / 1e3
}

// Phases of a run: warm-up is not recorded.
const (
	phaseWarmup = iota
	phaseMeasure
	phaseStop
)

// drive loads s with c concurrent clients, each cycling through the tokens.
// The clients are as cheap as they can be, so that they keep the server
// busy and cost the same whatever it answers: gRPC requests are marshalled
// once and responses checked without decoding; HTTP is written and read as
// raw HTTP/1.1 on one keep-alive connection per client.
func drive(s *server, mode string, tokens []string, c int, warmup, duration time.Duration) (*result, error) {
	var call func(worker, i int) error
	var closeAll func()
	switch mode {
	case "grpc":
		// One connection per four clients, as Envoy spreads checks over
		// one connection per worker thread.
		var conns []*grpc.ClientConn
		for range (c + 3) / 4 {
			conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return nil, err
			}
			conns = append(conns, conn)
		}
		closeAll = func() {
			for _, c := range conns {
				c.Close()
			}
		}
		reqs := make([]*rawMessage, len(tokens))
		for i, t := range tokens {
			data, err := proto.Marshal(bench.CheckRequest(t, i))
			if err != nil {
				return nil, err
			}
			reqs[i] = &rawMessage{data: data}
		}
		resps := make([]rawMessage, c)
		call = func(worker, i int) error {
			resp := &resps[worker]
			ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
			err := conns[worker/4].Invoke(ctx, checkMethod, reqs[i%len(reqs)], resp, grpc.ForceCodec(rawCodec{}))
			cancel()
			if err != nil {
				return err
			}
			if resp.code != 0 {
				return fmt.Errorf("check denied: gRPC code %d", resp.code)
			}
			return nil
		}
	case "http":
		conns := make([]*rawHTTP, c)
		for w := range conns {
			conn, err := net.Dial("tcp", s.addr)
			if err != nil {
				return nil, err
			}
			conns[w] = &rawHTTP{conn: conn, r: bufio.NewReaderSize(conn, 4096)}
		}
		closeAll = func() {
			for _, c := range conns {
				c.conn.Close()
			}
		}
		reqs := make([][]byte, len(tokens))
		for i, t := range tokens {
			reqs[i] = bench.HTTPCheck(t, i)
		}
		call = func(worker, i int) error {
			status, err := conns[worker].roundTrip(reqs[i%len(reqs)])
			if err != nil {
				return err
			}
			if status != 200 {
				return fmt.Errorf("check denied: HTTP %d", status)
			}
			return nil
		}
	default:
		return nil, fmt.Errorf("mode %q: want grpc or http", mode)
	}
	defer closeAll()

	var phase atomic.Int32
	lat := make([][]time.Duration, c)
	errs := make(chan error, c)
	var wg sync.WaitGroup
	for w := range c {
		lat[w] = make([]time.Duration, 0, 1<<16)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w * 61; ; i++ {
				p := phase.Load()
				if p == phaseStop {
					return
				}
				start := time.Now()
				if err := call(w, i); err != nil {
					errs <- err
					return
				}
				if p == phaseMeasure {
					lat[w] = append(lat[w], time.Since(start))
				}
			}
		}()
	}
	time.Sleep(warmup)
	cpu0, err := s.cpuTicks()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	phase.Store(phaseMeasure)
	time.Sleep(duration)
	phase.Store(phaseStop)
	elapsed := time.Since(start)
	cpu1, err := s.cpuTicks()
	if err != nil {
		return nil, err
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	res := &result{elapsed: elapsed, cpu: time.Duration(cpu1-cpu0) * time.Second / clockTicks}
	for _, l := range lat {
		res.checks += int64(len(l))
		res.latencies = append(res.latencies, l...)
	}
	return res, nil
}

const checkMethod = "/envoy.service.auth.v3.Authorization/Check"

// checkTimeout is the deadline each check carries (grpc-timeout), as
// Envoy's ext_authz filter sends its timeout (250 ms in our xDS config):
// 1 s here, so that a scheduling stall on a loaded machine does not end a
// run. Either way it is under the server's 5 s, so the call gate adds no
// timer of its own.
const checkTimeout = time.Second

// rawMessage is a marshalled CheckRequest going out, or the status code of
// a CheckResponse coming back.
type rawMessage struct {
	data []byte
	code uint64
}

// rawCodec sends rawMessage bytes as they are and reads only the status
// code of a response. Its name is "proto", so the server sees ordinary
// application/grpc+proto calls.
type rawCodec struct{}

func (rawCodec) Name() string                  { return "proto" }
func (rawCodec) Marshal(v any) ([]byte, error) { return v.(*rawMessage).data, nil }

func (rawCodec) Unmarshal(data []byte, v any) error {
	code, err := statusCode(data)
	v.(*rawMessage).code = code
	return err
}

// statusCode reads CheckResponse.status.code (field 1 of field 1).
func statusCode(b []byte) (uint64, error) {
	b, err := findField(b, 1, protowire.BytesType)
	if b == nil || err != nil {
		return 0, err
	}
	status, n := protowire.ConsumeBytes(b)
	if n < 0 {
		return 0, protowire.ParseError(n)
	}
	v, err := findField(status, 1, protowire.VarintType)
	if v == nil || err != nil {
		return 0, err
	}
	code, n := protowire.ConsumeVarint(v)
	if n < 0 {
		return 0, protowire.ParseError(n)
	}
	return code, nil
}

// findField skips b's fields up to the first one numbered num of type typ
// and returns what follows its tag, or nil if there is none.
func findField(b []byte, num protowire.Number, typ protowire.Type) ([]byte, error) {
	for len(b) > 0 {
		gotNum, gotTyp, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		if gotNum == num && gotTyp == typ {
			return b, nil
		}
		if n = protowire.ConsumeFieldValue(gotNum, gotTyp, b); n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
	}
	return nil, nil
}

// rawHTTP is one keep-alive HTTP/1.1 connection.
type rawHTTP struct {
	conn net.Conn
	r    *bufio.Reader
}

// roundTrip writes req and reads the response: status line, headers (only
// Content-Length matters) and body, without allocating.
func (h *rawHTTP) roundTrip(req []byte) (int, error) {
	if _, err := h.conn.Write(req); err != nil {
		return 0, err
	}
	line, err := h.r.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	if len(line) < 12 || string(line[:5]) != "HTTP/" {
		return 0, fmt.Errorf("bad status line %q", line)
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, fmt.Errorf("bad status line %q", line)
	}
	length := 0
	for {
		line, err := h.r.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(line) <= 2 {
			break
		}
		if k, v, ok := bytes.Cut(line, []byte(":")); ok && bytes.EqualFold(k, []byte("Content-Length")) {
			if length, err = strconv.Atoi(string(bytes.TrimSpace(v))); err != nil {
				return 0, fmt.Errorf("bad Content-Length %q", v)
			}
		} else if ok && bytes.EqualFold(k, []byte("Transfer-Encoding")) {
			return 0, fmt.Errorf("unexpected Transfer-Encoding %q", v)
		}
	}
	if _, err := h.r.Discard(length); err != nil {
		return 0, err
	}
	return status, nil
}

type row struct {
	mode      string
	clients   int
	tw, floor *result
	rounds    []ratios // each round's back-to-back pair
}

// ratios are tokenwarden's figures over the no-op's in one round: the two
// runs back to back, so a slow spell of the machine falls on both.
type ratios struct{ cpu, p99 float64 }

func ratiosOf(tw, floor *result) ratios {
	return ratios{cpu: tw.cpuPerCheck() / floor.cpuPerCheck(), p99: tw.quantile(0.99) / floor.quantile(0.99)}
}

// medianRatios is the median of each ratio over the rounds (the upper of
// the two middle ones for an even count).
func medianRatios(rs []ratios) ratios {
	med := func(f func(ratios) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		if len(v) == 0 {
			return 0
		}
		return v[len(v)/2]
	}
	return ratios{cpu: med(func(r ratios) float64 { return r.cpu }), p99: med(func(r ratios) float64 { return r.p99 })}
}

func printTable(out io.Writer, rows []row, rounds int, duration time.Duration, loadStart string) {
	fmt.Fprintf(out, "\n%d rounds of %s per cell, alternating tokenwarden and no-op (-floor %s); server and load generator on separate cores; load average %s at start, %s at end.\n\n",
		rounds, duration, floorImpl, loadStart, loadAverage())
	fmt.Fprintln(out, "| mode | clients | server | checks/s | p50 µs | p99 µs | server CPU µs/check |")
	fmt.Fprintln(out, "|---|---:|---|---:|---:|---:|---:|")
	ok := true
	for _, r := range rows {
		for _, x := range []struct {
			name string
			res  *result
		}{{"no-op", r.floor}, {"tokenwarden", r.tw}} {
			fmt.Fprintf(out, "| %s | %d | %s | %.0f | %.1f | %.1f | %.1f |\n",
				r.mode, r.clients, x.name, x.res.rate(), x.res.quantile(0.5), x.res.quantile(0.99), x.res.cpuPerCheck())
		}
		cpuRatio := r.tw.cpuPerCheck() / r.floor.cpuPerCheck()
		p99Ratio := r.tw.quantile(0.99) / r.floor.quantile(0.99)
		fmt.Fprintf(out, "| %s | %d | **ratio** | %.2f× | %.2f× | **%.2f×** | **%.2f×** |\n",
			r.mode, r.clients, r.tw.rate()/r.floor.rate(), r.tw.quantile(0.5)/r.floor.quantile(0.5), p99Ratio, cpuRatio)
		ok = ok && cpuRatio <= 1.2 && p99Ratio <= 1.2
	}
	verdict := "met"
	if !ok {
		verdict = "NOT met"
	}
	fmt.Fprintln(out, "\nPer round (tokenwarden's run over the no-op's run just after it):")
	fmt.Fprintln(out, "\n| mode | clients | CPU ratio by round | median | p99 ratio by round | median |\n|---|---:|---|---:|---|---:|")
	medOK := true
	for _, r := range rows {
		var cpu, p99 []string
		for _, x := range r.rounds {
			cpu, p99 = append(cpu, fmt.Sprintf("%.2f", x.cpu)), append(p99, fmt.Sprintf("%.2f", x.p99))
		}
		m := medianRatios(r.rounds)
		fmt.Fprintf(out, "| %s | %d | %s | **%.2f×** | %s | **%.2f×** |\n", r.mode, r.clients, strings.Join(cpu, " "), m.cpu, strings.Join(p99, " "), m.p99)
		medOK = medOK && m.cpu <= 1.2 && m.p99 <= 1.2
	}
	medVerdict := "met"
	if !medOK {
		medVerdict = "NOT met"
	}
	fmt.Fprintf(out, "\nTargets (server CPU per check and p99 at most 1.2× the no-op's): %s over all rounds pooled, %s by the median round.\n", verdict, medVerdict)
}
