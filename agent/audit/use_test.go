package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/testclock"
)

// memLog is an in-memory Appender for UseRecorder tests.
type memLog struct {
	mu      sync.Mutex
	records []Record
}

func (m *memLog) Append(r Record) (Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.records = append(m.records, r)
	return r, nil
}

func (m *memLog) byAction() map[string][]Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string][]Record{}
	for _, r := range m.records {
		out[r.Action] = append(out[r.Action], r)
	}
	return out
}

func TestUseRecorder(t *testing.T) {
	tests := map[string]struct {
		allows      string
		allowCalls  int
		denyCalls   int
		wantActions map[string]int
		wantCount   uint64 // count on the summary or suppressed record
	}{
		"summary sums allows per token": {AllowsSummary, 50, 0, map[string]int{ActionAuthzAllowSummary: 1}, 50},
		"every writes each allow":       {AllowsEvery, 5, 0, map[string]int{ActionAuthzAllow: 5}, 0},
		"denies under the cap":          {AllowsSummary, 0, 10, map[string]int{ActionAuthzDeny: 10}, 0},
		"denies over the cap":           {AllowsSummary, 0, 25, map[string]int{ActionAuthzDeny: 20, ActionDenySuppressed: 1}, 5},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			log := &memLog{}
			now := time.Unix(1_800_000_000, 0)
			u := NewUseRecorder(UseConfig{Log: log, Allows: tc.allows, Interval: time.Hour, DenyPerSecond: 20, DenyPerClient: 100, Now: func() time.Time { return now }})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { u.Run(ctx); close(done) }()
			for i := 0; i < tc.allowCalls; i++ {
				u.Allow("tok1", "svc", "", "orders#0", "10.0.0.1")
			}
			for i := 0; i < tc.denyCalls; i++ {
				u.Deny("expired", "", "", "orders#0", "10.0.0.2")
			}
			cancel() // Run drains the queue and flushes summaries on exit
			<-done
			got := log.byAction()
			for action, n := range tc.wantActions {
				if len(got[action]) != n {
					t.Errorf("%s: %d records, want %d", action, len(got[action]), n)
				}
			}
			for _, action := range []string{ActionAuthzAllowSummary, ActionDenySuppressed} {
				if rs := got[action]; len(rs) == 1 && rs[0].Count != tc.wantCount {
					t.Errorf("%s count %d, want %d", action, rs[0].Count, tc.wantCount)
				}
			}
		})
	}
}

func TestUseRecorderNeverBlocks(t *testing.T) {
	u := NewUseRecorder(UseConfig{Log: &memLog{}, Allows: AllowsEvery, Queue: 4})
	// No Run: the queue fills and the rest are dropped, not waited on.
	for i := 0; i < 10; i++ {
		u.Allow("tok", "s", "", "r", "")
	}
	if d := u.Stats().Dropped; d != 6 {
		t.Fatalf("dropped %d, want 6", d)
	}
}

// TestUseRecorderLosesNoAllowToFlush races allows against flushes that
// retire idle entries: every allow must land in some summary.
func TestUseRecorderLosesNoAllowToFlush(t *testing.T) {
	log := &memLog{}
	u := NewUseRecorder(UseConfig{Log: log, Interval: time.Hour})
	const workers, each = 4, 2000
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				u.Allow("tok", "svc", "", "r", "")
			}
		}()
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			default:
				u.Flush()
			}
		}
	}()
	wg.Wait()
	close(done)
	u.Flush()
	var total uint64
	for _, r := range log.byAction()[ActionAuthzAllowSummary] {
		total += r.Count
	}
	if total != workers*each {
		t.Fatalf("summaries count %d allows, want %d", total, workers*each)
	}
}

