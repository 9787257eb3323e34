package etcd

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/store/etcd/etcdtest"
	"github.com/tokenwarden/tokenwarden/agent/store/storetest"
	"github.com/tokenwarden/tokenwarden/policy"
)

// testEndpoints are the client URLs of the one etcd server that TestMain
// runs in-process for the whole package.
var testEndpoints []string

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "tokenwarden-etcd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	e, endpoints, err := etcdtest.Start(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "start embedded etcd:", err)
		return 1
	}
	defer e.Close()
	testEndpoints = endpoints
	return m.Run()
}

var prefixes atomic.Int64

// freshPrefix gives each test its own part of the shared cluster.
func freshPrefix() string {
	return fmt.Sprintf("/tokenwarden-test/%d/", prefixes.Add(1))
}

// openTest opens a store under prefix and closes it when the test ends.
func openTest(t *testing.T, cfg Config) *Store {
	t.Helper()
	if cfg.Endpoints == nil {
		cfg.Endpoints = testEndpoints
	}
	if cfg.Prefix == "" {
		cfg.Prefix = freshPrefix()
	}
	s, err := Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// rawClient talks to the test cluster directly, as another program would.
func rawClient(t *testing.T) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: testEndpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openTest(t, Config{}) })
}

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func revocation(id string) policy.Revocation {
	return policy.Revocation{
		ID: id, Kind: policy.RevokeToken, Target: "tok_a", EffectiveAt: t0,
		Expires: t0.Add(24 * time.Hour), Reason: "leaked", Actor: "tok_admin", CreatedAt: t0,
	}
}

func tokenRecord(id string) store.TokenRecord {
	return store.TokenRecord{
		ID: id, Subject: "svc-orders", Class: "ci-deploy", Env: "prod", Scopes: []string{"deploy:write"},
		KeyID: "k1", IssuedAt: t0, ExpiresAt: t0.Add(time.Hour),
		LeakHash: sha256.Sum256([]byte("tw_" + id)), WireHash: 42, Status: store.TokenActive, Actor: "system",
	}
}

// watchSeesPut checks that a new Watch on s gets the put of revocation id.
func watchSeesPut(t *testing.T, s *Store, id string) {
	t.Helper()
	ctx := t.Context()
	events, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutRevocation(ctx, revocation(id)); err != nil {
		t.Fatal(err)
	}
	if got := storetest.Describe(storetest.NextEvent(t, events, 5*time.Second)); got != "put revocation "+id {
		t.Errorf("event = %s, want put revocation %s", got, id)
	}
}

func noEvent(t *testing.T, ch <-chan store.Event, d time.Duration) {
	t.Helper()
	select {
	case ev, ok := <-ch:
		t.Fatalf("got %+v (open %v), want nothing", ev, ok)
	case <-time.After(d):
	}
}

// Two agents on one cluster: a revocation made through one is enforced by
// the other, through its Watch, within a second.
func TestRevocationReachesOtherNode(t *testing.T) {
	prefix := freshPrefix()
	a := openTest(t, Config{Prefix: prefix})
	b := openTest(t, Config{Prefix: prefix})
	ctx := t.Context()
	events, err := b.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}

	r := revocation("rv_remote")
	start := time.Now()
	if err := a.PutRevocation(ctx, r); err != nil {
		t.Fatal(err)
	}
	ev := storetest.NextEvent(t, events, time.Second)
	t.Logf("revocation reached the other node's watch %v after the write began", time.Since(start))
	if ev.Kind != store.EventRevocation || ev.Deleted || ev.Revocation == nil || !reflect.DeepEqual(*ev.Revocation, r) {
		t.Fatalf("event = %+v, want put of %+v", ev, r)
	}

	// The other node reads it back, and a delete carries the removed rule.
	rules, err := b.Revocations(ctx)
	if err != nil || len(rules) != 1 || !reflect.DeepEqual(rules[0], r) {
		t.Fatalf("Revocations on the other node = %v, %v; want [%s]", rules, err, r.ID)
	}
	if err := a.DeleteRevocation(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	ev = storetest.NextEvent(t, events, time.Second)
	if ev.Kind != store.EventRevocation || !ev.Deleted || ev.Revocation == nil || !reflect.DeepEqual(*ev.Revocation, r) {
		t.Fatalf("event = %+v, want delete of %+v", ev, r)
	}

	// A token issued on one node is found by its leak hash on the other.
	tok := tokenRecord("tok_remote")
	if err := a.PutToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if got, err := b.TokenByLeakHash(ctx, tok.LeakHash); err != nil || got.ID != tok.ID {
		t.Fatalf("TokenByLeakHash on the other node = %v, %v; want %s", got.ID, err, tok.ID)
	}
	if ev := storetest.NextEvent(t, events, time.Second); ev.Kind != store.EventToken || ev.Token.ID != tok.ID {
		t.Fatalf("event = %+v, want put of token %s", ev, tok.ID)
	}
}

