// Package storetest is the conformance suite for store.Store backends: every
// backend's tests call Run, so the embedded and the distributed stores keep
// the same contract (not-found errors, filters, the leak index, Watch).
package storetest

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/fnv"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// eventTimeout bounds every wait for an event or a closed channel; a
// backend that needs longer is broken for enforcement anyway.
const eventTimeout = 5 * time.Second

// Run runs the suite. open must return an empty store for each subtest and
// close it in t.Cleanup; Close must tolerate a second call, as some subtests
// close the store themselves.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		run  func(t *testing.T, s store.Store)
	}{
		{"Keys", testKeys},
		{"TokenRoundTrip", testTokenRoundTrip},
		{"TokenByLeakHash", testTokenByLeakHash},
		{"TokenFilters", testTokenFilters},
		{"DeleteToken", testDeleteToken},
		{"Revocations", testRevocations},
		{"IdempotentPut", testIdempotentPut},
		{"NotFound", testNotFound},
		{"RejectsInvalid", testRejectsInvalid},
		{"CanceledContext", testCanceledContext},
		{"WatchOrder", testWatchOrder},
		{"WatchOnlyLaterChanges", testWatchOnlyLaterChanges},
		{"WatchFanOut", testWatchFanOut},
		{"WatchEndsWithContext", testWatchEndsWithContext},
		{"AuditKey", testAuditKey},
		{"AuditKeyRace", testAuditKeyRace},
		{"AuditHead", testAuditHead},
		{"Close", testClose},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, open(t)) })
	}
}

// t0 is the suite's clock. UTC without a monotonic reading, so records
// compare equal after a round trip through any encoding that keeps instants.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func key(id string, state store.KeyState) store.Key {
	seed := sha256.Sum256([]byte(id))
	return store.Key{
		ID:        id,
		Public:    ed25519.NewKeyFromSeed(seed[:]).Public().(ed25519.PublicKey),
		Sealed:    []byte("sealed:" + id),
		State:     state,
		CreatedAt: t0,
	}
}

func tokenRecord(id string) store.TokenRecord {
	wire := fnv.New64a()
	wire.Write([]byte("tw_" + id))
	return store.TokenRecord{
		ID:        id,
		Subject:   "svc-orders",
		Class:     "ci-deploy",
		Env:       "prod",
		Scopes:    []string{"deploy:write", "artifacts:read"},
		KeyID:     "k1",
		IssuedAt:  t0,
		ExpiresAt: t0.Add(time.Hour),
		LeakHash:  sha256.Sum256([]byte("tw_" + id)),
		WireHash:  wire.Sum64(),
		Status:    store.TokenActive,
		Actor:     "system",
	}
}

func revocation(id, jti string) policy.Revocation {
	return policy.Revocation{
		ID:          id,
		Kind:        policy.RevokeToken,
		Target:      jti,
		EffectiveAt: t0,
		Expires:     t0.Add(24 * time.Hour),
		Reason:      "leaked",
		Actor:       "tok_admin",
		CreatedAt:   t0,
	}
}

func testKeys(t *testing.T, s store.Store) {
	ctx := t.Context()
	if got := mustKeys(t, s); len(got) != 0 {
		t.Fatalf("Keys of an empty store = %v, want none", got)
	}
	k1, k2, k3 := key("k1", store.KeyActive), key("k2", store.KeyVerifying), key("k3", store.KeyPending)
	k3.ActivateAt = t0.Add(6 * time.Minute)
	must(t, s.PutKeys(ctx, k2))
	must(t, s.PutKeys(ctx, k1, k3))
	equal(t, "Keys", mustKeys(t, s), []store.Key{k1, k2, k3})

	k1.State, k1.RetiredAt = store.KeyRetired, t0.Add(time.Hour)
	must(t, s.PutKeys(ctx, k1))
	equal(t, "Keys after retiring k1", mustKeys(t, s), []store.Key{k1, k2, k3})
}

