package agent

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/bpf"
)

// requireBPF reports whether BPF tests must run: TOKENWARDEN_REQUIRE_BPF=1
// (set by CI) turns every skip for lack of privilege into a failure.
func requireBPF() bool { return os.Getenv("TOKENWARDEN_REQUIRE_BPF") == "1" }

// dummyInterface creates a veth pair (no addresses, no traffic) for the
// kernel side to attach to and returns one end's name, or "" when BPF
// cannot be used here (and is not required).
func dummyInterface(t *testing.T) string {
	t.Helper()
	if err := bpf.Supported(); err != nil {
		if requireBPF() {
			t.Fatalf("TOKENWARDEN_REQUIRE_BPF=1 but BPF is unsupported: %v", err)
		}
		return ""
	}
	name := fmt.Sprintf("twdum%d", os.Getpid()%100000)
	if out, err := exec.Command("ip", "link", "add", name, "type", "veth", "peer", "name", name+"p").CombinedOutput(); err != nil {
		if requireBPF() {
			t.Fatalf("create veth pair: %v: %s", err, out)
		}
		t.Logf("no veth pair (%v: %s); kernel side not tested here", err, out)
		return ""
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", name).Run() })
	if out, err := exec.Command("ip", "link", "set", name, "up").CombinedOutput(); err != nil {
		t.Fatalf("set %s up: %v: %s", name, err, out)
	}
	return name
}

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

// TestKernelDropsRevokedToken runs the agent with the kernel side attached
// to a veth whose far end is in a namespace with a real HTTP server. A
// token revoked through the admin API reaches the kernel's revoked map
// within 100 ms; its next request is dropped in the kernel and audited,
// while another token's requests still pass and are counted.
func TestKernelDropsRevokedToken(t *testing.T) {
	if bpf.Supported() != nil || os.Geteuid() != 0 {
		if requireBPF() {
			t.Fatal("TOKENWARDEN_REQUIRE_BPF=1 but this process cannot use BPF")
		}
		t.Skip("needs root and BPF")
	}
	near, ns := vethToNetns(t)
	lis, err := ns.listen("10.199.77.2:0")
	if err != nil {
		t.Fatal(err)
	}
	var served atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		io.WriteString(w, "ok")
	})}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	url := "http://" + lis.Addr().String() + "/orders/1"

	r := startAgentWith(t, Config{BPF: BPFRequired, BPFInterfaces: []string{near}})
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

	start := time.Now()
	if st, out := call(t, "POST", "http://"+r.AdminAddr+"/v1/tokens/"+revokedID+"/revoke", readToken(t, r.AdminTokenFile), `{"reason":"leaked"}`); st != 201 {
		t.Fatalf("revoke: %d %v", st, out)
	}
	for r.agent.kernel.revoked.Load() != 1 {
		if time.Since(start) > time.Second {
			t.Fatal("revocation never reached the kernel's revoked map")
		}
		time.Sleep(time.Millisecond)
	}
	inKernel := time.Since(start)
	t.Logf("revoke call to kernel revoked map: %s", inKernel)
	if inKernel > 100*time.Millisecond {
		t.Errorf("revocation took %s to reach the kernel, want within 100ms", inKernel)
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
	time.Sleep(kernelEvery + 200*time.Millisecond) // one counter read
	r.agent.kernel.requests.Flush()
	_, raw := scrapeNames(t, "http://"+r.MetricsAddr+"/metrics")
	if want := `tokenwarden_kernel_requests_total{subject="fine",token_id="` + keptID + `"}`; !strings.Contains(string(raw), want) {
		t.Errorf("metrics lack %s", want)
	}
}
