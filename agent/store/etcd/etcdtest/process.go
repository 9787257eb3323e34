package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Process is a real etcd server in a process of its own (Debian's
// etcd-server, /usr/bin/etcd), for tests that kill it, pause it with
// SIGSTOP and start it again on the same data and ports.
type Process struct {
	Endpoint string // http://127.0.0.1:PORT
	bin, dir string
	args     []string
	cmd      *exec.Cmd
}

// EtcdBinary finds the etcd server binary: $TOKENWARDEN_ETCD, etcd on
// PATH, or /usr/bin/etcd.
func EtcdBinary() (string, error) {
	if p := os.Getenv("TOKENWARDEN_ETCD"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("etcd"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/bin/etcd"); err == nil {
		return "/usr/bin/etcd", nil
	}
	return "", errors.New("no etcd server binary (install etcd-server, or set TOKENWARDEN_ETCD)")
}

// StartProcess runs a single-member etcd with its data in dir and waits
// until it answers.
func StartProcess(dir string) (*Process, error) {
	bin, err := EtcdBinary()
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	client := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	p := &Process{Endpoint: client, bin: bin, dir: dir, args: []string{
		"--name", "tw", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "tw=" + peer, "--logger", "zap", "--log-level", "error",
	}}
	return p, p.Start()
}

// Start starts the server again (after Kill) on the same data and ports,
// and waits until it answers.
func (p *Process) Start() error {
	log, err := os.OpenFile(filepath.Join(p.dir, "etcd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	p.cmd = exec.Command(p.bin, p.args...)
	p.cmd.Stdout, p.cmd.Stderr = log, log
	if err := p.cmd.Start(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return p.WaitReady(ctx)
}

// WaitReady waits until the server answers a linearizable read.
func (p *Process) WaitReady(ctx context.Context) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{p.Endpoint}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	for {
		rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := cli.Get(rctx, "/ready")
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd at %s not ready: %w", p.Endpoint, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Kill kills the server (SIGKILL) and waits for it to exit.
func (p *Process) Kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGCONT) // a stopped process dies too, but say so
	p.cmd.Process.Kill()
	p.cmd.Wait()
	p.cmd = nil
}

// Stop pauses the server (SIGSTOP): its sockets stay open, nothing answers.
func (p *Process) Stop() error { return p.cmd.Process.Signal(syscall.SIGSTOP) }

// Cont resumes a paused server (SIGCONT).
func (p *Process) Cont() error { return p.cmd.Process.Signal(syscall.SIGCONT) }