func testTokenRoundTrip(t *testing.T, s store.Store) {
	ctx := t.Context()
	a := tokenRecord("tok_a")
	a.Tenant, a.Rotated, a.Successor = "acme", "tok_prev", "tok_next"
	must(t, s.PutToken(ctx, a))
	got, err := s.Token(ctx, a.ID)
	must(t, err)
	equal(t, "Token", got, a)

	a.Status = store.TokenRotated
	must(t, s.PutToken(ctx, a))
	got, err = s.Token(ctx, a.ID)
	must(t, err)
	equal(t, "Token after update", got, a)
}

func testTokenByLeakHash(t *testing.T, s store.Store) {
	ctx := t.Context()
	a, b := tokenRecord("tok_a"), tokenRecord("tok_b")
	must(t, s.PutToken(ctx, a))
	must(t, s.PutToken(ctx, b))
	for _, want := range []store.TokenRecord{a, b} {
		got, err := s.TokenByLeakHash(ctx, want.LeakHash)
		must(t, err)
		equal(t, "TokenByLeakHash "+want.ID, got, want)
	}

	// A record stored again with another hash must not be found by the old one.
	oldHash := a.LeakHash
	a.LeakHash = sha256.Sum256([]byte("tw_tok_a_reissued"))
	must(t, s.PutToken(ctx, a))
	if _, err := s.TokenByLeakHash(ctx, oldHash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("TokenByLeakHash(replaced hash) error = %v, want ErrNotFound", err)
	}
	got, err := s.TokenByLeakHash(ctx, a.LeakHash)
	must(t, err)
	equal(t, "TokenByLeakHash(new hash)", got, a)
}

func testTokenFilters(t *testing.T, s store.Store) {
	ctx := t.Context()
	a := tokenRecord("tok_a")
	a.Subject, a.Tenant, a.KeyID, a.Class = "alice", "t1", "k1", "ci"
	b := tokenRecord("tok_b")
	b.Subject, b.Tenant, b.KeyID, b.Class, b.Status = "bob", "t1", "k2", "ci", store.TokenRevoked
	c := tokenRecord("tok_c")
	c.Subject, c.KeyID, c.Class, c.ExpiresAt = "alice", "k2", "human", t0.Add(10*time.Minute)
	d := tokenRecord("tok_d")
	d.Subject, d.Tenant, d.KeyID, d.Class, d.Status = "carol", "t2", "k1", "human", store.TokenRotated
	for _, r := range []store.TokenRecord{d, b, c, a} {
		must(t, s.PutToken(ctx, r))
	}

	tests := map[string]struct {
		filter store.TokenFilter
		want   []string
	}{
		"empty matches all":     {store.TokenFilter{}, []string{"tok_a", "tok_b", "tok_c", "tok_d"}},
		"subject":               {store.TokenFilter{Subject: "alice"}, []string{"tok_a", "tok_c"}},
		"tenant":                {store.TokenFilter{Tenant: "t1"}, []string{"tok_a", "tok_b"}},
		"key":                   {store.TokenFilter{KeyID: "k2"}, []string{"tok_b", "tok_c"}},
		"class":                 {store.TokenFilter{Class: "human"}, []string{"tok_c", "tok_d"}},
		"unknown subject":       {store.TokenFilter{Subject: "mallory"}, nil},
		"live drops revoked":    {store.TokenFilter{LiveAt: t0}, []string{"tok_a", "tok_c", "tok_d"}},
		"live drops expired":    {store.TokenFilter{LiveAt: t0.Add(30 * time.Minute)}, []string{"tok_a", "tok_d"}},
		"live within skew":      {store.TokenFilter{LiveAt: c.ExpiresAt.Add(policy.MaxClockSkew / 2)}, []string{"tok_a", "tok_c", "tok_d"}},
		"live past skew":        {store.TokenFilter{LiveAt: c.ExpiresAt.Add(policy.MaxClockSkew)}, []string{"tok_a", "tok_d"}},
		"nothing live later":    {store.TokenFilter{LiveAt: t0.Add(2 * time.Hour)}, nil},
		"subject and live":      {store.TokenFilter{Subject: "alice", LiveAt: t0.Add(30 * time.Minute)}, []string{"tok_a"}},
		"tenant, key and class": {store.TokenFilter{Tenant: "t1", KeyID: "k2", Class: "ci"}, []string{"tok_b"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := s.Tokens(ctx, tc.filter)
			must(t, err)
			if ids := tokenIDs(got); !slices.Equal(ids, tc.want) {
				t.Errorf("Tokens(%+v) = %v, want %v", tc.filter, ids, tc.want)
			}
		})
	}

	got, err := s.Tokens(ctx, store.TokenFilter{Subject: "carol"})
	must(t, err)
	equal(t, "Tokens(subject carol)", got, []store.TokenRecord{d})
}

