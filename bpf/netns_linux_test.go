//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpf

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// These tests send real HTTP through attached programs. They only use
// network namespaces they create (and delete), and addresses inside them.

// netns is a network namespace created for one test.
type netns struct {
	name string
	fd   int
}

// newNetns creates a network namespace with lo up, deleted when the test
// ends. It skips the test (or fails it under TOKENWARDEN_REQUIRE_BPF=1) when
// namespaces cannot be made here.
func newNetns(t *testing.T) *netns {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		skipOrFail(t, "the ip command (iproute2) is needed to create network namespaces")
	}
	name := "tw-bpf-" + randomHex(t, 4)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		skipOrFail(t, "cannot create a network namespace: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", name, err, out)
		}
	})
	fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	ns := &netns{name: name, fd: fd}
	ns.ip(t, "link", "set", "lo", "up")
	return ns
}

// ip runs an ip(8) command inside the namespace.
func (ns *netns) ip(t *testing.T, args ...string) {
	t.Helper()
	args = append([]string{"-n", ns.name}, args...)
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// do runs fn on an OS thread that has joined the namespace. The thread is
// never handed back to the scheduler: it exits with the goroutine, so no
// other goroutine ever runs in the wrong namespace. Sockets created by fn
// stay in the namespace after it returns.
func (ns *netns) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(ns.fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns.name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func randomHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// tokenServer is an HTTP server that records the bearer tokens it served.
type tokenServer struct {
	srv  *http.Server
	addr string

	mu   sync.Mutex
	seen map[string]int
}

func startTokenServer(t *testing.T, ln net.Listener) *tokenServer {
	ts := &tokenServer{addr: ln.Addr().String(), seen: make(map[string]int)}
	ts.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ts.mu.Lock()
			ts.seen[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]++
			ts.mu.Unlock()
			_, _ = w.Write([]byte("ok"))
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go ts.srv.Serve(ln)
	t.Cleanup(func() { ts.srv.Close() })
	return ts
}

func (ts *tokenServer) count(token string) int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.seen[token]
}

// clientIn returns an HTTP client whose connections are made in ns.
func clientIn(ns *netns, timeout time.Duration) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := ns.do(func() (err error) {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			if err != nil {
				return nil, err
			}
			// Reset on close: a dropped request must not linger in
			// retransmission and show up in a later test's counts.
			return c, c.(*net.TCPConn).SetLinger(0)
		},
		MaxIdleConnsPerHost: 1,
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}

func get(c *http.Client, url, token string) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

// readCounts returns ReadCounts as a map by hash.
func readCounts(t *testing.T, s *Sentry) map[uint64]TokenCount {
	t.Helper()
	counts, err := s.ReadCounts()
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[uint64]TokenCount, len(counts))
	for _, c := range counts {
		m[c.Hash] = c
	}
	return m
}

