package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// floodNoFile is the descriptor limit the flooded agent runs under: low
// enough that the flood below is several times over it.
const floodNoFile = 256

// servedAgent is a `tokenwarden serve` child process.
type servedAgent struct {
	addrs map[string]string // listener -> address, from the ready banner
	token string            // admin token
	log   *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startServeUnderPrlimit builds the binary and runs it under
// `prlimit --nofile=N`, every listener on a loopback port.
func startServeUnderPrlimit(t *testing.T, nofile int) *servedAgent {
	t.Helper()
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Fatal("prlimit not found (apt-get install -y util-linux)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "tokenwarden")
	if out, err := exec.Command("go", "build", "-o", bin, "..").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(prlimit, fmt.Sprintf("--nofile=%d:%d", nofile, nofile), "--", bin, "serve",
		"--data-dir", filepath.Join(dir, "data"), "--policy", "../deploy/policy.example.yaml", "--env", "dev",
		"--admin", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--authz-grpc", "127.0.0.1:0",
		"--authz-http", "127.0.0.1:0", "--xds", "127.0.0.1:0", "--xds-authz-address", "127.0.0.1:9001", "--bpf", "off", "--log-format", "json")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	a := &servedAgent{addrs: map[string]string{}, log: &syncBuffer{}}
	ready := make(chan struct{})
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(stderr)
		readyOnce := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			a.log.Write([]byte(line + "\n"))
			// The start-up summary: one JSON record.
			var rec struct {
				Msg       string            `json:"msg"`
				Listeners map[string]string `json:"listeners"`
				TokenFile string            `json:"admin_token_file"`
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "tokenwarden agent ready" {
				for name, addr := range rec.Listeners {
					if name == "admin" {
						name = "admin API"
					}
					a.addrs[name] = addr
				}
				a.addrs["admin token"] = rec.TokenFile
				readyOnce.Do(func() { close(ready) })
			}
		}
		cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	select {
	case <-ready:
	case <-exited:
		t.Fatalf("agent exited before ready:\n%s", a.log)
	case <-time.After(2 * time.Minute):
		t.Fatalf("agent not ready after 2m:\n%s", a.log)
	}
	tok, err := os.ReadFile(a.addrs["admin token"])
	if err != nil {
		t.Fatal(err)
	}
	a.token = strings.TrimSpace(string(tok))
	return a
}

// get answers a GET on a fresh connection within a bounded time.
func (a *servedAgent) get(t *testing.T, url string, auth bool) (int, string, error) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	req, _ := http.NewRequest("GET", url, nil)
	if auth {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), nil
}

// checkClient is a legitimate ext_authz client connecting from from.
func checkClient(t *testing.T, addr, from string) authv3.AuthorizationClient {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return authv3.NewAuthorizationClient(cc)
}

// answered reports whether a Check gets an answer (a denial is one).
func answered(c authv3.AuthorizationClient) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:  &authv3.AttributeContext_Peer{Address: &corev3.Address{}},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Host: "orders", Path: "/healthz"}},
	}})
	if err != nil {
		return err
	}
	if resp.GetStatus() == nil {
		return fmt.Errorf("answer without a status: %v", resp)
	}
	return nil
}

// flood opens n connections to addr from the loopback addresses given and
// keeps them: gRPC ones send the HTTP/2 preface (so the handshake deadline
// does not end them), HTTP ones make one request and stay idle.
func flood(t *testing.T, addr, kind string, from []string, n int) (opened int) {
	t.Helper()
	for i := range n {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from[i%len(from)])}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			continue // the backlog is full: the flood is refused
		}
		t.Cleanup(func() { c.Close() })
		switch kind {
		case "grpc":
			// Preface and an empty SETTINGS frame.
			io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
		case "http":
			io.WriteString(c, "GET /nginx HTTP/1.1\r\nHost: x\r\n\r\n")
		}
		opened++
	}
	return opened
}

func loopbacks(from, to int) []string {
	var ips []string
	for i := from; i <= to; i++ {
		ips = append(ips, fmt.Sprintf("127.0.0.%d", i))
	}
	return ips
}

