package cli

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent"
	"github.com/tokenwarden/tokenwarden/agent/testclock"
)

var update = flag.Bool("update", false, "rewrite cli/testdata/golden and docs/cli.md from this run")

// goldenT0 is the instant the golden agents start at: every time printed
// is this or after it, so outputs are the same on every run.
var goldenT0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// startAgentAt starts a real agent whose clock is clock.
func startAgentAt(t *testing.T, clock *testclock.Clock) agent.Ready {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	readyc := make(chan agent.Ready, 1)
	a, err := agent.New(ctx, agent.Config{
		DataDir: t.TempDir(), PolicyPath: "../deploy/policy.example.yaml", Env: "dev",
		AdminAddr: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now:     clock.Now,
		OnReady: func(r agent.Ready) { readyc <- r },
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; a.Close() })
	select {
	case r := <-readyc:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("agent not ready")
	}
	return agent.Ready{}
}

// scrubber replaces what differs from run to run (random ids, hashes, keys,
// token strings, ports) with stand-ins of the same length and alphabet,
// the same stand-in for the same value throughout a test, so that tables
// stay aligned and outputs stay readable.
type scrubber struct {
	seen map[string]string
	n    map[string]int
}

var scrubPatterns = []struct {
	kind     string
	re       *regexp.Regexp
	alphabet string
	keep     int // leading characters kept (a prefix such as k_)
}{
	{"token", regexp.MustCompile(`tw_[A-Za-z0-9_\-.]+`), "", 0},
	{"port", regexp.MustCompile(`127\.0\.0\.1:[0-9]+`), "", 0},
	{"hash", regexp.MustCompile(`\b[0-9a-f]{64}\b`), "0123456789abcdef", 0},
	{"wire", regexp.MustCompile(`\b[0-9a-f]{16}\b`), "0123456789abcdef", 0},
	{"key", regexp.MustCompile(`\bk_[a-z2-7]{12}\b`), "abcdefghijklmnopqrstuvwxyz234567", 2},
	{"rule", regexp.MustCompile(`\brv_[a-z2-7]{20}\b`), "abcdefghijklmnopqrstuvwxyz234567", 3},
	{"id", regexp.MustCompile(`\b[a-z2-7]{26}\b`), "abcdefghijklmnopqrstuvwxyz234567", 0},
	{"public", regexp.MustCompile(`"public": "[A-Za-z0-9+/]{43}="|public: [A-Za-z0-9+/]{43}=|\b[A-Za-z0-9_\-]{43}\b`), "", 0},
}

func newScrubber() *scrubber { return &scrubber{seen: map[string]string{}, n: map[string]int{}} }

func (s *scrubber) scrub(out string) string {
	for _, p := range scrubPatterns {
		out = p.re.ReplaceAllStringFunc(out, func(v string) string {
			if r, ok := s.seen[v]; ok {
				return r
			}
			s.n[p.kind]++
			var r string
			switch p.kind {
			case "token":
				r = fmt.Sprintf("tw_<token %d>", s.n[p.kind])
			case "port":
				r = "127.0.0.1:9003"
			case "public":
				// The same key in the API's base64 and the table's
				// base64url gets one stand-in.
				b64 := strings.Trim(v[strings.LastIndexAny(v, " ")+1:], `"`)
				raw, err := base64.StdEncoding.DecodeString(b64)
				if err != nil {
					raw, _ = base64.RawURLEncoding.DecodeString(b64)
				}
				name, ok := s.seen[string(raw)]
				if !ok {
					name = fmt.Sprintf("<public key %d>", s.n[p.kind])
					s.seen[string(raw)] = name
				}
				r = strings.Replace(v, b64, name, 1)
			default:
				r = v[:p.keep] + standIn(p.kind, s.n[p.kind], p.alphabet, len(v)-p.keep)
			}
			s.seen[v], s.seen[r] = r, r
			return r
		})
	}
	return out
}

// standIn is a stable string of n characters of alphabet for the i-th
// value of kind.
func standIn(kind string, i int, alphabet string, n int) string {
	var b strings.Builder
	for j := 0; b.Len() < n; j++ {
		sum := sha256.Sum256(fmt.Appendf(nil, "%s/%d/%d", kind, i, j))
		for _, c := range sum {
			if b.Len() == n {
				break
			}
			b.WriteByte(alphabet[int(c)%len(alphabet)])
		}
	}
	return b.String()
}

// golden compares got with testdata/golden/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run `go test ./cli -run %s -update` to write it)", err, t.Name())
	}
	if string(want) != got {
		t.Errorf("%s differs from this run (if the change is meant, run `go test ./cli -run %s -update`):\n--- want\n%s\n--- got\n%s", path, t.Name(), want, got)
	}
}

// TestOutputGolden prints every resource in every -o shape from a real agent
// run at a fixed clock, and compares each with its golden file.
func TestOutputGolden(t *testing.T) {
	clock := testclock.New(goldenT0)
	r := startAgentAt(t, clock)
	t.Setenv(envServer, r.AdminAddr)
	t.Setenv(envAdminTokenFile, r.AdminTokenFile)
	s := newScrubber()
	step := func(args ...string) string {
		t.Helper()
		clock.Add(time.Second)
		out, errOut, code := run(t, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		return out
	}
	// The admin token's id comes first, so that stand-ins are numbered the
	// same on every run.
	s.scrub(step("token", "list", "-o", "json"))
	for _, f := range []string{"json", "yaml"} {
		golden(t, "token-issue."+f, s.scrub(step("token", "issue", "--subject", "ci", "--class", "service", "--scope", "orders:read", "--ttl", "30m", "-o", f)))
	}
	step("token", "issue", "--subject", "orders-api", "--class", "service", "--tenant", "acme")
	bound := strings.Fields(step("token", "issue", "--subject", "deployer", "--class", "ci-bound", "--bind-workload", "spiffe://cluster.local/ns/ci/sa/deployer", "-o", "yaml"))
	var boundID string
	for i, f := range bound {
		if f == "id:" {
			boundID = bound[i+1]
		}
	}
	step("revoke", "--subject", "ci", "--reason", "role change", "--yes")
	step("keys", "rotate")
	for _, f := range []string{"table", "wide", "json", "yaml"} {
		golden(t, "token-list."+f, s.scrub(step("token", "list", "-o", f)))
		golden(t, "token-show."+f, s.scrub(step("token", "show", boundID, "-o", f)))
		golden(t, "keys-list."+f, s.scrub(step("keys", "list", "-o", f)))
		golden(t, "revocations-list."+f, s.scrub(step("revocations", "list", "-o", f)))
		golden(t, "audit-tail."+f, s.scrub(step("audit", "tail", "-n", "8", "-o", f)))
	}
	// --local shows times in the local zone, with its offset.
	defer func(l *time.Location) { localZone = l }(localZone)
	localZone = time.FixedZone("CET", 3600)
	golden(t, "token-list.table-local", s.scrub(step("token", "list", "--local")))
	golden(t, "audit-tail.table-local", s.scrub(step("audit", "tail", "-n", "2", "--local")))
}
