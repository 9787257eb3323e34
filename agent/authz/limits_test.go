package authz

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/tokenwarden/tokenwarden/agent/listen"
)

// serveModes serves s's gRPC and HTTP modes on loopback ports until the
// test ends.
func serveModes(t *testing.T, s *Server) (grpcAddr, httpAddr string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, serve := range []func(context.Context, net.Listener) error{s.ServeGRPC, s.ServeHTTPMode} {
		lis, err := listen.Open("127.0.0.1:0", 0)
		if err != nil {
			t.Fatal(err)
		}
		if grpcAddr == "" {
			grpcAddr = lis.Addr().String()
		} else {
			httpAddr = lis.Addr().String()
		}
		wg.Add(1)
		go func() { defer wg.Done(); serve(ctx, lis) }()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return grpcAddr, httpAddr
}

// closedWithin reports whether the server closes c (read returns EOF or an
// error other than our own deadline) within d, reading and discarding
// whatever it sends first.
func closedWithin(t *testing.T, c net.Conn, d time.Duration) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return true
}

// Slowloris: a connection that opens and then sends its request a byte at
// a time, or never, is closed after the handshake or header deadline, not
// held for minutes.
func TestSlowClientsAreClosed(t *testing.T) {
	f := newFixture(t)
	grpcAddr, httpAddr := serveModes(t, f.server(t, Config{}))
	tests := map[string]struct {
		addr     string
		send     string // sent at once, then nothing more
		deadline time.Duration
	}{
		"grpc: nothing after connect":     {addr: grpcAddr, deadline: connectionTimeout},
		"grpc: half a preface":            {addr: grpcAddr, send: http2.ClientPreface[:10], deadline: connectionTimeout},
		"http: nothing after connect":     {addr: httpAddr, deadline: httpReadHeaderTimeout},
		"http: headers never finished":    {addr: httpAddr, send: "GET /nginx HTTP/1.1\r\nHost: x\r\nX-Original-Method: GET\r\n", deadline: httpReadHeaderTimeout},
		"http: body promised, never sent": {addr: httpAddr, send: "POST /envoy/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", deadline: httpReadTimeout},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, err := net.Dial("tcp", tc.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			if tc.send != "" {
				if _, err := io.WriteString(c, tc.send); err != nil {
					t.Fatal(err)
				}
			}
			// Generous on a loaded machine, and far below the minutes a
			// slow client was held before.
			if !closedWithin(t, c, tc.deadline+20*time.Second) {
				t.Fatalf("connection still open %v after connect; deadline %v", time.Since(start), tc.deadline)
			}
			if held := time.Since(start); held < tc.deadline-100*time.Millisecond {
				t.Errorf("closed after %v, before the %v deadline: the test did not exercise it", held, tc.deadline)
			}
		})
	}
}

// h2Attacker speaks raw HTTP/2 to the gRPC server, honouring flow control
// so that the server never has a reason to drop the connection itself.
type h2Attacker struct {
	t  *testing.T
	c  net.Conn
	fr *http2.Framer
	w  *bufio.Writer

	mu       sync.Mutex
	cond     *sync.Cond
	connWin  int64
	initWin  int64
	windows  map[uint32]int64
	refused  map[uint32]bool
	finished map[uint32]string // stream -> grpc-status, or "rst" on RST_STREAM other than REFUSED
	goaway   bool
}

func newH2Attacker(t *testing.T, addr string) *h2Attacker {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a := &h2Attacker{t: t, c: c, w: bufio.NewWriterSize(c, 64<<10), connWin: 65535, initWin: 65535,
		windows: map[uint32]int64{}, refused: map[uint32]bool{}, finished: map[uint32]string{}}
	a.cond = sync.NewCond(&a.mu)
	a.fr = http2.NewFramer(a.w, c)
	a.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	io.WriteString(a.w, http2.ClientPreface)
	a.fr.WriteSettings()
	a.w.Flush()
	go a.read()
	return a
}

func (a *h2Attacker) read() {
	for {
		f, err := a.fr.ReadFrame()
		a.mu.Lock()
		if err != nil {
			a.goaway = true
			a.cond.Broadcast()
			a.mu.Unlock()
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
					for id := range a.windows {
						a.windows[id] += int64(v) - a.initWin
					}
					a.initWin = int64(v)
				}
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				a.connWin += int64(f.Increment)
			} else {
				a.windows[f.StreamID] += int64(f.Increment)
			}
		case *http2.RSTStreamFrame:
			if f.ErrCode == http2.ErrCodeRefusedStream {
				a.refused[f.StreamID] = true
			} else if a.finished[f.StreamID] == "" {
				a.finished[f.StreamID] = "rst"
			}
		case *http2.MetaHeadersFrame:
			if st := f.PseudoValue("status"); st != "" && st != "200" {
				a.finished[f.StreamID] = "http " + st
			}
			for _, hf := range f.RegularFields() {
				if hf.Name == "grpc-status" {
					a.finished[f.StreamID] = hf.Value
				}
			}
		case *http2.GoAwayFrame:
			a.goaway = true
		}
		a.cond.Broadcast()
		a.mu.Unlock()
	}
}