// Attacks on the listeners of an agent running with a low descriptor limit.
// Slowloris: every listener closes a half-sent request at its deadline.
// Then an idle-connection flood on every enforcement listener: one client
// is held to its share, a
// new client is still served; many clients fill the enforcement listeners
// and nothing more: /healthz, the admin API and metrics answer, and
// ext_authz keeps serving the clients it had.
func TestListenersUnderLowFDLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	a := startServeUnderPrlimit(t, floodNoFile)
	grpcAddr, httpAddr, xdsAddr := a.addrs["authz-grpc"], a.addrs["authz-http"], a.addrs["xds"]
	admin := "http://" + a.addrs["admin API"]

	// Slowloris on every listener: half a request, then nothing. Each is
	// closed at its deadline (handshake, headers), not held for minutes.
	slow := map[string]struct {
		addr, send string
		deadline   time.Duration
	}{
		"admin":      {a.addrs["admin API"], "GET /healthz HTTP/1.1\r\nHost: x\r\n", 3 * time.Second},
		"metrics":    {a.addrs["metrics"], "GET /metrics HTTP/1.1\r\n", 3 * time.Second},
		"authz-http": {httpAddr, "GET /nginx HTTP/1.1\r\nX-Original-Method: GET\r\n", 2 * time.Second},
		"authz-grpc": {grpcAddr, "PRI * HTTP/2.0\r\n", 5 * time.Second},
		"xds":        {xdsAddr, "PRI * HTTP/2.0\r\n", 5 * time.Second},
	}
	var wg sync.WaitGroup
	for name, s := range slow {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", s.addr)
			if err != nil {
				t.Errorf("%s: %v", name, err)
				return
			}
			defer c.Close()
			start := time.Now()
			io.WriteString(c, s.send)
			c.SetReadDeadline(time.Now().Add(s.deadline + 30*time.Second))
			_, err = io.Copy(io.Discard, c)
			held := time.Since(start)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Errorf("%s: a half-sent request still held after %v (deadline %v)", name, held, s.deadline)
				return
			}
			if held < s.deadline-100*time.Millisecond {
				t.Errorf("%s: closed after %v, before its %v deadline", name, held, s.deadline)
			}
			t.Logf("slowloris on %s: closed after %v", name, held.Round(10*time.Millisecond))
		}()
	}
	wg.Wait()

	// A client connected before the flood.
	early := checkClient(t, grpcAddr, "127.0.0.1")
	if err := answered(early); err != nil {
		t.Fatalf("check before the flood: %v\n%s", err, a.log)
	}

	// One address floods: it is held to its share, a new client gets in.
	flood(t, grpcAddr, "grpc", []string{"127.0.0.9"}, 2*floodNoFile)
	if err := answered(checkClient(t, grpcAddr, "127.0.0.2")); err != nil {
		t.Fatalf("a new client during a one-address flood: %v", err)
	}

	// Many addresses flood every enforcement listener, together several
	// times the descriptor limit.
	many := loopbacks(10, 250)
	total := flood(t, grpcAddr, "grpc", many, 2*floodNoFile) +
		flood(t, httpAddr, "http", many, 2*floodNoFile) +
		flood(t, xdsAddr, "grpc", many, 2*floodNoFile)
	t.Logf("flood: %d connections against RLIMIT_NOFILE %d", total, floodNoFile)

	if st, _, err := a.get(t, admin+"/healthz", false); err != nil || st != 200 {
		t.Errorf("/healthz during the flood: %d %v", st, err)
	}
	if st, _, err := a.get(t, admin+"/readyz", false); err != nil || st != 200 {
		t.Errorf("/readyz during the flood: %d %v", st, err)
	}
	if st, body, err := a.get(t, admin+"/v1/tokens", true); err != nil || st != 200 {
		t.Errorf("admin call during the flood: %d %v %.200s", st, err, body)
	}
	if err := answered(early); err != nil {
		t.Errorf("check on an established connection during the flood: %v", err)
	}
	st, metrics, err := a.get(t, "http://"+a.addrs["metrics"]+"/metrics", false)
	if err != nil || st != 200 {
		t.Fatalf("metrics during the flood: %d %v", st, err)
	}
	for _, want := range []string{
		`tokenwarden_listener_refused_total{listener="authz-grpc",reason="client_full"}`,
		`tokenwarden_listener_refused_total{listener="authz-grpc",reason="listener_full"}`,
		`tokenwarden_listener_refused_total{listener="authz-http",reason="listener_full"}`,
		`tokenwarden_listener_refused_total{listener="xds",reason="listener_full"}`,
	} {
		line := metricLine(metrics, want)
		if line == "" || strings.HasSuffix(line, " 0") {
			t.Errorf("metric %s: %q, want a count above 0", want, line)
		}
	}
	if line := metricLine(metrics, `tokenwarden_listener_refused_total{listener="admin",reason="fd_exhausted"}`); !strings.HasSuffix(line, " 0") {
		t.Errorf("admin ran out of descriptors: %q", line)
	}
	t.Logf("%s\n%s", metricLine(metrics, `tokenwarden_listener_connections{listener="authz-grpc"}`),
		metricLine(metrics, `tokenwarden_listener_connection_limit{listener="authz-grpc"}`))
}

func metricLine(exposition, prefix string) string {
	for _, l := range strings.Split(exposition, "\n") {
		if strings.HasPrefix(l, prefix+" ") {
			return l
		}
	}
	return ""
}