// Token writes move the leak index in the same transaction, and the index
// keys produce no events of their own.
func TestLeakIndexMakesNoEvents(t *testing.T) {
	s := openTest(t, Config{})
	ctx := t.Context()
	events, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tok := tokenRecord("tok_a")
	if err := s.PutToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	tok.LeakHash = sha256.Sum256([]byte("tw_tok_a_again"))
	if err := s.PutToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.PutRevocation(ctx, revocation("rv_marker")); err != nil {
		t.Fatal(err)
	}
	var got []string
	for range 4 {
		ev := storetest.NextEvent(t, events, 5*time.Second)
		got = append(got, storetest.Describe(ev))
		if ev.Kind == store.EventToken && ev.Deleted && ev.Token.LeakHash != tok.LeakHash {
			t.Errorf("delete event carries leak hash %x, want the removed record's %x", ev.Token.LeakHash[:4], tok.LeakHash[:4])
		}
	}
	want := []string{"put token tok_a", "put token tok_a", "delete token tok_a", "put revocation rv_marker"}
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Errorf("events = %v, want %v", got, want)
	}
	noEvent(t, events, 100*time.Millisecond)

	resp, err := s.cli.Get(ctx, s.prefix+nsLeak, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 0 {
		t.Errorf("%d leak index entries left after the token was deleted, want 0", resp.Count)
	}
}

func TestLeakHashOwnedByAnotherTokenIsRefused(t *testing.T) {
	s := openTest(t, Config{})
	ctx := t.Context()
	a := tokenRecord("tok_a")
	if err := s.PutToken(ctx, a); err != nil {
		t.Fatal(err)
	}
	b := tokenRecord("tok_b")
	b.LeakHash = a.LeakHash
	err := s.PutToken(ctx, b)
	if err == nil || !strings.Contains(err.Error(), "already belongs to token tok_a") {
		t.Fatalf("PutToken with another token's leak hash: error = %v", err)
	}
	if _, err := s.Token(ctx, b.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("refused token was stored: Token error = %v", err)
	}
	if got, err := s.TokenByLeakHash(ctx, a.LeakHash); err != nil || got.ID != a.ID {
		t.Errorf("TokenByLeakHash = %v, %v; want tok_a", got.ID, err)
	}
}

// Many writers racing on one token keep record and index consistent.
func TestConcurrentPutTokenKeepsIndexConsistent(t *testing.T) {
	prefix := freshPrefix()
	a := openTest(t, Config{Prefix: prefix})
	b := openTest(t, Config{Prefix: prefix})
	ctx := t.Context()
	errs := make(chan error, 20)
	for i := range 20 {
		s := a
		if i%2 == 1 {
			s = b
		}
		go func() {
			tok := tokenRecord("tok_a")
			tok.LeakHash = sha256.Sum256(fmt.Appendf(nil, "tw_tok_a_%d", i))
			errs <- s.PutToken(ctx, tok)
		}()
	}
	for range 20 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	final, err := a.Token(ctx, "tok_a")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := a.cli.Get(ctx, prefix+nsLeak, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Key) != a.leakKey(final.LeakHash) || string(resp.Kvs[0].Value) != "tok_a" {
		var keys []string
		for _, kv := range resp.Kvs {
			keys = append(keys, string(kv.Key))
		}
		t.Fatalf("leak index = %v, want only the final record's hash", keys)
	}
}

