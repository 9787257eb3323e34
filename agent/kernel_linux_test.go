package agent

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	kernelpkg "github.com/tokenwarden/tokenwarden/agent/kernel"

	"golang.org/x/sys/unix"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/bpf"
)

// requireBPF reports whether BPF tests must run: TOKENWARDEN_REQUIRE_BPF=1
// (set by CI) turns every skip for lack of privilege into a failure.
func requireBPF() bool { return os.Getenv("TOKENWARDEN_REQUIRE_BPF") == "1" }

// testNetns is a network namespace made for one test, holding the far end
// of a veth pair whose near end stays in the test's namespace.
type testNetns struct {
	name string
	fd   int
}

// vethToNetns creates a namespace and a veth pair near<->far with
// 10.199.77.1/30 near and 10.199.77.2/30 far (addresses that exist only
// on this pair). It returns the near interface name and the namespace.
func vethToNetns(t *testing.T) (string, *testNetns) {
	t.Helper()
	suffix := fmt.Sprintf("%d", os.Getpid()%100000)
	ns := &testNetns{name: "tw-agent-" + suffix}
	near, far := "twn"+suffix, "twf"+suffix
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	run("netns", "add", ns.name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns.name).Run() })
	run("link", "add", near, "type", "veth", "peer", "name", far)
	t.Cleanup(func() { exec.Command("ip", "link", "del", near).Run() })
	run("link", "set", far, "netns", ns.name)
	run("addr", "add", "10.199.77.1/30", "dev", near)
	run("link", "set", near, "up")
	run("-n", ns.name, "addr", "add", "10.199.77.2/30", "dev", far)
	run("-n", ns.name, "link", "set", far, "up")
	run("-n", ns.name, "link", "set", "lo", "up")
	fd, err := unix.Open("/run/netns/"+ns.name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	ns.fd = fd
	return near, ns
}

// listen opens a TCP listener inside the namespace, on a thread that never
// returns to the scheduler so no other goroutine runs in the namespace.
func (ns *testNetns) listen(addr string) (net.Listener, error) {
	type result struct {
		l   net.Listener
		err error
	}
	c := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(ns.fd, unix.CLONE_NEWNET); err != nil {
			c <- result{nil, err}
			return
		}
		l, err := net.Listen("tcp", addr)
		c <- result{l, err}
	}()
	r := <-c
	return r.l, r.err
}

// TestKernelSide starts one agent with the kernel side attached to a veth
// whose far end is in a namespace with a real HTTP server, and runs every
// test that needs a running kernel side against it: loading and attaching
// the programs is the slow part, so the package does it once. Where BPF
// cannot be used (and is not required) the agent runs without it and only
// the checks that do not need it run.
func TestKernelSide(t *testing.T) {
	// The fast anomaly policy with max_rps lowered for the hidden-token
	// attack; nothing else here comes near it.
	fast, err := os.ReadFile("testdata/fast-anomaly.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pol := strings.Replace(string(fast), "max_rps: 100", fmt.Sprintf("max_rps: %d", kernelMaxRPS), 1)
	if pol == string(fast) {
		t.Fatal("test edit did not apply to testdata/fast-anomaly.yaml")
	}
	polPath := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(polPath, []byte(pol), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		PolicyPath: polPath, AuthzHTTPAddr: "127.0.0.1:0", AuthzGRPCAddr: "127.0.0.1:0", XDSAddr: "127.0.0.1:0", XDSAuthzAddress: "127.0.0.1:9001",
		MetricsTokenLabels: "id+subject", // the per-token series are checked below
	}
	url, upstream := "", ""
	var served atomic.Int64
	if bpf.Supported() == nil && os.Geteuid() == 0 {
		near, ns := vethToNetns(t)
		lis, err := ns.listen("10.199.77.2:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			served.Add(1)
			io.WriteString(w, "ok")
		})}
		go srv.Serve(lis)
		t.Cleanup(func() { srv.Close() })
		upstream = lis.Addr().String()
		url = "http://" + upstream + "/orders/1"
		cfg.BPF, cfg.BPFInterfaces = kernelpkg.ModeRequired, []string{near}
	} else if requireBPF() {
		t.Fatal("TOKENWARDEN_REQUIRE_BPF=1 but this process cannot use BPF")
	}
	r := startAgentWith(t, cfg)
	// The hidden-token attack first: it needs the veth quiet, and the
	// drop test leaves the dropped request's retransmissions on it.
	t.Run("anomaly counts tokens hidden from the kernel", func(t *testing.T) {
		if upstream == "" {
			t.Skip("needs root and BPF")
		}
		if testing.Short() {
			t.Skip("drives load for seconds")
		}
		testAnomalyCountsTokensHiddenFromTheKernel(t, r, upstream)
	})
	t.Run("drops a revoked token", func(t *testing.T) {
		if url == "" {
			t.Skip("needs root and BPF")
		}
		testKernelDropsRevokedToken(t, r, url, &served)
	})
	t.Run("dashboard and rules use exported metrics", func(t *testing.T) {
		testDashboardAndRulesUseExportedMetrics(t, r)
	})
}