func testDeleteToken(t *testing.T, s store.Store) {
	ctx := t.Context()
	a, b := tokenRecord("tok_a"), tokenRecord("tok_b")
	must(t, s.PutToken(ctx, a))
	must(t, s.PutToken(ctx, b))
	must(t, s.DeleteToken(ctx, a.ID))

	if _, err := s.Token(ctx, a.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Token(deleted) error = %v, want ErrNotFound", err)
	}
	if _, err := s.TokenByLeakHash(ctx, a.LeakHash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("TokenByLeakHash(deleted) error = %v, want ErrNotFound", err)
	}
	all, err := s.Tokens(ctx, store.TokenFilter{})
	must(t, err)
	equal(t, "Tokens after delete", all, []store.TokenRecord{b})
	if err := s.DeleteToken(ctx, a.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second DeleteToken error = %v, want ErrNotFound", err)
	}

	// The freed leak hash may be indexed again.
	c := tokenRecord("tok_c")
	c.LeakHash = a.LeakHash
	must(t, s.PutToken(ctx, c))
	got, err := s.TokenByLeakHash(ctx, c.LeakHash)
	must(t, err)
	equal(t, "TokenByLeakHash(reused hash)", got, c)
}

func testRevocations(t *testing.T, s store.Store) {
	ctx := t.Context()
	if got := mustRevocations(t, s); len(got) != 0 {
		t.Fatalf("Revocations of an empty store = %v, want none", got)
	}
	byToken := revocation("rv_1", "tok_a")
	bySubject := policy.Revocation{
		ID: "rv_2", Kind: policy.RevokeSubject, Target: "alice", EffectiveAt: t0,
		IssuedBefore: t0, Expires: t0.Add(24 * time.Hour), Reason: "role change",
		Actor: "tok_admin", CreatedAt: t0,
	}
	byKey := policy.Revocation{
		ID: "rv_3", Kind: policy.RevokeKey, Target: "k1", EffectiveAt: t0.Add(15 * time.Minute),
		Reason: "rotation", Actor: "system", CreatedAt: t0,
	}
	for _, r := range []policy.Revocation{byKey, byToken, bySubject} {
		must(t, s.PutRevocation(ctx, r))
	}
	equal(t, "Revocations", mustRevocations(t, s), []policy.Revocation{byToken, bySubject, byKey})

	byToken.Reason = "anomaly"
	must(t, s.PutRevocation(ctx, byToken))
	must(t, s.DeleteRevocation(ctx, bySubject.ID))
	equal(t, "Revocations after update and delete", mustRevocations(t, s), []policy.Revocation{byToken, byKey})
	if err := s.DeleteRevocation(ctx, bySubject.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second DeleteRevocation error = %v, want ErrNotFound", err)
	}
}