// open starts a Check call whose message announces length bytes.
func (a *h2Attacker) open(id uint32, length int) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, kv := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":path", "/envoy.service.auth.v3.Authorization/Check"},
		{":authority", "authz"}, {"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	a.mu.Lock()
	a.windows[id] = a.initWin
	a.mu.Unlock()
	if err := a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
		a.t.Fatal(err)
	}
	var prefix [5]byte
	binary.BigEndian.PutUint32(prefix[1:], uint32(length))
	a.send(id, prefix[:])
}

// send writes p on stream id as the windows allow; it gives up on a stream
// the server refused.
func (a *h2Attacker) send(id uint32, p []byte) {
	for len(p) > 0 {
		a.mu.Lock()
		deadline := time.Now().Add(time.Minute)
		for !a.refused[id] && !a.goaway && (a.connWin <= 0 || a.windows[id] <= 0) {
			if time.Now().After(deadline) {
				a.mu.Unlock()
				a.t.Fatalf("stream %d: no flow-control window for a minute", id)
			}
			a.w.Flush()
			waitCond(a.cond, time.Second)
		}
		if a.refused[id] || a.goaway {
			a.mu.Unlock()
			return
		}
		n := min(int64(len(p)), a.connWin, a.windows[id], 16<<10)
		a.connWin -= n
		a.windows[id] -= n
		a.mu.Unlock()
		if err := a.fr.WriteData(id, false, p[:n]); err != nil {
			a.t.Fatal(err)
		}
		p = p[n:]
	}
}

// waitCond waits on c (its lock held) for at most d.
func waitCond(c *sync.Cond, d time.Duration) {
	t := time.AfterFunc(d, c.Broadcast)
	c.Wait()
	t.Stop()
}

func liveHeap() uint64 {
	// Twice: buffers returned to a sync.Pool (grpc-go pools its read
	// buffers) survive one collection in the pool's victim cache.
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// 400 Check calls on one connection, each announcing the largest message
// and sending all of it but its last byte, pinned about 400 MB until the
// connection closed. Now the connection carries maxConcurrentStreams of
// them, each holds at most maxRecvMsgBytes, and all end at checkDeadline.
func TestHalfSentChecksAreBoundedAndExpire(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the check deadline")
	}
	f := newFixture(t)
	s := f.server(t, Config{})
	grpcAddr, _ := serveModes(t, s)
	before := liveHeap()

	const calls = 400
	a := newH2Attacker(t, grpcAddr)
	body := bytes.Repeat([]byte{'x'}, maxRecvMsgBytes-1)
	start := time.Now()
	for i := range calls {
		a.open(uint32(2*i+1), maxRecvMsgBytes)
	}
	for i := range calls {
		a.send(uint32(2*i+1), body)
	}
	a.w.Flush()

	a.mu.Lock()
	refused, goaway := len(a.refused), a.goaway
	a.mu.Unlock()
	if goaway {
		t.Fatal("the server dropped the connection: the attack did not hold its calls")
	}
	if want := calls - maxConcurrentStreams; refused != want {
		t.Errorf("%d calls refused, want %d (maxConcurrentStreams %d)", refused, want, maxConcurrentStreams)
	}
	held := s.checks.InFlight()
	grown := int64(liveHeap()) - int64(before)
	t.Logf("%d half-sent calls: %d refused, %d held, heap grew %d KiB (bound %d KiB) after %v",
		calls, refused, held, grown/1024, maxConcurrentStreams*maxRecvMsgBytes/1024, time.Since(start))
	if held > maxConcurrentStreams {
		t.Errorf("%d calls in flight on one connection, want at most %d", held, maxConcurrentStreams)
	}
	// The held calls' buffers plus slack; 400 × 1 MiB before.
	if limit := int64(maxConcurrentStreams*maxRecvMsgBytes) + 16<<20; grown > limit {
		t.Errorf("heap grew %d MiB, want under %d MiB", grown>>20, limit>>20)
	}

	// Every held call ends at the deadline, its buffers with it.
	a.mu.Lock()
	for len(a.finished) < maxConcurrentStreams && !a.goaway && time.Since(start) < checkDeadline+time.Minute {
		waitCond(a.cond, time.Second)
	}
	statuses := map[string]int{}
	for _, st := range a.finished {
		statuses[st]++
	}
	a.mu.Unlock()
	if statuses["4"] != maxConcurrentStreams { // DEADLINE_EXCEEDED
		t.Errorf("calls ended with statuses %v, want %d × 4 (DEADLINE_EXCEEDED)", statuses, maxConcurrentStreams)
	}
	if elapsed := time.Since(start); elapsed < checkDeadline-100*time.Millisecond {
		t.Errorf("calls ended after %v, before the %v deadline", elapsed, checkDeadline)
	}
	for deadline := time.Now().Add(30 * time.Second); s.checks.InFlight() > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d calls still in flight after the deadline", s.checks.InFlight())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The server's goroutines let go of the buffers as they unwind: allow
	// them a moment on a loaded machine.
	grown = int64(liveHeap()) - int64(before)
	for deadline := time.Now().Add(10 * time.Second); grown > 8<<20 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		grown = int64(liveHeap()) - int64(before)
	}
	if grown > 8<<20 {
		t.Errorf("heap still %d MiB above the start after the calls ended", grown>>20)
	}
}