// testKernelDropsRevokedToken: a token revoked through the admin API
// reaches the kernel's revoked map within 100 ms; its next request is
// dropped in the kernel and audited, while another token's requests still
// pass and are counted.
func testKernelDropsRevokedToken(t *testing.T, r runningAgent, url string, served *atomic.Int64) {
	revoked, revokedID := issue(t, r, `{"subject":"leaky","class":"service","scopes":["orders:read"]}`)
	kept, keptID := issue(t, r, `{"subject":"fine","class":"service","scopes":["orders:read"]}`)

	get := func(token string) error {
		// A fresh connection each time: a dropped request must not poison
		// the next one's connection.
		c := &http.Client{Timeout: 400 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	for _, tok := range []string{revoked, kept} {
		if err := get(tok); err != nil {
			t.Fatalf("before revocation: %v", err)
		}
	}

	inMap := r.agent.kernel.Revoked() // other subtests' revoked tokens
	start := time.Now()
	if st, out := call(t, "POST", "http://"+r.AdminAddr+"/v1/tokens/"+revokedID+"/revoke", readToken(t, r.AdminTokenFile), `{"reason":"leaked"}`); st != 201 {
		t.Fatalf("revoke: %d %v", st, out)
	}
	// The API call itself (a durable store write, the audit record) takes
	// what the disk takes; from its answer, when the rule is already in the
	// revocation set, the kernel's map must follow within 100 ms.
	answered := time.Now()
	for r.agent.kernel.Revoked() != inMap+1 {
		if time.Since(answered) > 10*time.Second {
			t.Fatal("revocation never reached the kernel's revoked map")
		}
		time.Sleep(time.Millisecond)
	}
	inKernel, afterAnswer := time.Since(start), time.Since(answered)
	t.Logf("revoke call to kernel revoked map: %s (%s after the API answered)", inKernel, afterAnswer)
	if afterAnswer > 100*time.Millisecond {
		t.Errorf("the kernel's revoked map followed %s after the API answered, want within 100ms", afterAnswer)
	}

	before := served.Load()
	if err := get(revoked); err == nil {
		t.Fatal("request with the revoked token passed the kernel")
	}
	if served.Load() != before {
		t.Fatal("the server saw the revoked token's request")
	}
	if err := get(kept); err != nil {
		t.Fatalf("other token after revocation: %v", err)
	}

	// The drop is audited with the token's id, and the other token's
	// requests are counted per token.
	deadline := time.Now().Add(3 * time.Second)
	for {
		recs, _ := audit.Tail(r.agent.cfg.DataDir+"/audit", 50, audit.Filter{TokenID: revokedID, Action: audit.ActionKernelDrop})
		if len(recs) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no kernel.drop audit record for the revoked token")
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.agent.kernel.Flush() // read the counters now
	_, raw := scrapeNames(t, "http://"+r.MetricsAddr+"/metrics")
	if want := `tokenwarden_kernel_requests_total{subject="fine",token_id="` + keptID + `"}`; !strings.Contains(string(raw), want) {
		t.Errorf("metrics lack %s", want)
	}
}