func testIdempotentPut(t *testing.T, s store.Store) {
	ctx := t.Context()
	k, tok, r := key("k1", store.KeyActive), tokenRecord("tok_a"), revocation("rv_1", "tok_a")
	for range 2 {
		must(t, s.PutKeys(ctx, k))
		must(t, s.PutToken(ctx, tok))
		must(t, s.PutRevocation(ctx, r))
	}
	equal(t, "Keys", mustKeys(t, s), []store.Key{k})
	tokens, err := s.Tokens(ctx, store.TokenFilter{})
	must(t, err)
	equal(t, "Tokens", tokens, []store.TokenRecord{tok})
	got, err := s.TokenByLeakHash(ctx, tok.LeakHash)
	must(t, err)
	equal(t, "TokenByLeakHash", got, tok)
	equal(t, "Revocations", mustRevocations(t, s), []policy.Revocation{r})
}

func testNotFound(t *testing.T, s store.Store) {
	ctx := t.Context()
	// Something stored, so a miss is not just an empty store.
	must(t, s.PutToken(ctx, tokenRecord("tok_a")))
	must(t, s.PutRevocation(ctx, revocation("rv_1", "tok_a")))

	tests := map[string]func() error{
		"Token": func() error { _, err := s.Token(ctx, "tok_missing"); return err },
		"TokenByLeakHash": func() error {
			_, err := s.TokenByLeakHash(ctx, sha256.Sum256([]byte("tw_missing")))
			return err
		},
		"DeleteToken":      func() error { return s.DeleteToken(ctx, "tok_missing") },
		"DeleteRevocation": func() error { return s.DeleteRevocation(ctx, "rv_missing") },
	}
	for name, call := range tests {
		t.Run(name, func(t *testing.T) {
			err := call()
			if !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("error = %v, want ErrNotFound", err)
			}
			if err.Error() == store.ErrNotFound.Error() {
				t.Errorf("error %q names nothing; wrap it with what was missing", err)
			}
		})
	}
}

func testRejectsInvalid(t *testing.T, s store.Store) {
	ctx := t.Context()
	noReason := revocation("rv_1", "tok_a")
	noReason.Reason = ""
	noIssuedBefore := revocation("rv_2", "alice")
	noIssuedBefore.Kind = policy.RevokeSubject

	tests := map[string]func() error{
		"key without id":                     func() error { return s.PutKeys(ctx, key("", store.KeyActive)) },
		"token without id":                   func() error { return s.PutToken(ctx, tokenRecord("")) },
		"revocation without id":              func() error { return s.PutRevocation(ctx, revocation("", "tok_a")) },
		"revocation without reason":          func() error { return s.PutRevocation(ctx, noReason) },
		"subject rule without issued_before": func() error { return s.PutRevocation(ctx, noIssuedBefore) },
	}
	for name, call := range tests {
		t.Run(name, func(t *testing.T) {
			if err := call(); err == nil {
				t.Fatal("stored an invalid record")
			}
		})
	}
	if got := mustKeys(t, s); len(got) != 0 {
		t.Errorf("Keys = %v, want none", got)
	}
	if got := mustRevocations(t, s); len(got) != 0 {
		t.Errorf("Revocations = %v, want none", got)
	}
}

// calls exercises every method but Close; used by the canceled-context
// and closed-store tests.
func calls(s store.Store) map[string]func(ctx context.Context) error {
	return map[string]func(ctx context.Context) error{
		"PutKeys":  func(ctx context.Context) error { return s.PutKeys(ctx, key("k1", store.KeyActive)) },
		"Keys":     func(ctx context.Context) error { _, err := s.Keys(ctx); return err },
		"PutToken": func(ctx context.Context) error { return s.PutToken(ctx, tokenRecord("tok_a")) },
		"Token":    func(ctx context.Context) error { _, err := s.Token(ctx, "tok_a"); return err },
		"TokenByLeakHash": func(ctx context.Context) error {
			_, err := s.TokenByLeakHash(ctx, sha256.Sum256([]byte("tw_tok_a")))
			return err
		},
		"Tokens":           func(ctx context.Context) error { _, err := s.Tokens(ctx, store.TokenFilter{}); return err },
		"DeleteToken":      func(ctx context.Context) error { return s.DeleteToken(ctx, "tok_a") },
		"PutRevocation":    func(ctx context.Context) error { return s.PutRevocation(ctx, revocation("rv_1", "tok_a")) },
		"DeleteRevocation": func(ctx context.Context) error { return s.DeleteRevocation(ctx, "rv_1") },
		"Revocations":      func(ctx context.Context) error { _, err := s.Revocations(ctx); return err },
		"Watch":            func(ctx context.Context) error { _, err := s.Watch(ctx); return err },
	}
}

