package agent

import (
	"context"
	"fmt"
	"io"
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
