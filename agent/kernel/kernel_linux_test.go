package kernel

import (
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/bpf"
)

// The BPF objects are loaded once for the package: loading verifies every
// program, which is the slow part of these tests.
var (
	sentryOnce sync.Once
	sentry     *bpf.Sentry
	sentryErr  error
)

func loadedSentry(t *testing.T) *bpf.Sentry {
	t.Helper()
	sentryOnce.Do(func() {
		if sentryErr = bpf.Supported(); sentryErr == nil {
			sentry, sentryErr = bpf.Load(bpf.Config{MaxRevoked: MaxRevoked})
		}
	})
	if sentryErr != nil {
		if os.Getenv("TOKENWARDEN_REQUIRE_BPF") == "1" {
			t.Fatalf("TOKENWARDEN_REQUIRE_BPF=1 but BPF cannot be loaded: %v", sentryErr)
		}
		t.Skipf("needs root and BPF: %v", sentryErr)
	}
	return sentry
}

func TestMain(m *testing.M) {
	code := m.Run()
	if sentry != nil {
		sentry.Close()
	}
	os.Exit(code)
}

// tokens is the replica as the kernel side sees it, counting the work done.
type tokens struct {
	changed chan struct{}
	scans   atomic.Int64
	hashes  []uint64
}

func newTokens(hashes ...uint64) *tokens {
	return &tokens{changed: make(chan struct{}, 1), hashes: hashes}
}

func (x *tokens) Changed() <-chan struct{} { return x.changed }
func (x *tokens) RevokedHashes(time.Time) []uint64 {
	x.scans.Add(1)
	return x.hashes
}
func (x *tokens) Lookup(hash uint64) (string, string, bool) { return "tok", "svc", hash != 0 }

// records keeps what the kernel side audits.
type records struct {
	mu  sync.Mutex
	all []audit.Record
}

func (r *records) Record(rec audit.Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.all = append(r.all, rec)
}

func newKernel(t *testing.T, x *tokens, rec *records, now func() time.Time) *Kernel {
	t.Helper()
	k, err := New(Config{
		Sentry: loadedSentry(t), Tokens: x, Audit: rec, Every: time.Millisecond, Registerer: prometheus.NewRegistry(),
		Now: now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestReconcileOnlyOnChange attacks the per-second full scan: the old
// reconciler listed every known token every second, so a quiet node's cost
// grew with its token count. Quiet ticks must do no revocation work; a
// change does one scan.
func TestReconcileOnlyOnChange(t *testing.T) {
	x := newTokens(42)
	k := newKernel(t, x, &records{}, time.Now)
	ticks := make(chan struct{}, 1000)
	k.afterTick = func() { ticks <- struct{}{} }
	done := make(chan struct{})
	stop := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := contextUntil(stop)
		defer cancel()
		k.Run(ctx)
	}()
	defer func() { close(stop); <-done }()
	for range 50 {
		<-ticks // events, not sleeps: 50 quiet ticks
	}
	if n := x.scans.Load(); n != 1 {
		t.Fatalf("%d scans over 50 quiet ticks, want the 1 at start", n)
	}
	if k.Revoked() != 1 {
		t.Fatalf("revoked map holds %d hashes, want 1", k.Revoked())
	}
	x.changed <- struct{}{}
	deadline := time.After(30 * time.Second)
	for x.scans.Load() != 2 {
		select {
		case <-ticks:
		case <-deadline:
			t.Fatalf("a change made %d scans, want 1 more", x.scans.Load()-1)
		}
	}
}

// TestDropAuditsAreCapped: a flood of kernel drops is audited up to the
// cap, then summarised in one record.
func TestDropAuditsAreCapped(t *testing.T) {
	rec := &records{}
	now := time.Unix(1_900_000_000, 0)
	k := newKernel(t, newTokens(), rec, func() time.Time { return now })
	for range 1000 {
		k.onDrop(bpf.DropEvent{Hash: 42})
	}
	k.flushDropAudit()
	var single, summarised uint64
	for _, r := range rec.all {
		if r.Action != audit.ActionKernelDrop {
			t.Fatalf("unexpected record %+v", r)
		}
		if r.Count > 0 {
			summarised += r.Count
		} else {
			single++
		}
	}
	if single != DropAuditsPerSecond || summarised != 1000-DropAuditsPerSecond {
		t.Fatalf("%d single records and %d summarised drops; want %d and %d", single, summarised, DropAuditsPerSecond, 1000-DropAuditsPerSecond)
	}
}
