package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/freshness"
	"github.com/tokenwarden/tokenwarden/agent/kernel"
	"github.com/tokenwarden/tokenwarden/agent/snapshot"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/store/etcd/etcdtest"
)

// Bounds of the store fault tests: short, so the file runs in CI time.
const (
	faultMaxStaleness = time.Second
	faultLength       = 3 * time.Second
	// converge is how soon after the store is back every agent must be
	// ready and enforce every acknowledged revocation.
	converge = 2 * time.Second
	// slack covers the test's own timing of a check (its send time is
	// taken just before the request leaves).
	slack = 100 * time.Millisecond
)

// faultMesh is a real etcd process, three agents each reaching it through
// a link the test cuts and heals, and a checker asking every agent about
// every token, over ext_authz HTTP mode, for the whole test.
type faultMesh struct {
	t      *testing.T
	etcd   *etcdtest.Process
	links  []*etcdtest.Link
	agents []runningAgent
	client *http.Client

	mu      sync.Mutex
	tokens  map[string]string // id -> token, the checker's set
	acks    []ack
	samples []sample
}

// ack is a revocation the admin API acknowledged: 201 (in the store) or
// 202 (enforced by the node asked, replicating).
type ack struct {
	id     string
	node   int
	status int
	at     time.Time
}

type sample struct {
	node   int
	id     string
	sent   time.Time
	status int
}