// TestAttachVeth sends real HTTP from a client namespace to a server
// namespace over a veth pair, with the TCX ingress program on the server's
// end: counts rise once per request, a revoked token's request is dropped
// and reported within 100 ms of the revocation, other tokens pass.
func TestAttachVeth(t *testing.T) {
	s := loadSentry(t, Config{})
	server, client := newNetns(t), newNetns(t)
	suffix := randomHex(t, 3)
	srvIf, cliIf := "twv"+suffix+"s", "twv"+suffix+"c"
	server.ip(t, "link", "add", srvIf, "type", "veth", "peer", "name", cliIf, "netns", client.name)
	server.ip(t, "addr", "add", "10.199.1.1/24", "dev", srvIf)
	server.ip(t, "link", "set", srvIf, "up")
	client.ip(t, "addr", "add", "10.199.1.2/24", "dev", cliIf)
	client.ip(t, "link", "set", cliIf, "up")

	if err := server.do(func() error { return s.AttachTCX(srvIf, Ingress) }); err != nil {
		t.Fatal(err)
	}
	var srvIndex int
	var ln net.Listener
	if err := server.do(func() (err error) {
		iface, err := net.InterfaceByName(srvIf)
		if err != nil {
			return err
		}
		srvIndex = iface.Index
		ln, err = net.Listen("tcp4", "10.199.1.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ts := startTokenServer(t, ln)
	url := "http://" + ts.addr + "/orders/42"
	events := collectEvents(t, s)

	const alice, bob, mallory = "tw_alice.eyJzdWIiOiJhbGljZSJ9.sig-a", "tw_bob.eyJzdWIiOiJib2IifQ.sig-b", "tw_mallory.eyJzdWIiOiJtYWxsb3J5In0.sig-m"
	c := clientIn(client, 5*time.Second)
	defer c.CloseIdleConnections()
	for i := range 5 {
		if err := get(c, url, alice); err != nil {
			t.Fatalf("alice request %d: %v", i, err)
		}
	}
	for i := range 3 {
		if err := get(c, url, bob); err != nil {
			t.Fatalf("bob request %d: %v", i, err)
		}
	}
	counts := readCounts(t, s)
	if got := counts[HashToken(alice)]; got.Requests != 5 || got.Bytes == 0 || got.Drops != 0 {
		t.Errorf("alice: %+v, want 5 requests", got)
	}
	if got := counts[HashToken(bob)]; got.Requests != 3 || got.Drops != 0 {
		t.Errorf("bob: %+v, want 3 requests", got)
	}
	if len(counts) != 2 {
		t.Errorf("counted %d tokens, want 2: %+v", len(counts), counts)
	}

	// Revoke mallory, then send her request on a fresh connection.
	revokedAt := time.Now()
	if err := s.Revoke(HashToken(mallory)); err != nil {
		t.Fatal(err)
	}
	mc := clientIn(client, 700*time.Millisecond)
	defer mc.CloseIdleConnections()
	errc := make(chan error, 1)
	go func() { errc <- get(mc, url, mallory) }()

	ev := waitEvent(t, events, 2*time.Second)
	if lag := time.Since(revokedAt); lag > 100*time.Millisecond {
		t.Errorf("drop event arrived %v after Revoke, want within 100ms", lag)
	}
	if ev.Hash != HashToken(mallory) || ev.Hook != HookTCXIngress || ev.Ifindex != srvIndex ||
		ev.Src.Addr().String() != "10.199.1.2" || ev.Dst.String() != ts.addr {
		t.Errorf("event %+v, want mallory's request from 10.199.1.2 to %s on ifindex %d", ev, ts.addr, srvIndex)
	}
	if err := <-errc; err == nil {
		t.Errorf("mallory's request succeeded, want it dropped")
	}
	if n := ts.count(mallory); n != 0 {
		t.Errorf("the server saw mallory's token %d times", n)
	}

	// Others still pass.
	if err := get(c, url, alice); err != nil {
		t.Fatalf("alice after the revocation: %v", err)
	}
	counts = readCounts(t, s)
	if got := counts[HashToken(alice)]; got.Requests != 1 {
		t.Errorf("alice after the revocation: %+v, want 1 more request", got)
	}
	if got := counts[HashToken(mallory)]; got.Requests == 0 || got.Drops != got.Requests {
		t.Errorf("mallory: %+v, want every request dropped", got)
	}

	// Unrevoked, mallory passes again.
	if err := s.Unrevoke(HashToken(mallory)); err != nil {
		t.Fatal(err)
	}
	if err := get(clientIn(client, 5*time.Second), url, mallory); err != nil {
		t.Errorf("mallory after Unrevoke: %v", err)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Drops == 0 || st.Requests < 10 || st.Tokens < 10 || st.Unparsed != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestAttachLoopback runs the TCX egress program on lo in a fresh namespace,
// over IPv4 and IPv6. Requests are written in one write each so a large
// header block travels in one segment (lo's MTU is 64 KiB), which makes the
// program copy the payload in several chunks from a non-linear skb.
func TestAttachLoopback(t *testing.T) {
	s := loadSentry(t, Config{})
	ns := newNetns(t)
	if err := ns.do(func() error { return s.AttachTCX("lo", Egress) }); err != nil {
		t.Fatal(err)
	}
	events := collectEvents(t, s)

	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "tcp6" {
				addr = "[::1]:0"
			}
			var ln net.Listener
			if err := ns.do(func() (err error) { ln, err = net.Listen(network, addr); return err }); err != nil {
				if network == "tcp6" && errors.Is(err, unix.EADDRNOTAVAIL) {
					skipOrFail(t, "no IPv6 on lo: %v", err)
				}
				t.Fatal(err)
			}
			ts := startTokenServer(t, ln)
			token := "tw_eyJ.eyJ.sig-" + network
			filler := func(n int) string { return "X-Filler: " + strings.Repeat("f", n) + "\r\n" }

			tests := []struct {
				name    string
				headers string
				want    Stats
			}{
				{"plain", "", Stats{Requests: 1, Tokens: 1}},
				{"after_6KiB_of_headers", filler(6000), Stats{Requests: 1, Tokens: 1}},
				{"past_MaxScanLen", filler(MaxScanLen), Stats{Requests: 1}},
				{"truncated", "", Stats{Requests: 1, Truncated: 1}},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					tokenHere := token
					if tc.name == "truncated" {
						tokenHere = strings.Repeat("T", MaxTokenLen+1)
					}
					readCounts(t, s) // reset the deltas
					before, err := s.Stats()
					if err != nil {
						t.Fatal(err)
					}
					request := "GET / HTTP/1.1\r\nHost: x\r\n" + tc.headers +
						"Authorization: Bearer " + tokenHere + "\r\nConnection: close\r\n\r\n"
					if err := rawRequest(ns, network, ts.addr, request); err != nil {
						t.Fatal(err)
					}
					after, err := s.Stats()
					if err != nil {
						t.Fatal(err)
					}
					d := statsDelta(before, after)
					if d.Requests != tc.want.Requests || d.Tokens != tc.want.Tokens || d.Truncated != tc.want.Truncated || d.Incomplete != 0 || d.Unparsed != 0 {
						t.Errorf("stats grew by %+v, want %+v", d, tc.want)
					}
					counts := readCounts(t, s)
					if tc.want.Tokens == 1 && counts[HashToken(tokenHere)].Requests != 1 {
						t.Errorf("counts %+v, want 1 request for the token", counts)
					}
					if tc.want.Tokens == 0 && len(counts) != 0 {
						t.Errorf("counts %+v, want none", counts)
					}
				})
			}

			// Tokens up to the longest the agent issues, and past it:
			// the kernel agrees with the Go parser's table.
			for _, pc := range longPayloadCases {
				t.Run(pc.name, func(t *testing.T) {
					readCounts(t, s) // reset the deltas
					before, err := s.Stats()
					if err != nil {
						t.Fatal(err)
					}
					d := sendPayload(t, ns, s, network, ts.addr, pc.payload, before)
					want := Stats{Requests: 1, Tokens: uint64(btoi(pc.token != "")), Truncated: uint64(btoi(pc.truncated)), Incomplete: uint64(btoi(pc.incomplete))}
					if d.Requests != want.Requests || d.Tokens != want.Tokens || d.Truncated != want.Truncated || d.Incomplete != want.Incomplete || d.Unparsed != 0 {
						t.Errorf("stats grew by %+v, want %+v", d, want)
					}
					counts := readCounts(t, s)
					if pc.token != "" && (counts[HashToken(pc.token)].Requests != 1 || len(counts) != 1) {
						t.Errorf("counts %+v, want 1 request for the token", counts)
					}
					if pc.token == "" && len(counts) != 0 {
						t.Errorf("counts %+v, want none", counts)
					}
				})
			}

			t.Run("revoked", func(t *testing.T) {
				if err := s.Revoke(HashToken(token)); err != nil {
					t.Fatal(err)
				}
				defer s.Unrevoke(HashToken(token))
				c := clientIn(ns, 500*time.Millisecond)
				defer c.CloseIdleConnections()
				if err := get(c, "http://"+ts.addr+"/", token); err == nil {
					t.Error("request with a revoked token succeeded")
				}
				ev := waitEvent(t, events, time.Second)
				if ev.Hash != HashToken(token) || ev.Hook != HookTCXEgress || ev.Dst.String() != ts.addr {
					t.Errorf("event %+v", ev)
				}
				drainEvents(events)
			})
		})
	}
}