func TestSlowWatcherIsDropped(t *testing.T) {
	s := openTest(t, Config{WatchBuffer: 2})
	ctx := t.Context()
	slow, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fast, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := s.PutRevocation(ctx, revocation(fmt.Sprintf("rv_%d", i))); err != nil {
			t.Fatal(err)
		}
		if got := storetest.Describe(storetest.NextEvent(t, fast, 5*time.Second)); got != fmt.Sprintf("put revocation rv_%d", i) {
			t.Fatalf("fast watcher got %s", got)
		}
	}
	n := 0
	for range slow {
		n++
	}
	if n > 2 {
		t.Errorf("slow watcher got %d events before it was dropped, want at most its buffer (2)", n)
	}

	// A new watch works, and the fast watcher was not disturbed.
	again, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutRevocation(ctx, revocation("rv_after")); err != nil {
		t.Fatal(err)
	}
	for _, ch := range []<-chan store.Event{again, fast} {
		if got := storetest.Describe(storetest.NextEvent(t, ch, 5*time.Second)); got != "put revocation rv_after" {
			t.Errorf("event = %s, want put revocation rv_after", got)
		}
	}
}

// When etcd ends the watch (here cancelled, as a member that lost its
// leader does), every watcher's channel closes so the agent reloads; the
// store starts a new etcd watch and a new Watch gets later changes.
func TestWatchersCloseWhenEtcdWatchEnds(t *testing.T) {
	s := openTest(t, Config{})
	ctx := t.Context()
	events, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.session.cancel()
	s.mu.Unlock()
	storetest.WaitClosed(t, events, 5*time.Second)

	watchSeesPut(t, s, "rv_after_restart")
}

// When the history the store would resume from was compacted away, the new
// etcd watch starts at the current revision instead, and Watch works again.
func TestWatchRecoversFromCompaction(t *testing.T) {
	defer func(d time.Duration) { minRestartDelay = d }(minRestartDelay)
	minRestartDelay = 300 * time.Millisecond
	s := openTest(t, Config{})
	ctx := t.Context()
	events, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.session.cancel()
	s.mu.Unlock()
	storetest.WaitClosed(t, events, 5*time.Second)

	// Before the store resumes, history moves on and is compacted.
	raw := rawClient(t)
	var rev int64
	for i := range 3 {
		resp, err := raw.Put(ctx, fmt.Sprintf("%sunrelated/%d", s.prefix, i), "x")
		if err != nil {
			t.Fatal(err)
		}
		rev = resp.Header.Revision
	}
	if _, err := raw.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		from := int64(0)
		if s.session != nil {
			from = s.session.from
		}
		s.mu.Unlock()
		if from > rev {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd watch did not restart past the compaction at %d (at %d)", rev, from)
		}
		time.Sleep(20 * time.Millisecond)
	}
	watchSeesPut(t, s, "rv_after_compaction")
}

// A compacted or cancelled etcd watch response ends the session.
func TestConsumeEndsOnCompactionAndCancel(t *testing.T) {
	s := &Store{ctx: context.Background(), watchers: map[*watcher]struct{}{}}
	for name, resp := range map[string]clientv3.WatchResponse{
		"compacted": {CompactRevision: 42},
		"cancelled": {Canceled: true},
	} {
		t.Run(name, func(t *testing.T) {
			ch := make(chan clientv3.WatchResponse, 1)
			ch <- resp
			_, err := s.consume(ch, 1)
			if err == nil {
				t.Fatal("consume returned nil")
			}
			t.Log(err)
			// run restarts from the current revision only on ErrCompacted.
			if compacted := errors.Is(err, rpctypes.ErrCompacted); compacted != (name == "compacted") {
				t.Errorf("errors.Is(%v, ErrCompacted) = %v", err, compacted)
			}
		})
	}
	ch := make(chan clientv3.WatchResponse)
	close(ch)
	if _, err := s.consume(ch, 1); !errors.Is(err, errWatchClosed) {
		t.Errorf("closed watch channel: error = %v, want errWatchClosed", err)
	}
}

