package cli

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// envRunCLI makes the test binary run the command line in its arguments as
// tokenwarden itself: tests start the real process (serve, with its
// signals and its grpc logger) without building another binary.
const envRunCLI = "TOKENWARDEN_TEST_RUN_CLI"

func TestMain(m *testing.M) {
	if os.Getenv(envRunCLI) == "1" {
		os.Args = append([]string{"tokenwarden"}, os.Args[1:]...)
		os.Exit(Execute())
	}
	// The tests' own configuration: none, whatever the user running them
	// has in ~/.config or in the environment.
	dir, err := os.MkdirTemp("", "tokenwarden-cli-test")
	if err != nil {
		panic(err)
	}
	os.Setenv(envConfig, filepath.Join(dir, "config.yaml"))
	os.Unsetenv(envContext)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// tokenwardenProcess is a command running the test binary as tokenwarden.
func tokenwardenProcess(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), envRunCLI+"=1")
	return cmd
}

// TestServeJSONLogsEveryLine starts the real serve with --log-format json,
// lets it serve, stops it with SIGTERM, and checks that every line it wrote
// on stderr is a JSON record: the start-up summary is one record and no
// banner is printed. A start refused for a bad flag ends with a JSON
// record too, and still exits 2.
func TestServeJSONLogsEveryLine(t *testing.T) {
	dir := t.TempDir()
	cmd := tokenwardenProcess(t, "serve", "--data-dir", filepath.Join(dir, "data"), "--policy", "../deploy/policy.example.yaml", "--env", "dev",
		"--log-format", "json", "--bpf", "off", "--admin", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--authz-grpc", "127.0.0.1:0",
		"--authz-http", "127.0.0.1:0", "--xds", "127.0.0.1:0", "--xds-authz-address", "127.0.0.1:9001")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stdout strings.Builder
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var all []string
	ready := false
	deadline := time.After(60 * time.Second)
	for !ready {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("serve ended before it was ready:\n%s", strings.Join(all, "\n"))
			}
			all = append(all, l)
			ready = strings.Contains(l, `"msg":"tokenwarden agent ready"`)
		case <-deadline:
			t.Fatalf("serve not ready in 60s:\n%s", strings.Join(all, "\n"))
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for l := range lines {
		all = append(all, l)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("serve after SIGTERM: %v", err)
	}
	wantJSONLines(t, all)
	t.Logf("%d lines on stderr, all JSON", len(all))
	var summary map[string]any
	for _, l := range all {
		if strings.Contains(l, `"msg":"tokenwarden agent ready"`) {
			json.Unmarshal([]byte(l), &summary)
		}
	}
	listeners, _ := summary["listeners"].(map[string]any)
	if listeners["admin"] == nil || summary["env"] != "dev" || summary["admin_token_file"] == nil {
		t.Errorf("start-up summary %v: want the environment, every listener and the admin token file", summary)
	}
	if stdout.Len() != 0 {
		t.Errorf("serve wrote on stdout: %q", stdout.String())
	}

	// A refused start: the error is a record as well.
	bad := tokenwardenProcess(t, "serve", "--data-dir", filepath.Join(dir, "bad"), "--policy", "../deploy/policy.example.yaml", "--env", "dev",
		"--log-format", "json", "--store", "postgres")
	out, err := bad.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitUsage {
		t.Errorf("bad --store: %v, want exit %d", err, exitUsage)
	}
	lines2 := strings.Split(strings.TrimSpace(string(out)), "\n")
	wantJSONLines(t, lines2)
	if !strings.Contains(string(out), "--store") {
		t.Errorf("the refusal does not name the flag:\n%s", out)
	}
}

func wantJSONLines(t *testing.T, lines []string) {
	t.Helper()
	if len(lines) == 0 {
		t.Fatal("no lines on stderr")
	}
	for i, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil || rec["msg"] == nil || rec["level"] == nil {
			t.Errorf("stderr line %d is not a JSON log record (%v): %q", i+1, err, l)
		}
	}
}
