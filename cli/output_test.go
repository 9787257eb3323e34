package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestJSONAliasAndFollow: the deprecated --json is -o json (and says so);
// audit tail -f -o json prints one JSON record per line as records come.
func TestJSONAliasAndFollow(t *testing.T) {
	r := startAgent(t)
	t.Setenv(envServer, r.AdminAddr)
	t.Setenv(envAdminTokenFile, r.AdminTokenFile)
	out, errOut, code := run(t, "token", "list", "--json")
	var list struct {
		Items []map[string]any `json:"items"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list.Items) != 1 || !strings.Contains(errOut, "deprecated") {
		t.Fatalf("--json: exit %d: %s %s", code, out, errOut)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lines := &lineWriter{want: 3, done: cancel}
	root := newRootCommand()
	root.SetOut(lines)
	root.SetErr(&bytes.Buffer{})
	root.SetArgs([]string{"audit", "tail", "-f", "-n", "2", "-o", "json"})
	ended := make(chan error, 1)
	go func() { _, err := root.ExecuteContextC(ctx); ended <- err }()
	// Two records of the backlog (the agent subscribes the stream before
	// it reads them), then one written while following.
	for deadline := time.Now().Add(30 * time.Second); strings.Count(lines.String(), "\n") < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no backlog: %q", lines.String())
		}
	}
	if _, errOut, code := run(t, "token", "issue", "--subject", "followed", "--class", "service"); code != 0 {
		t.Fatal(errOut)
	}
	select {
	case err := <-ended:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("audit tail -f printed %q", lines.String())
	}
	got := strings.Split(strings.TrimSpace(lines.String()), "\n")
	if len(got) < 3 {
		t.Fatalf("lines %q", got)
	}
	for _, l := range got {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil || rec["seq"] == nil {
			t.Errorf("line %q is not one JSON record", l)
		}
	}
	if !strings.Contains(got[2], `"subject":"followed"`) {
		t.Errorf("followed record %s", got[2])
	}
}

// lineWriter calls done once it holds want lines.
type lineWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want int
	done func()
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if bytes.Count(w.buf.Bytes(), []byte("\n")) >= w.want {
		w.done()
	}
	return len(p), nil
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
