//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpf

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// helperEnv, when set to "http-server", makes the test binary run
// runHelperServer instead of the tests.
const helperEnv = "TOKENWARDEN_BPF_TEST_HELPER"

// runHelperServer serves HTTP on an ephemeral loopback port, prints the
// address on stdout and exits when stdin closes (the test ended or died).
func runHelperServer() {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr())
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok"))
	}))
	_, _ = io.Copy(io.Discard, os.Stdin)
}

// cgroup2Mount returns where the cgroup v2 hierarchy is mounted.
func cgroup2Mount() (string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		// ... mount-point ... - fstype source options
		pre, post, ok := strings.Cut(line, " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		if f := strings.Fields(pre); len(f) >= 5 {
			return f[4], nil
		}
	}
	return "", fmt.Errorf("no cgroup2 mount in /proc/self/mountinfo")
}

// TestAttachCgroup attaches the cgroup_skb ingress program to a cgroup the
// test creates, starts an HTTP server inside it (a child process placed
// there at clone time) and talks to it over loopback. Only the child's
// sockets are in the cgroup, so nothing else on the machine is affected.
func TestAttachCgroup(t *testing.T) {
	s := loadSentry(t, Config{})
	root, err := cgroup2Mount()
	if err != nil {
		skipOrFail(t, "cgroup v2 is not mounted: %v", err)
	}
	dir := filepath.Join(root, "tokenwarden-bpf-test-"+randomHex(t, 4))
	if err := os.Mkdir(dir, 0o755); err != nil {
		skipOrFail(t, "cannot create a cgroup: %v", err)
	}
	t.Cleanup(func() {
		// The child leaves the cgroup a moment after it exits.
		deadline := time.Now().Add(2 * time.Second)
		for {
			err := os.Remove(dir)
			if err == nil || time.Now().After(deadline) {
				if err != nil {
					t.Errorf("remove cgroup %s: %v", dir, err)
				}
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	if err := s.AttachCgroup(dir); err != nil {
		t.Fatal(err)
	}

	cg, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(cg)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=http-server")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cg}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		skipOrFail(t, "cannot start a process in a new cgroup: %v", err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("helper server: %v", err)
	}
	url := "http://" + strings.TrimSpace(addr) + "/"
	events := collectEvents(t, s)

	const alice, mallory = "tw_cg.x.alice", "tw_cg.x.mallory"
	c := &http.Client{Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	for i := range 4 {
		if err := get(c, url, alice); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if got := readCounts(t, s)[HashToken(alice)]; got.Requests != 4 {
		t.Errorf("alice: %+v, want 4 requests", got)
	}

	if err := s.Revoke(HashToken(mallory)); err != nil {
		t.Fatal(err)
	}
	mc := &http.Client{Timeout: 500 * time.Millisecond, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return c, c.(*net.TCPConn).SetLinger(0)
		},
	}}
	defer mc.CloseIdleConnections()
	if err := get(mc, url, mallory); err == nil {
		t.Error("request with a revoked token succeeded")
	}
	ev := waitEvent(t, events, time.Second)
	if ev.Hash != HashToken(mallory) || ev.Hook != HookCgroupIngress || ev.Dst.String() != strings.TrimSpace(addr) {
		t.Errorf("event %+v", ev)
	}
	if err := get(c, url, alice); err != nil {
		t.Errorf("alice after the revocation: %v", err)
	}
}
