//go:build unix

package bolt_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/tokenwarden/tokenwarden/agent/store/bolt"
)

// helperEnv carries the store path to the child process; its presence is
// what makes TestHelperProcess act.
const helperEnv = "TOKENWARDEN_BOLT_HELPER_DB"

// helperMaxWrites stops an orphaned child eventually.
const helperMaxWrites = 100_000

// TestHelperProcess is the child of the crash tests: it writes revocations
// and acknowledges each on stdout ("ack <id>") only after PutRevocation
// returned, as the admin API answers only after the store does.
func TestHelperProcess(t *testing.T) {
	path := os.Getenv(helperEnv)
	if path == "" {
		t.Skip("runs only as the child process of the crash tests")
	}
	s, err := bolt.Open(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for i := range helperMaxWrites {
		r := revocation(fmt.Sprintf("rv_%06d", i))
		if err := s.PutRevocation(context.Background(), r); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		fmt.Printf("ack %s\n", r.ID)
	}
	os.Exit(0)
}

func TestAcknowledgedRevocationsSurviveSIGKILL(t *testing.T) {
	const killAfter = 200
	path := filepath.Join(t.TempDir(), bolt.FileName)
	w := startWriter(t, path)

	var acked []string
	for id := range w.acks {
		acked = append(acked, id)
		if len(acked) == killAfter {
			if err := w.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Acks read after the kill was sent were still made before it: keep them.
	w.wait(t)
	if len(acked) < killAfter {
		t.Fatalf("child acknowledged %d revocations, want at least %d; stderr:\n%s", len(acked), killAfter, w.stderr.String())
	}
	if ws := w.cmd.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, want killed by SIGKILL mid-stream", w.cmd.ProcessState)
	}

	s, err := bolt.Open(path)
	if err != nil {
		t.Fatalf("reopen after crash: %v", err)
	}
	rules, err := s.Revocations(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	stored := make(map[string]bool, len(rules))
	for _, r := range rules {
		stored[r.ID] = true
	}
	for _, id := range acked {
		if !stored[id] {
			t.Errorf("revocation %s was acknowledged but is not stored", id)
		}
	}
	t.Logf("%d acknowledged, %d stored (a write in flight at the kill may or may not be)", len(acked), len(rules))

	checkConsistent(t, path)
}

func TestSecondAgentOnDataDirFailsFast(t *testing.T) {
	path := filepath.Join(t.TempDir(), bolt.FileName)
	w := startWriter(t, path)
	if _, ok := <-w.acks; !ok {
		t.Fatalf("child wrote nothing; stderr:\n%s", w.stderr.String())
	}

	start := time.Now()
	s, err := bolt.Open(path, bolt.WithLockTimeout(200*time.Millisecond))
	if err == nil {
		s.Close()
		t.Fatal("Open succeeded while another process holds the store")
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("Open took %v to fail", elapsed)
	}
	if !errors.Is(err, bolt.ErrInUse) {
		t.Errorf("error = %v, want ErrInUse", err)
	}
	want := "data dir is in use by another tokenwarden"
	if runtime.GOOS == "linux" {
		want += fmt.Sprintf(" (pid %d)", w.cmd.Process.Pid)
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
}

// writer is a child process running TestHelperProcess.
type writer struct {
	cmd    *exec.Cmd
	acks   <-chan string // acknowledged rule ids, closed when stdout closes
	stderr bytes.Buffer
}

func startWriter(t *testing.T, path string) *writer {
	t.Helper()
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	w := &writer{cmd: exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")}
	w.cmd.Env = append(os.Environ(), helperEnv+"="+path)
	w.cmd.Stderr = &w.stderr
	stdout, err := w.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acks := make(chan string)
	go func() {
		defer close(acks)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if id, ok := strings.CutPrefix(sc.Text(), "ack "); ok {
				acks <- id
			}
		}
	}()
	w.acks = acks
	t.Cleanup(func() {
		if w.cmd.ProcessState != nil {
			return
		}
		w.cmd.Process.Kill()
		for range w.acks {
		}
		w.cmd.Wait()
	})
	return w
}

func (w *writer) wait(t *testing.T) {
	t.Helper()
	if err := w.cmd.Wait(); err == nil {
		t.Fatalf("child exited cleanly, want it killed; stderr:\n%s", w.stderr.String())
	}
}

// checkConsistent runs bbolt's own page-level check over the file.
func checkConsistent(t *testing.T, path string) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bbolt.Tx) error {
		for err := range tx.Check() {
			t.Errorf("bbolt check: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