// TestDenyBudgetPerClient floods denies from one client and from many: the
// noisy client is held to its budget without using up the others', every
// suppressed deny is counted in one summary record and in Stats, and a
// flood from more clients than are tracked is suppressed, not written.
func TestDenyBudgetPerClient(t *testing.T) {
	tests := map[string]struct {
		denies         func(u *UseRecorder)
		wantDenies     int
		wantSuppressed uint64
		wantClient     uint64
		wantNode       uint64
	}{
		"one noisy client, one quiet": {
			denies: func(u *UseRecorder) {
				for range 1000 {
					u.Deny("invalid_token", "", "", "r", "10.0.0.66:4000")
				}
				u.Deny("invalid_token", "", "", "r", "10.0.0.7:5000")
			},
			wantDenies: 11, wantSuppressed: 990, wantClient: 990,
		},
		"ports do not make new clients": {
			denies: func(u *UseRecorder) {
				for port := range 100 {
					u.Deny("invalid_token", "", "", "r", fmt.Sprintf("[::ffff:10.0.0.66]:%d", 1000+port))
				}
			},
			wantDenies: 10, wantSuppressed: 90, wantClient: 90,
		},
		"many clients hit the node budget": {
			denies: func(u *UseRecorder) {
				for i := range 300 {
					u.Deny("invalid_token", "", "", "r", fmt.Sprintf("10.1.%d.%d", i/256, i%256))
				}
			},
			wantDenies: 200, wantSuppressed: 100, wantNode: 100,
		},
		"forged X-Forwarded-For values past the tracked clients": {
			denies: func(u *UseRecorder) {
				for i := range maxDenyClients + 50 {
					u.Deny("invalid_token", "", "", "r", fmt.Sprintf("forged-%d-%s", i, strings.Repeat("x", 1<<10)))
				}
			},
			wantDenies: 200, wantSuppressed: maxDenyClients + 50 - 200, wantNode: maxDenyClients + 50 - 200,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			log := &memLog{}
			now := time.Unix(1_800_000_000, 0)
			u := NewUseRecorder(UseConfig{Log: log, Interval: time.Hour, Queue: 1 << 14, Now: func() time.Time { return now }})
			tc.denies(u)
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			u.Run(ctx) // drains the queue and flushes
			got := log.byAction()
			if n := len(got[ActionAuthzDeny]); n != tc.wantDenies {
				t.Errorf("%d deny records, want %d", n, tc.wantDenies)
			}
			sup := got[ActionDenySuppressed]
			if len(sup) != 1 || sup[0].Count != tc.wantSuppressed {
				t.Fatalf("suppressed records %+v, want one counting %d", sup, tc.wantSuppressed)
			}
			if s := u.Stats(); s.SuppressedClient != tc.wantClient || s.SuppressedGlobal != tc.wantNode {
				t.Errorf("stats %+v, want client %d node %d", s, tc.wantClient, tc.wantNode)
			}
		})
	}
}

type refusingLog struct{}

func (refusingLog) Append(Record) (Record, error) { return Record{}, errors.New("disk full") }

// lines counts the log lines a handler saw and keeps their attributes.
type lines struct {
	mu    sync.Mutex
	attrs []map[string]any
}

func (l *lines) Enabled(context.Context, slog.Level) bool { return true }
func (l *lines) Handle(_ context.Context, r slog.Record) error {
	m := map[string]any{}
	r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.Any(); return true })
	l.mu.Lock()
	defer l.mu.Unlock()
	l.attrs = append(l.attrs, m)
	return nil
}
func (l *lines) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *lines) WithGroup(string) slog.Handler      { return l }

// TestEveryWriteFailureIsLogged attacks the old "only the first failure is
// logged": after one failed write, a disk that stayed full lost every
// later record in silence. Each second with failures gets a line, which
// says how many failed and how many went unlogged since the last.
func TestEveryWriteFailureIsLogged(t *testing.T) {
	clock := testclock.New(time.Unix(1_900_000_000, 0))
	h := &lines{}
	u := NewUseRecorder(UseConfig{Log: refusingLog{}, Now: clock.Now, Logger: slog.New(h)})
	for range 5 {
		u.write(Record{Action: ActionAuthzDeny, Actor: ActorSystem})
	}
	clock.Add(time.Second)
	for range 3 {
		u.write(Record{Action: ActionAuthzDeny, Actor: ActorSystem})
	}
	if len(h.attrs) != 2 {
		t.Fatalf("%d log lines for failures in two seconds, want 2", len(h.attrs))
	}
	if got := h.attrs[1]["failed_total"]; got != uint64(6) {
		t.Errorf("second line failed_total = %v, want 6", got)
	}
	if got := h.attrs[1]["unlogged_since_last"]; got != uint64(4) {
		t.Errorf("second line unlogged_since_last = %v, want 4", got)
	}
}

// A sender_mismatch names both identities: whose token it was, and who
// presented it; a huge peer identity is cut to a SPIFFE ID's length.
func TestDenySenderRecordsBothIdentities(t *testing.T) {
	log := &memLog{}
	u := NewUseRecorder(UseConfig{Log: log, Interval: time.Hour, DenyPerSecond: 20, DenyPerClient: 100})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { u.Run(ctx); close(done) }()
	u.DenySender("tok1", "ci", "orders#0", "10.0.0.9", "spiffe://td/ns/ci/sa/deployer", "spiffe://td/ns/ci/sa/intruder")
	u.DenySender("tok1", "ci", "orders#0", "10.0.0.9", "spiffe://td/ns/ci/sa/deployer", strings.Repeat("x", 10000))
	cancel()
	<-done
	rs := log.byAction()[ActionAuthzDeny]
	if len(rs) != 2 {
		t.Fatalf("%d deny records, want 2", len(rs))
	}
	var m map[string]string
	if err := json.Unmarshal(rs[0].Details, &m); err != nil {
		t.Fatal(err)
	}
	if rs[0].Reason != "sender_mismatch" || rs[0].TokenID != "tok1" || m["bound"] != "spiffe://td/ns/ci/sa/deployer" || m["peer"] != "spiffe://td/ns/ci/sa/intruder" {
		t.Fatalf("record %+v details %s", rs[0], rs[0].Details)
	}
	if err := json.Unmarshal(rs[1].Details, &m); err != nil || len(m["peer"]) != maxPeerBytes {
		t.Fatalf("peer kept %d bytes, want %d", len(m["peer"]), maxPeerBytes)
	}
}