// rawRequest writes request in one write on a new connection made in ns and
// waits for the response (or for the server to close).
func rawRequest(ns *netns, network, addr, request string) error {
	return rawRequestTimeout(ns, network, addr, request, 3*time.Second)
}

// rawRequestTimeout is rawRequest that gives up after timeout.
func rawRequestTimeout(ns *netns, network, addr, request string, timeout time.Duration) error {
	var conn net.Conn
	if err := ns.do(func() (err error) {
		conn, err = net.DialTimeout(network, addr, 2*time.Second)
		return err
	}); err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.(*net.TCPConn).SetLinger(0)
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write([]byte(request)); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	if n == 0 {
		return fmt.Errorf("no response: %w", err)
	}
	if !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 200") {
		return fmt.Errorf("response %q", buf[:n])
	}
	return nil
}

// sendPayload writes payload in one write on a new connection made in ns
// (one segment on lo), waits until the kernel has seen it as a request, and
// returns how the global counters grew since before.
func sendPayload(t *testing.T, ns *netns, s *Sentry, network, addr, payload string, before Stats) Stats {
	t.Helper()
	var conn net.Conn
	if err := ns.do(func() (err error) {
		conn, err = net.DialTimeout(network, addr, 2*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.(*net.TCPConn).SetLinger(0)
	if _, err := conn.Write([]byte(payload)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		after, err := s.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if d := statsDelta(before, after); d.Requests > 0 || time.Now().After(deadline) {
			return d
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// drainEvents discards events already queued (retransmissions of a dropped
// request are dropped and reported again).
func drainEvents(ch <-chan DropEvent) {
	for {
		select {
		case <-ch:
		case <-time.After(50 * time.Millisecond):
			return
		}
	}
}

// TestMain also runs the helper server of TestAttachCgroup when the test
// binary is started as one.
func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "http-server" {
		runHelperServer()
		return
	}
	os.Exit(m.Run())
}