func testCanceledContext(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for name, call := range calls(s) {
		t.Run(name, func(t *testing.T) {
			if err := call(ctx); !errors.Is(err, context.Canceled) {
				t.Errorf("error = %v, want context.Canceled", err)
			}
		})
	}
}

func testWatchOrder(t *testing.T, s store.Store) {
	ctx := t.Context()
	events, err := s.Watch(ctx)
	must(t, err)

	k := key("k1", store.KeyActive)
	tok := tokenRecord("tok_a")
	r := revocation("rv_1", tok.ID)
	retired := k
	retired.State = store.KeyRetired
	steps := []struct {
		name  string
		write func() error
		want  *store.Event // nil: the write fails and publishes nothing
	}{
		{"put key", func() error { return s.PutKeys(ctx, k) }, &store.Event{Kind: store.EventKey, Key: &k}},
		{"put token", func() error { return s.PutToken(ctx, tok) }, &store.Event{Kind: store.EventToken, Token: &tok}},
		{"put revocation", func() error { return s.PutRevocation(ctx, r) }, &store.Event{Kind: store.EventRevocation, Revocation: &r}},
		{"failed delete", func() error { return s.DeleteToken(ctx, "tok_missing") }, nil},
		{"delete token", func() error { return s.DeleteToken(ctx, tok.ID) }, &store.Event{Kind: store.EventToken, Deleted: true, Token: &tok}},
		{"delete revocation", func() error { return s.DeleteRevocation(ctx, r.ID) }, &store.Event{Kind: store.EventRevocation, Deleted: true, Revocation: &r}},
		{"update key", func() error { return s.PutKeys(ctx, retired) }, &store.Event{Kind: store.EventKey, Key: &retired}},
	}
	var want []store.Event
	for _, st := range steps {
		err := st.write()
		if st.want == nil {
			if err == nil {
				t.Fatalf("%s: succeeded, want an error", st.name)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		want = append(want, *st.want)
	}
	for i, w := range want {
		equal(t, fmt.Sprintf("event %d (%s)", i, Describe(w)), next(t, events), w)
	}
}

func testWatchOnlyLaterChanges(t *testing.T, s store.Store) {
	ctx := t.Context()
	must(t, s.PutRevocation(ctx, revocation("rv_before", "tok_a")))
	events, err := s.Watch(ctx)
	must(t, err)
	must(t, s.PutRevocation(ctx, revocation("rv_after", "tok_b")))
	if got := Describe(next(t, events)); got != "put revocation rv_after" {
		t.Errorf("first event = %s, want put revocation rv_after", got)
	}
}

func testWatchFanOut(t *testing.T, s store.Store) {
	ctx := t.Context()
	const watchers, writers, perWriter = 3, 4, 5
	chans := make([]<-chan store.Event, watchers)
	for i := range chans {
		ch, err := s.Watch(ctx)
		must(t, err)
		chans[i] = ch
	}

	var wg sync.WaitGroup
	errs := make(chan error, writers*perWriter)
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				errs <- s.PutRevocation(ctx, revocation(fmt.Sprintf("rv_w%d_%d", w, i), "tok_a"))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		must(t, err)
	}

	var first []string
	for i, ch := range chans {
		var seen []string
		for range writers * perWriter {
			seen = append(seen, Describe(next(t, ch)))
		}
		// Every watcher sees the one commit order.
		if i == 0 {
			first = seen
		} else if !slices.Equal(seen, first) {
			t.Errorf("watcher %d saw %v, watcher 0 saw %v", i, seen, first)
		}
	}
	// Each writer's own writes arrive in the order it made them.
	for w := range writers {
		prefix := fmt.Sprintf("put revocation rv_w%d_", w)
		var mine []string
		for _, d := range first {
			if strings.HasPrefix(d, prefix) {
				mine = append(mine, strings.TrimPrefix(d, prefix))
			}
		}
		if want := []string{"0", "1", "2", "3", "4"}; !slices.Equal(mine, want) {
			t.Errorf("writer %d's events arrived as %v, want %v", w, mine, want)
		}
	}
}

func testWatchEndsWithContext(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	events, err := s.Watch(ctx)
	must(t, err)
	other, err := s.Watch(t.Context())
	must(t, err)
	cancel()
	closedWithin(t, events)

	// Writes carry on, and reach the watcher whose context is still live.
	must(t, s.PutRevocation(t.Context(), revocation("rv_1", "tok_a")))
	if got := Describe(next(t, other)); got != "put revocation rv_1" {
		t.Errorf("event = %s, want put revocation rv_1", got)
	}
}

func testClose(t *testing.T, s store.Store) {
	events, err := s.Watch(t.Context())
	must(t, err)
	must(t, s.Close())
	closedWithin(t, events)

	for name, call := range calls(s) {
		t.Run(name, func(t *testing.T) {
			if err := call(t.Context()); !errors.Is(err, store.ErrClosed) {
				t.Errorf("after Close: error = %v, want ErrClosed", err)
			}
		})
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// next returns the next event on ch, failing the test if none comes within
// eventTimeout or the channel closes.
func next(t *testing.T, ch <-chan store.Event) store.Event {
	t.Helper()
	return NextEvent(t, ch, eventTimeout)
}

// closedWithin fails the test unless ch is closed within eventTimeout.
func closedWithin(t *testing.T, ch <-chan store.Event) {
	t.Helper()
	WaitClosed(t, ch, eventTimeout)
}

// NextEvent returns the next event on ch, failing the test if none comes
// within d or the channel closes.
func NextEvent(t *testing.T, ch <-chan store.Event, d time.Duration) store.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed, want an event")
		}
		return ev
	case <-time.After(d):
		t.Fatalf("no event within %v", d)
	}
	panic("unreachable")
}