// A value under the prefix that tokenwarden did not write is an error for
// the read that meets it, and is skipped by Watch, which keeps delivering.
func TestForeignValue(t *testing.T) {
	s := openTest(t, Config{})
	ctx := t.Context()
	events, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	raw := rawClient(t)
	if _, err := raw.Put(ctx, s.prefix+nsRevocations+"junk", "not json"); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Put(ctx, s.prefix+"unrelated/x", "whatever"); err != nil {
		t.Fatal(err)
	}
	if err := s.PutRevocation(ctx, revocation("rv_good")); err != nil {
		t.Fatal(err)
	}
	if got := storetest.Describe(storetest.NextEvent(t, events, 5*time.Second)); got != "put revocation rv_good" {
		t.Errorf("event = %s, want put revocation rv_good", got)
	}
	if _, err := s.Revocations(ctx); err == nil || !strings.Contains(err.Error(), "revocations/junk") {
		t.Errorf("Revocations with a foreign value: error = %v, want one naming the key", err)
	}
	if _, err := raw.Put(ctx, s.prefix+nsKeys+"huge", strings.Repeat("x", store.MaxRecordSize+1)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Keys(ctx); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("Keys with an oversized value: error = %v, want the size limit", err)
	}
}

func TestPrefixesAreSeparate(t *testing.T) {
	a := openTest(t, Config{})
	b := openTest(t, Config{})
	ctx := t.Context()
	events, err := b.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.PutRevocation(ctx, revocation("rv_a")); err != nil {
		t.Fatal(err)
	}
	if rules, err := b.Revocations(ctx); err != nil || len(rules) != 0 {
		t.Errorf("other prefix sees %v, %v", rules, err)
	}
	noEvent(t, events, 200*time.Millisecond)
}

func TestRecordSizeIsBounded(t *testing.T) {
	s := openTest(t, Config{})
	r := revocation("rv_big")
	r.Reason = strings.Repeat("x", store.MaxRecordSize)
	if err := s.PutRevocation(t.Context(), r); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("PutRevocation of an oversized rule: error = %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadEndpoint := "http://" + l.Addr().String()
	l.Close() // nothing listens there now
	tests := map[string]struct {
		cfg  Config
		want []string
	}{
		"no endpoints":      {Config{}, []string{"no endpoints"}},
		"negative buffer":   {Config{Endpoints: testEndpoints, WatchBuffer: -1}, []string{"watch buffer must be positive"}},
		"negative timeout":  {Config{Endpoints: testEndpoints, DialTimeout: -time.Second}, []string{"dial timeout must be positive"}},
		"nothing listening": {Config{Endpoints: []string{deadEndpoint}, DialTimeout: 300 * time.Millisecond}, []string{deadEndpoint, "no answer within 300ms"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			s, err := Open(t.Context(), tc.cfg)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if elapsed := time.Since(start); elapsed > 3*time.Second {
				t.Errorf("Open took %v to fail", elapsed)
			}
			t.Log(err)
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

func TestCloseWhileWatchRuns(t *testing.T) {
	s, err := Open(t.Context(), Config{Endpoints: testEndpoints, Prefix: freshPrefix()})
	if err != nil {
		t.Fatal(err)
	}
	events, err := s.Watch(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return within 5s")
	}
	storetest.WaitClosed(t, events, time.Second)
	if _, err := s.Token(t.Context(), "tok_a"); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Token after Close: %v, want ErrClosed", err)
	}
}
