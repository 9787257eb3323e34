package freshness

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/testclock"
)

// store is a Confirm whose answer the test sets: reachable or not, and
// optionally held until released (a confirmation in flight).
type store struct {
	calls   atomic.Int64
	down    atomic.Bool
	hold    chan struct{} // nil: answer at once
	started chan struct{} // receives one value per call, when set
}

func (s *store) confirm(ctx context.Context) error {
	s.calls.Add(1)
	if s.started != nil {
		s.started <- struct{}{}
	}
	if s.hold != nil {
		select {
		case <-s.hold:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if s.down.Load() {
		return errors.New("etcd unreachable")
	}
	return nil
}

func newTracker(t *testing.T, s *store, clk *testclock.Clock, action Action) *Tracker {
	t.Helper()
	tr, err := New(Config{Confirm: s.confirm, MaxStaleness: 2 * time.Second, PollEvery: time.Hour, Action: action, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func TestConfigRefused(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no confirm":         {},
		"negative staleness": {Confirm: (&store{}).confirm, MaxStaleness: -time.Second},
		"unknown action":     {Confirm: (&store{}).confirm, Action: "allow"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestNilTrackerIsAlwaysFresh: the one-node store never goes stale.
func TestNilTrackerIsAlwaysFresh(t *testing.T) {
	var tr *Tracker
	if !tr.Admit() || tr.Err() != nil || tr.Staleness() != 0 || !tr.Confirm() {
		t.Error("a nil Tracker is not always fresh")
	}
	tr.Run(t.Context()) // returns at once
}

// TestFreshWithinTheBound: a confirmed view admits checks without asking
// the store again until the bound, measured from the confirmation's start.
func TestFreshWithinTheBound(t *testing.T) {
	clk := testclock.New(time.Now())
	s := &store{}
	tr := newTracker(t, s, clk, ActionDeny)
	if err := tr.Err(); err == nil || !strings.Contains(err.Error(), "not confirmed yet") {
		t.Errorf("Err before any confirmation = %v", err)
	}
	if !tr.Confirm() {
		t.Fatal("Confirm failed with the store up")
	}
	clk.Add(2*time.Second - time.Nanosecond)
	for range 100 {
		if !tr.Admit() {
			t.Fatal("a fresh view denied a check")
		}
	}
	if n := s.calls.Load(); n != 1 {
		t.Errorf("%d confirmations within the bound, want 1", n)
	}
	if err := tr.Err(); err != nil {
		t.Errorf("Err within the bound = %v", err)
	}
	clk.Add(time.Nanosecond)
	if err := tr.Err(); err == nil {
		t.Error("Err at the bound = nil")
	}
	if !tr.Admit() || s.calls.Load() != 2 {
		t.Errorf("past the bound with the store up: want a confirmation and an allow (calls %d)", s.calls.Load())
	}
	if got := tr.Staleness(); got != 0 {
		t.Errorf("Staleness right after a confirmation = %v", got)
	}
}

// TestPausedProcessNeverAllowsOnStaleRules attacks a node resumed after
// SIGSTOP (or a long GC, a frozen VM): its clock jumped past the bound, and
// its first check must not be decided on the rules it had, whatever the
// stale action, while the store is reachable.
func TestPausedProcessNeverAllowsOnStaleRules(t *testing.T) {
	for _, action := range Actions {
		t.Run(string(action), func(t *testing.T) {
			clk := testclock.New(time.Now())
			s := &store{hold: make(chan struct{}), started: make(chan struct{}, 16)}
			tr := newTracker(t, s, clk, action)
			close(s.hold)
			tr.Confirm()
			<-s.started
			s.hold = make(chan struct{})
			clk.Add(30 * time.Second) // the pause

			admitted := make(chan bool, 1)
			go func() { admitted <- tr.Admit() }()
			<-s.started // the check's confirmation runs...
			select {
			case got := <-admitted:
				t.Fatalf("the first check after the pause was decided (%v) before its confirmation ended", got)
			default:
			}
			close(s.hold) // ... and proves the view current
			if !<-admitted {
				t.Error("denied although the confirmation proved the view current")
			}
		})
	}
}

// TestConfirmationFromBeforeThePauseDoesNotCount: a confirmation that began
// before the pause and ends after it proves nothing about now.
func TestConfirmationFromBeforeThePauseDoesNotCount(t *testing.T) {
	clk := testclock.New(time.Now())
	s := &store{hold: make(chan struct{}), started: make(chan struct{}, 16)}
	tr := newTracker(t, s, clk, ActionDeny)
	go tr.Confirm() // began before the pause
	<-s.started
	clk.Add(30 * time.Second)
	admitted := make(chan bool, 1)
	go func() { admitted <- tr.Admit() }()
	close(s.hold) // the old confirmation ends: fresh until 2s after its start, long past
	<-s.started   // so the check starts another
	if !<-admitted {
		t.Error("denied although a confirmation after the pause proved the view current")
	}
	if n := s.calls.Load(); n != 2 {
		t.Errorf("%d confirmations, want 2", n)
	}
}

// TestStaleAction: past the bound with the store unreachable, deny denies
// and serve serves; /readyz's error says why.
func TestStaleAction(t *testing.T) {
	for action, want := range map[Action]bool{ActionServe: true, ActionDeny: false} {
		t.Run(string(action), func(t *testing.T) {
			clk := testclock.New(time.Now())
			s := &store{}
			tr := newTracker(t, s, clk, action)
			tr.Confirm()
			s.down.Store(true)
			clk.Add(3 * time.Second)
			if got := tr.Admit(); got != want {
				t.Errorf("Admit = %v, want %v", got, want)
			}
			err := tr.Err()
			if err == nil || !strings.Contains(err.Error(), "etcd unreachable") || !strings.Contains(err.Error(), "3s old") {
				t.Errorf("Err = %v, want the age and the last failure", err)
			}
			if tr.Action() != action {
				t.Errorf("Action = %s", tr.Action())
			}
			s.down.Store(false)
			if !tr.Confirm() || !tr.Admit() || tr.Err() != nil {
				t.Error("not fresh again once the store answers")
			}
		})
	}
}

// TestOneConfirmationForABurst: every check that finds the view stale
// shares one confirmation, so a burst of checks does not become a burst of
// quorum reads.
func TestOneConfirmationForABurst(t *testing.T) {
	clk := testclock.New(time.Now())
	s := &store{hold: make(chan struct{}), started: make(chan struct{}, 16)}
	tr := newTracker(t, s, clk, ActionDeny)
	var wg sync.WaitGroup
	var denied atomic.Int64
	for range 50 {
		wg.Go(func() {
			if !tr.Admit() {
				denied.Add(1)
			}
		})
	}
	<-s.started
	close(s.hold)
	wg.Wait()
	if n := s.calls.Load(); n != 1 {
		t.Errorf("%d confirmations for 50 checks, want 1", n)
	}
	if n := denied.Load(); n != 0 {
		t.Errorf("%d checks denied although the confirmation succeeded", n)
	}
}

// TestKnownStaleDoesNotWait: once a confirmation failed, checks are decided
// under the action at once (no ConfirmWait each) until the next poll.
func TestKnownStaleDoesNotWait(t *testing.T) {
	clk := testclock.New(time.Now())
	s := &store{}
	s.down.Store(true)
	tr := newTracker(t, s, clk, ActionServe)
	if tr.Confirm() {
		t.Fatal("confirmed with the store down")
	}
	s.hold = make(chan struct{}) // a confirmation would now hang
	defer close(s.hold)
	start := time.Now()
	for range 20 {
		if !tr.Admit() {
			t.Fatal("serve denied a check")
		}
	}
	if d := time.Since(start); d >= ConfirmWait {
		t.Errorf("20 checks took %v: they waited for confirmations", d)
	}
}

// TestWaitIsBounded: a confirmation that hangs (etcd SIGSTOPped) holds a
// check ConfirmWait at most.
func TestWaitIsBounded(t *testing.T) {
	clk := testclock.New(time.Now())
	s := &store{hold: make(chan struct{})}
	defer close(s.hold)
	tr := newTracker(t, s, clk, ActionDeny)
	start := time.Now()
	if tr.Admit() {
		t.Error("allowed with no confirmation")
	}
	if d := time.Since(start); d < ConfirmWait || d > ConfirmWait+5*time.Second {
		t.Errorf("waited %v, want about %v", d, ConfirmWait)
	}
}

// TestRunKeepsTheViewFresh: the poller confirms at once and then every
// PollEvery.
func TestRunKeepsTheViewFresh(t *testing.T) {
	s := &store{}
	tr, err := New(Config{Confirm: s.confirm, MaxStaleness: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { tr.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for s.calls.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatal("Run does not poll")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}

// BenchmarkAdmitFresh is the hot path's cost: one atomic load, one clock read.
func BenchmarkAdmitFresh(b *testing.B) {
	tr, err := New(Config{Confirm: (&store{}).confirm, MaxStaleness: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	tr.Confirm()
	b.ReportAllocs()
	for b.Loop() {
		if !tr.Admit() {
			b.Fatal("stale")
		}
	}
}

// A node started from a local snapshot is stale from its start, and its
// staleness counts from the snapshot's time, not from the start: the alert
// sees how old the rules really are.
func TestRestoredViewIsStaleFromTheSnapshotTime(t *testing.T) {
	clk := testclock.New(time.Now())
	s := &store{}
	s.down.Store(true)
	tr, err := New(Config{Confirm: s.confirm, MaxStaleness: 2 * time.Second, PollEvery: time.Hour, Action: ActionDeny, Now: clk.Now, ConfirmedAt: clk.Now().Add(-time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if got := tr.Staleness(); got != time.Minute {
		t.Errorf("Staleness = %v, want 1m (the snapshot's age)", got)
	}
	if tr.Admit() {
		t.Error("a restored view admitted a check under deny before any confirmation")
	}
	if tr.Err() == nil {
		t.Error("a restored view reports fresh before any confirmation")
	}
	s.down.Store(false)
	if !tr.Confirm() || tr.Staleness() != 0 || !tr.Admit() {
		t.Errorf("after the store answered: staleness %v, admit %v", tr.Staleness(), tr.Admit())
	}
}