// WaitClosed fails the test unless ch is closed within d. Events already
// buffered are skipped.
func WaitClosed(t *testing.T, ch <-chan store.Event, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatalf("watch channel still open after %v", d)
		}
	}
}

// Describe names an event for messages: "put revocation rv_1".
func Describe(ev store.Event) string {
	verb := "put"
	if ev.Deleted {
		verb = "delete"
	}
	var id string
	switch {
	case ev.Key != nil:
		id = ev.Key.ID
	case ev.Token != nil:
		id = ev.Token.ID
	case ev.Revocation != nil:
		id = ev.Revocation.ID
	}
	return fmt.Sprintf("%s %s %s", verb, ev.Kind, id)
}

func tokenIDs(rs []store.TokenRecord) []string {
	var ids []string
	for _, r := range rs {
		ids = append(ids, r.ID)
	}
	slices.Sort(ids)
	return ids
}

func testAuditKey(t *testing.T, s store.Store) {
	ctx := t.Context()
	if _, err := s.AuditKey(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("AuditKey of an empty store = %v, want ErrNotFound", err)
	}
	events, err := s.Watch(ctx)
	must(t, err)
	first := store.AuditKey{ID: "ak-1", Sealed: []byte("sealed-1"), CreatedAt: t0}
	got, err := s.CreateAuditKey(ctx, first)
	must(t, err)
	equal(t, "CreateAuditKey on an empty store", got, first)
	// A second agent creating its own key gets the first one: the chain
	// of every node sharing the store is keyed alike.
	got, err = s.CreateAuditKey(ctx, store.AuditKey{ID: "ak-2", Sealed: []byte("sealed-2"), CreatedAt: t0})
	must(t, err)
	equal(t, "CreateAuditKey when a key exists", got, first)
	got, err = s.AuditKey(ctx)
	must(t, err)
	equal(t, "AuditKey", got, first)
	if _, err := s.CreateAuditKey(ctx, store.AuditKey{ID: "ak-3"}); err == nil {
		t.Error("CreateAuditKey accepted a key without a secret")
	}
	// Audit records are not enforcement state: Watch does not carry them.
	must(t, s.PutRevocation(ctx, revocation("rv_marker", "tok_a")))
	if got := Describe(next(t, events)); got != "put revocation rv_marker" {
		t.Errorf("first event after audit key writes = %s, want put revocation rv_marker", got)
	}
}