func newFaultMesh(t *testing.T) *faultMesh {
	t.Helper()
	e, err := etcdtest.StartProcess(t.TempDir())
	if err != nil {
		if os.Getenv("TOKENWARDEN_REQUIRE_BPF") == "" {
			t.Skipf("real etcd: %v", err)
		}
		t.Fatalf("real etcd: %v", err)
	}
	t.Cleanup(e.Kill)
	m := &faultMesh{t: t, etcd: e, client: &http.Client{Timeout: 5 * time.Second}, tokens: map[string]string{}}
	kek := writeKEK(t, store.KEKSize)
	for range 3 {
		link, err := etcdtest.NewLink(strings.TrimPrefix(e.Endpoint, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(link.Close)
		m.links = append(m.links, link)
		m.agents = append(m.agents, startAgentWith(t, Config{
			StoreBackend: StoreEtcd, EtcdEndpoints: []string{"http://" + link.Addr()}, EtcdPrefix: "/tokenwarden-fault/", KEKFile: kek,
			Etcd:          EtcdAccess{RequestTimeout: time.Second, DialTimeout: 5 * time.Second},
			AuthzHTTPAddr: "127.0.0.1:0", MaxStaleness: faultMaxStaleness, StaleAction: string(freshness.ActionDeny),
		}))
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range m.agents {
		wg.Go(func() { m.check(ctx, i) })
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return m
}

// check asks node i about every token in turn until ctx ends.
func (m *faultMesh) check(ctx context.Context, i int) {
	addr := m.agents[i].Listeners["authz-http"]
	for ctx.Err() == nil {
		m.mu.Lock()
		ids := make([]string, 0, len(m.tokens))
		for id := range m.tokens {
			ids = append(ids, id)
		}
		m.mu.Unlock()
		for _, id := range ids {
			m.mu.Lock()
			tok := m.tokens[id]
			m.mu.Unlock()
			sent := time.Now()
			status, err := check(m.client, addr, tok)
			if err != nil {
				continue // the agent is stopping
			}
			m.mu.Lock()
			m.samples = append(m.samples, sample{node: i, id: id, sent: sent, status: status})
			m.mu.Unlock()
		}
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// issue mints n tokens on node 0 and hands them to the checker.
func (m *faultMesh) issue(n int) []string {
	var ids []string
	for range n {
		tok, id := issue(m.t, m.agents[0], `{"subject":"svc-fault","class":"service","scopes":["orders:read"]}`)
		m.mu.Lock()
		m.tokens[id] = tok
		m.mu.Unlock()
		ids = append(ids, id)
	}
	return ids
}

// revoke asks node i to revoke token id and records an acknowledgement.
// During an outage the call may fail: that revocation was promised to no
// one.
func (m *faultMesh) revoke(i int, id string) int {
	r := m.agents[i]
	req, _ := http.NewRequest("POST", "http://"+r.AdminAddr+"/v1/tokens/"+id+"/revoke", strings.NewReader(`{"reason":"fault test"}`))
	req.Header.Set("Authorization", "Bearer "+readToken(m.t, r.AdminTokenFile))
	// Acknowledged within 2s (201 stored, 202 replicating) or not at all.
	resp, err := (&http.Client{Timeout: 3 * time.Second}).Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusAccepted {
		m.mu.Lock()
		m.acks = append(m.acks, ack{id: id, node: i, status: resp.StatusCode, at: time.Now()})
		m.mu.Unlock()
	}
	return resp.StatusCode
}

// during runs fs at once, side by side, and returns after d (or once
// they are all done, if later).
func (m *faultMesh) during(d time.Duration, fs ...func()) {
	var wg sync.WaitGroup
	for _, f := range fs {
		wg.Go(f)
	}
	time.Sleep(d)
	wg.Wait()
}

func (m *faultMesh) ready(i int) (bool, string) {
	resp, err := m.client.Get("http://" + m.agents[i].AdminAddr + "/readyz")
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	var b strings.Builder
	fmt.Fprint(&b, resp.Status)
	return resp.StatusCode == http.StatusOK, b.String()
}

// waitReadiness waits until /readyz on each node in nodes says want.
func (m *faultMesh) waitReadiness(nodes []int, want bool, within time.Duration) {
	m.t.Helper()
	deadline := time.Now().Add(within)
	for _, i := range nodes {
		for {
			ok, why := m.ready(i)
			if ok == want {
				break
			}
			if time.Now().After(deadline) {
				m.t.Fatalf("node %d: /readyz %s, want ready=%v within %v", i, why, want, within)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// converged waits until every node is ready and denies every acknowledged
// revocation, and fails the test past the bound.
func (m *faultMesh) converged(back time.Time) {
	m.t.Helper()
	m.mu.Lock()
	acks := append([]ack(nil), m.acks...)
	m.mu.Unlock()
	for {
		done := true
		for i, r := range m.agents {
			if ok, _ := m.ready(i); !ok {
				done = false
				continue
			}
			for _, a := range acks {
				m.mu.Lock()
				tok := m.tokens[a.id]
				m.mu.Unlock()
				if st, err := check(m.client, r.Listeners["authz-http"], tok); err != nil || st != http.StatusUnauthorized {
					done = false
				}
			}
		}
		if done {
			m.t.Logf("every node current %v after the store came back", time.Since(back).Round(time.Millisecond))
			return
		}
		if time.Since(back) > converge {
			for i := range m.agents {
				_, why := m.ready(i)
				m.t.Logf("node %d: /readyz %s", i, why)
			}
			m.t.Fatalf("nodes not current %v after the store came back", converge)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// verify checks every sample taken so far against every acknowledgement:
// no node allowed a token after it had to know of its revocation, that is
// later than --max-staleness after a 201 (the store had it), or at all
// after a 202 on the node that answered it.
func (m *faultMesh) verify() {
	m.t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	acked := map[string]ack{}
	for _, a := range m.acks {
		acked[a.id] = a
	}
	bad, denied503 := 0, 0
	for _, s := range m.samples {
		if s.status == http.StatusServiceUnavailable {
			denied503++
		}
		a, ok := acked[s.id]
		if !ok || s.status != http.StatusOK {
			continue
		}
		late := s.sent.Sub(a.at)
		if (a.status == http.StatusCreated && late > faultMaxStaleness+slack) || (a.status == http.StatusAccepted && s.node == a.node && late > 0) {
			if bad < 5 {
				m.t.Errorf("node %d allowed token %s %v after its revocation was acknowledged (%d on node %d)", s.node, s.id, late, a.status, a.node)
			}
			bad++
		}
	}
	if bad > 0 {
		m.t.Errorf("%d checks allowed on stale rules", bad)
	}
	m.t.Logf("%d checks, %d acknowledged revocations, %d store_unavailable denials", len(m.samples), len(m.acks), denied503)
}

// TestStoreFaults runs each fault of the store against one mesh of three
// agents with --stale-action=deny and --max-staleness=1s: etcd killed,
// etcd paused (SIGSTOP), one agent's link cut. In each, revocations are
// made before and during the fault; no acknowledged one is ever lost, no
// check is allowed on rules older than the bound, /readyz fails on every
// node that cannot confirm its view (and only there), and every node is
// current within 2s of the store coming back.
func TestStoreFaults(t *testing.T) {
	m := newFaultMesh(t)
	all := []int{0, 1, 2}
	staleWithin := faultMaxStaleness + freshness.ConfirmWait + time.Second

	t.Run("etcd killed", func(t *testing.T) {
		m.t = t
		ids := m.issue(4)
		if st := m.revoke(0, ids[0]); st != http.StatusCreated {
			t.Fatalf("revoke with the store up: %d", st)
		}
		m.etcd.Kill()
		m.waitReadiness(all, false, staleWithin)
		m.during(faultLength, func() { m.revoke(1, ids[1]) }, func() { m.revoke(2, ids[2]) })
		if err := m.etcd.Start(); err != nil {
			t.Fatal(err)
		}
		m.converged(time.Now())
		m.verify()
	})
	t.Run("etcd paused", func(t *testing.T) {
		m.t = t
		ids := m.issue(4)
		if st := m.revoke(1, ids[0]); st != http.StatusCreated {
			t.Fatalf("revoke with the store up: %d", st)
		}
		if err := m.etcd.Stop(); err != nil {
			t.Fatal(err)
		}
		m.waitReadiness(all, false, staleWithin)
		m.during(faultLength, func() { m.revoke(2, ids[1]) })
		if err := m.etcd.Cont(); err != nil {
			t.Fatal(err)
		}
		m.converged(time.Now())
		m.verify()
	})
	t.Run("one link cut", func(t *testing.T) {
		m.t = t
		ids := m.issue(4)
		m.links[2].Cut()
		m.waitReadiness([]int{2}, false, staleWithin)
		// Node 2 cannot see these: it must deny them from its bound on.
		for i, id := range ids[:3] {
			if st := m.revoke(i%2, id); st != http.StatusCreated {
				t.Errorf("revoke on a connected node: %d", st)
			}
		}
		m.waitReadiness([]int{0, 1}, true, time.Second) // the others stay ready
		time.Sleep(faultLength)
		m.links[2].Heal()
		m.converged(time.Now())
		m.verify()
	})
}

// TestPausedAgentNeverAllowsOnStaleRules attacks a node resumed after
// SIGSTOP: a real agent process (--stale-action=serve, the permissive
// default) is stopped, a token it allowed is revoked on another node, the
// bound passes, and a check reaches the stopped process's socket. Resumed,
// that first check must be denied: the node confirms its view before
// deciding on rules it last confirmed before the pause.
func TestPausedAgentNeverAllowsOnStaleRules(t *testing.T) {
	e, err := etcdtest.StartProcess(t.TempDir())
	if err != nil {
		if os.Getenv("TOKENWARDEN_REQUIRE_BPF") == "" {
			t.Skipf("real etcd: %v", err)
		}
		t.Fatalf("real etcd: %v", err)
	}
	t.Cleanup(e.Kill)
	dir := t.TempDir()
	bin := filepath.Join(dir, "tokenwarden")
	if out, err := exec.Command("go", "build", "-o", bin, "..").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	kek := writeKEK(t, store.KEKSize)
	prefix := "/tokenwarden-pause/"
	a := startAgentWith(t, Config{StoreBackend: StoreEtcd, EtcdEndpoints: []string{e.Endpoint}, EtcdPrefix: prefix, KEKFile: kek})

	admin, authzAddr := freeAddr(t), freeAddr(t)
	cmd := exec.Command(bin, "serve", "--data-dir", filepath.Join(dir, "data"), "--policy", "../deploy/policy.example.yaml", "--env", "dev",
		"--store", "etcd", "--etcd-endpoints", e.Endpoint, "--etcd-prefix", prefix, "--kek-file", kek,
		"--max-staleness", faultMaxStaleness.String(), "--stale-action", "serve",
		"--admin", admin, "--metrics", "127.0.0.1:0", "--authz-grpc", "", "--authz-http", authzAddr, "--xds", "", "--bpf", "off", "--log-level", "error")
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		cmd.Wait()
	})
	client := &http.Client{Timeout: 10 * time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := client.Get("http://" + admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent process is not ready after 20s")
		}
		time.Sleep(50 * time.Millisecond)
	}

	for trial := range 3 {
		token, id := issue(t, a, `{"subject":"svc-pause","class":"service","scopes":["orders:read"]}`)
		if st, err := check(client, authzAddr, token); err != nil || st != http.StatusOK {
			t.Fatalf("trial %d: a fresh token on the process: %d %v", trial, st, err)
		}
		if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		if st, out := call(t, "POST", "http://"+a.AdminAddr+"/v1/tokens/"+id+"/revoke", readToken(t, a.AdminTokenFile), `{"reason":"pause test"}`); st != http.StatusCreated && st != http.StatusAccepted {
			t.Fatalf("revoke: %d %v", st, out)
		}
		time.Sleep(faultMaxStaleness + 200*time.Millisecond)
		got := make(chan int, 1)
		go func() {
			st, err := check(client, authzAddr, token) // queued on the stopped process's socket
			if err != nil {
				st = 0
			}
			got <- st
		}()
		time.Sleep(50 * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		if st := <-got; st != http.StatusUnauthorized {
			t.Errorf("trial %d: the first check after the pause answered %d, want 401 (revoked)", trial, st)
		}
	}
}

// freeAddr is a loopback address nothing listens on (as far as one can
// tell: another process may take it before it is used).
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestStartWithoutStore restarts an agent while etcd is down. Agents A and
// B run; a token is revoked on B; A's local snapshot holds the rule; etcd
// is killed and A restarted. A must start within a few seconds, report
// not ready, and deny the revoked token: under serve it keeps allowing the
// others, under deny it denies every check with store_unavailable (503).
// When etcd is back, A is ready and enforces a revocation made on B since
// within 2s. An agent with no snapshot (C) still refuses to start.
func TestStartWithoutStore(t *testing.T) {
	e, err := etcdtest.StartProcess(t.TempDir())
	if err != nil {
		if os.Getenv("TOKENWARDEN_REQUIRE_BPF") == "" {
			t.Skipf("real etcd: %v", err)
		}
		t.Fatalf("real etcd: %v", err)
	}
	t.Cleanup(e.Kill)
	kek := writeKEK(t, store.KEKSize)
	client := &http.Client{Timeout: 5 * time.Second}
	for i, action := range freshness.Actions {
		t.Run(string(action), func(t *testing.T) {
			if i > 0 {
				if err := e.Start(); err != nil { // killed by the previous run
					t.Fatal(err)
				}
			}
			cfg := Config{
				StoreBackend: StoreEtcd, EtcdEndpoints: []string{e.Endpoint}, EtcdPrefix: "/tokenwarden-offline-" + string(action) + "/", KEKFile: kek,
				Etcd:          EtcdAccess{RequestTimeout: time.Second, DialTimeout: 2 * time.Second},
				AuthzHTTPAddr: "127.0.0.1:0", MaxStaleness: faultMaxStaleness, StaleAction: string(action),
				DataDir: t.TempDir(),
			}
			a := startAgentWith(t, cfg)
			bcfg := cfg
			bcfg.DataDir = t.TempDir()
			b := startAgentWith(t, bcfg)
			tok, id := issue(t, b, `{"subject":"svc-offline","class":"service","scopes":["orders:read"]}`)
			later, laterID := issue(t, b, `{"subject":"svc-offline","class":"service","scopes":["orders:read"]}`)
			kept, _ := issue(t, b, `{"subject":"svc-offline","class":"service","scopes":["orders:read"]}`)
			if st, out := call(t, "POST", "http://"+b.AdminAddr+"/v1/tokens/"+id+"/revoke", readToken(t, b.AdminTokenFile), `{"reason":"offline test"}`); st != http.StatusCreated {
				t.Fatalf("revoke on B: %d %v", st, out)
			}
			waitSnapshot(t, filepath.Join(cfg.DataDir, snapshot.FileName), kek, id)

			a.stop()
			e.Kill()
			began := time.Now()
			a = startAgentWith(t, cfg)
			t.Logf("A started without the store in %v", time.Since(began).Round(time.Millisecond))
			if d := time.Since(began); d > 5*time.Second {
				t.Errorf("A took %v to start without the store", d)
			}
			if ok, why := readyz(client, a.AdminAddr); ok {
				t.Errorf("A is ready without the store: %s", why)
			}
			authzAddr := a.Listeners["authz-http"]
			want := map[string]int{tok: http.StatusUnauthorized, kept: http.StatusOK, later: http.StatusOK}
			if action == freshness.ActionDeny {
				want = map[string]int{tok: http.StatusServiceUnavailable, kept: http.StatusServiceUnavailable, later: http.StatusServiceUnavailable}
			}
			for token, st := range want {
				got, reason := checkReason(t, client, authzAddr, token)
				if got != st || (st == http.StatusServiceUnavailable && reason != "store_unavailable") {
					t.Errorf("A without the store: check answered %d %q, want %d", got, reason, st)
				}
			}
			// Issuing needs the store: a clear refusal, not a hang.
			issueStart := time.Now()
			st, _ := call(t, "POST", "http://"+a.AdminAddr+"/v1/tokens", readToken(t, a.AdminTokenFile), `{"subject":"svc-offline","class":"service","scopes":["orders:read"]}`)
			t.Logf("issue without the store: %d after %v", st, time.Since(issueStart).Round(time.Millisecond))
			if st != http.StatusServiceUnavailable {
				t.Errorf("issue without the store answered %d, want 503 store_unavailable", st)
			}

			if err := e.Start(); err != nil {
				t.Fatal(err)
			}
			back := time.Now()
			// B revokes another token once it can write.
			var acked time.Time
			for {
				st, _ := call(t, "POST", "http://"+b.AdminAddr+"/v1/tokens/"+laterID+"/revoke", readToken(t, b.AdminTokenFile), `{"reason":"offline test, after"}`)
				if st == http.StatusCreated {
					acked = time.Now()
					break
				}
				if time.Since(back) > 10*time.Second {
					t.Fatalf("B cannot revoke 10s after etcd came back: %d", st)
				}
				time.Sleep(20 * time.Millisecond)
			}
			for {
				ready, why := readyz(client, a.AdminAddr)
				s1, _ := check(client, authzAddr, tok)
				s2, _ := check(client, authzAddr, later)
				s3, _ := check(client, authzAddr, kept)
				if ready && s1 == http.StatusUnauthorized && s2 == http.StatusUnauthorized && s3 == http.StatusOK {
					t.Logf("A ready and current %v after etcd came back (%v after the revocation on B)",
						time.Since(back).Round(time.Millisecond), time.Since(acked).Round(time.Millisecond))
					break
				}
				if time.Since(back) > converge && time.Since(acked) > converge {
					t.Fatalf("A not current %v after etcd came back: /readyz %s, checks %d %d %d", converge, why, s1, s2, s3)
				}
				time.Sleep(10 * time.Millisecond)
			}

			// An agent with no snapshot has nothing to serve from.
			e.Kill()
			ccfg := cfg
			ccfg.DataDir, ccfg.PolicyPath, ccfg.Env, ccfg.BPF = t.TempDir(), "../deploy/policy.example.yaml", "dev", kernel.ModeOff
			ccfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
			if c, err := New(t.Context(), ccfg); err == nil {
				c.Close()
				t.Error("an agent without a snapshot started without the store")
			} else if !strings.Contains(err.Error(), "no local snapshot") {
				t.Errorf("start without store or snapshot: %v, want it to say there is no local snapshot", err)
			}
		})
	}
}

// waitSnapshot waits until the snapshot at path holds a rule on token id.
func waitSnapshot(t *testing.T, path string, kek, id string) {
	t.Helper()
	key, err := os.ReadFile(kek)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if s, err := snapshot.Load(path, key); err == nil {
			for _, r := range s.Rules {
				if r.Target == id {
					st, _ := os.Stat(path)
					if st.Mode().Perm() != 0o600 {
						t.Errorf("snapshot has mode %v, want 0600", st.Mode().Perm())
					}
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the snapshot holds no rule on %s after 10s", id)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func readyz(client *http.Client, adminAddr string) (bool, string) {
	resp, err := client.Get("http://" + adminAddr + "/readyz")
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode == http.StatusOK, resp.Status + " " + string(b)
}

// checkReason is check that also returns the reason the agent gave.
func checkReason(t *testing.T, client *http.Client, authzAddr, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+authzAddr+"/envoy/orders/orders/42", nil)
	req.Host = "orders"
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Error  string `json:"error"`
		Reason string `json:"reason"`
	}
	json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&out)
	return resp.StatusCode, out.Error + out.Reason
}