func testAuditKeyRace(t *testing.T, s store.Store) {
	const agents = 8
	got := make([]store.AuditKey, agents)
	errs := make([]error, agents)
	var wg sync.WaitGroup
	for i := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = s.CreateAuditKey(t.Context(), store.AuditKey{ID: fmt.Sprintf("ak-%d", i), Sealed: []byte{byte(i)}, CreatedAt: t0})
		}()
	}
	wg.Wait()
	for i := range agents {
		must(t, errs[i])
		equal(t, fmt.Sprintf("agent %d's key", i), got[i], got[0])
	}
}

func testAuditHead(t *testing.T, s store.Store) {
	ctx := t.Context()
	if _, err := s.AuditHead(ctx, "node-a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("AuditHead of an empty store = %v, want ErrNotFound", err)
	}
	events, err := s.Watch(ctx)
	must(t, err)
	a1 := store.AuditHead{Node: "node-a", Seq: 10, Hash: strings.Repeat("a", 64), File: "audit.log", Time: t0}
	a2 := store.AuditHead{Node: "node-a", Seq: 42, Hash: strings.Repeat("b", 64), File: "audit.log", Time: t0.Add(time.Second)}
	b1 := store.AuditHead{Node: "node-b", Seq: 7, Hash: strings.Repeat("c", 64), File: "audit-00000000000000000001.log", Time: t0}
	must(t, s.PutAuditHead(ctx, a1))
	must(t, s.PutAuditHead(ctx, b1))
	must(t, s.PutAuditHead(ctx, a2))
	for node, want := range map[string]store.AuditHead{"node-a": a2, "node-b": b1} {
		got, err := s.AuditHead(ctx, node)
		must(t, err)
		equal(t, "AuditHead of "+node, got, want)
	}
	if err := s.PutAuditHead(ctx, store.AuditHead{Seq: 1}); err == nil {
		t.Error("PutAuditHead accepted a head without a node")
	}
	must(t, s.PutRevocation(ctx, revocation("rv_marker", "tok_a")))
	if got := Describe(next(t, events)); got != "put revocation rv_marker" {
		t.Errorf("first event after audit head writes = %s, want put revocation rv_marker", got)
	}
}

func mustKeys(t *testing.T, s store.Store) []store.Key {
	t.Helper()
	keys, err := s.Keys(t.Context())
	must(t, err)
	slices.SortFunc(keys, func(a, b store.Key) int { return strings.Compare(a.ID, b.ID) })
	return keys
}

func mustRevocations(t *testing.T, s store.Store) []policy.Revocation {
	t.Helper()
	rules, err := s.Revocations(t.Context())
	must(t, err)
	slices.SortFunc(rules, func(a, b policy.Revocation) int { return strings.Compare(a.ID, b.ID) })
	return rules
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// equal compares with reflect.DeepEqual: a backend gives back exactly what
// was written.
func equal[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s =\n  %+v\nwant\n  %+v", what, got, want)
	}
}
