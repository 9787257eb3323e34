package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// minRestartDelay is the first wait before the etcd watch starts again
// after it ended (a variable for tests).
var minRestartDelay = 50 * time.Millisecond

const (
	// maxRestartDelay bounds the backoff between attempts to start the etcd
	// watch again: kept short, so that every agent is current within
	// moments of the cluster coming back, however long it was gone (a
	// retry is one cheap read per node).
	maxRestartDelay = 500 * time.Millisecond
	// stableSession is how long an etcd watch must have run for the
	// backoff to start again from its minimum.
	stableSession = 30 * time.Second
)

// errWatchClosed is why a session ends when etcd's watch channel closes
// without saying why.
var errWatchClosed = errors.New("etcd watch channel closed")

// session is one etcd watch on the prefix. Every Watch is fed from the
// session that runs when it starts; when the session ends (the cluster
// compacted past it, cancelled it, or lost its leader), every watcher's
// channel is closed, because events may have been missed, and a new session
// starts.
type session struct {
	from   int64 // the first revision it delivers
	cancel context.CancelFunc
}

type watcher struct {
	ch   chan store.Event
	stop func() bool // unregisters the context.AfterFunc that ends the watch

	// minRev is the first revision this watcher gets: one past the cluster's
	// revision when Watch was called. Zero until Watch has read it; until
	// then, and until a session covers it, events wait in pending.
	minRev  int64
	ready   bool
	pending []revEvent
}

type revEvent struct {
	rev int64
	ev  store.Event
}

// Watch streams every change committed after it is called (anywhere in the
// cluster, under the prefix), in commit order, until ctx ends or the store
// closes; the channel is then closed. Events are shared by all watchers:
// treat them as read-only. Deletes carry the removed record.
//
// The channel is also closed, with ctx still live, when the watcher falls
// more than the watch buffer behind (writers never wait for readers), or
// when the etcd watch behind it ends (compaction, cancellation, a member
// that lost its leader). Either way the consumer must reload and watch
// again.
func (s *Store) Watch(ctx context.Context) (<-chan store.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	w := &watcher{ch: make(chan store.Event, s.watchBuffer)}
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		return nil, store.ErrClosed
	}
	// Registered before the revision is read, so every event committed
	// after that revision reaches w, at worst into pending.
	s.watchers[w] = struct{}{}
	// The callback needs s.mu, which is held until w.stop is set.
	w.stop = context.AfterFunc(ctx, func() { s.unwatch(w) })
	s.mu.Unlock()

	rev, err := s.currentRevision(ctx)
	if err != nil {
		s.unwatch(w)
		return nil, fmt.Errorf("watch: %w", s.fail(ctx, err))
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.watchers[w]; !ok {
		if s.closed.Load() {
			return nil, store.ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// Dropped already (the etcd watch ended, or w fell behind): the
		// closed channel tells the caller to reload and watch again.
		return w.ch, nil
	}
	w.minRev = rev + 1
	if s.session != nil {
		s.activateLocked(w)
	}
	// Between sessions w waits; the next session activates or drops it.
	return w.ch, nil
}

// activateLocked starts delivering to w once a session runs: the events
// that waited in pending, then every later one. s.mu must be held.
func (s *Store) activateLocked(w *watcher) {
	if s.session.from > w.minRev {
		// The session began after w's start: changes in between would be
		// missing.
		s.dropLocked(w)
		return
	}
	w.ready = true
	pending := w.pending
	w.pending = nil
	for _, e := range pending {
		if e.rev >= w.minRev && !s.sendLocked(w, e.ev) {
			return
		}
	}
}

// dispatch hands the events of one etcd watch response, up to revision
// last, to every watcher without blocking, then answers the Progress calls
// this completes. One goroutine calls it, so every watcher sees the one
// commit order.
func (s *Store) dispatch(evs []revEvent, last int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.progressedLocked()
	s.dispatched = max(s.dispatched, last)
	for w := range s.watchers {
		for _, e := range evs {
			if w.ready {
				// A session may still deliver revisions below minRev after
				// w became ready: it lags the read Watch made.
				if e.rev >= w.minRev && !s.sendLocked(w, e.ev) {
					break
				}
				continue
			}
			if len(w.pending) >= s.watchBuffer {
				s.dropSlowLocked(w)
				break
			}
			w.pending = append(w.pending, e)
		}
	}
}

// sendLocked delivers ev to w, or drops w if its buffer is full, and
// reports whether w is still watching. s.mu must be held.
func (s *Store) sendLocked(w *watcher, ev store.Event) bool {
	select {
	case w.ch <- ev:
		return true
	default:
		s.dropSlowLocked(w)
		return false
	}
}

func (s *Store) dropSlowLocked(w *watcher) {
	s.dropLocked(w)
	store.LogDroppedWatcher(s.watchBuffer)
}

func (s *Store) unwatch(w *watcher) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.watchers[w]; ok {
		s.dropLocked(w)
	}
}

// dropLocked ends a watch. s.mu must be held.
func (s *Store) dropLocked(w *watcher) {
	w.stop()
	delete(s.watchers, w)
	close(w.ch)
	w.pending = nil
}

// startSession starts the etcd watch at revision from, with the previous
// values of deleted keys; from 0 means just past the current revision, read
// within ctx. It returns the revision the session starts at.
func (s *Store) startSession(ctx context.Context, from int64) (clientv3.WatchChan, int64, error) {
	if from == 0 {
		rev, err := s.currentRevision(ctx)
		if err != nil {
			return nil, 0, err
		}
		from = rev + 1
	}
	// Requiring a leader makes a member cut off from the cluster cancel
	// the watch instead of letting it go silent: watchers then learn that
	// their view may be stale.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(s.ctx))
	wch := s.cli.Watch(wctx, s.prefix, clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithPrevKV())

	s.mu.Lock()
	defer s.mu.Unlock()
	s.session = &session{from: from, cancel: cancel}
	// Nothing before from comes from this session: watchers it activates
	// loaded those changes themselves.
	s.dispatched = max(s.dispatched, from-1)
	for w := range s.watchers {
		if !w.ready && w.minRev != 0 {
			s.activateLocked(w)
		}
	}
	return wch, from, nil
}

// endSession closes every watcher, whose view may now miss changes, and
// stops the etcd watch.
func (s *Store) endSession(why error) {
	s.mu.Lock()
	sess := s.session
	s.session = nil
	n := len(s.watchers)
	for w := range s.watchers {
		s.dropLocked(w)
	}
	s.mu.Unlock()
	if sess != nil {
		sess.cancel()
	}
	if !s.closed.Load() {
		slog.Warn("store: the etcd watch ended; closed the watchers so they reload and watch again",
			"endpoints", s.endpoints, "watchers", n, "err", why)
	}
}

// run feeds watchers from the etcd watch and starts a new one whenever it
// ends, until Close. A new watch resumes where the last one stopped, so a
// Watch called between the two misses nothing; after a compaction, which
// took that history away, it starts at the current revision. A nil wch
// (Open did not reach the cluster) starts the first one.
func (s *Store) run(wch clientv3.WatchChan, from int64) {
	defer close(s.done)
	delay := minRestartDelay
	for {
		if wch != nil {
			started := time.Now()
			last, err := s.consume(wch, from)
			s.endSession(err)
			from = last + 1
			if errors.Is(err, rpctypes.ErrCompacted) {
				from = 0
			}
			if time.Since(started) > stableSession {
				delay = minRestartDelay
			}
		}
		for {
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(delay):
			}
			delay = min(2*delay, maxRestartDelay)
			ctx, cancel := context.WithTimeout(s.ctx, s.dialTimeout)
			var err error
			wch, from, err = s.startSession(ctx, from)
			cancel()
			if err == nil {
				break
			}
			if s.ctx.Err() != nil {
				return
			}
			slog.Warn("store: cannot start the etcd watch; retrying",
				"endpoints", s.endpoints, "err", err, "retry_in", delay)
		}
	}
}

// consume dispatches the session's events until it ends, and says why and
// the last revision it delivered (from-1 when none).
func (s *Store) consume(wch clientv3.WatchChan, from int64) (last int64, err error) {
	last = from - 1
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return last, err
		}
		if resp.Canceled {
			return last, errors.New("etcd cancelled the watch")
		}
		evs := make([]revEvent, 0, len(resp.Events))
		for _, e := range resp.Events {
			// etcd never splits one revision's events across responses, so
			// resuming after last loses no part of a transaction.
			last = max(last, e.Kv.ModRevision)
			ev, ok, err := s.translate(e)
			if err != nil {
				// A reload would fail on the same value; say so loudly and
				// keep enforcing everything else.
				slog.Error("store: skipped a change that cannot be decoded",
					"key", string(e.Kv.Key), "revision", e.Kv.ModRevision, "err", err)
				continue
			}
			if ok {
				evs = append(evs, revEvent{rev: e.Kv.ModRevision, ev: ev})
			}
		}
		if len(resp.Events) > 0 {
			s.dispatch(evs, last)
		}
	}
	if err := s.ctx.Err(); err != nil {
		return last, err
	}
	return last, errWatchClosed
}

// translate turns an etcd event into a store.Event; ok is false for keys
// that are not records (the leak index, anything unknown).
func (s *Store) translate(e *clientv3.Event) (ev store.Event, ok bool, err error) {
	rest, found := strings.CutPrefix(string(e.Kv.Key), s.prefix)
	if !found {
		return store.Event{}, false, nil
	}
	deleted := e.Type == clientv3.EventTypeDelete
	value := e.Kv.Value
	if deleted {
		value = nil
		if e.PrevKv != nil {
			value = e.PrevKv.Value
		}
	}
	switch {
	case strings.HasPrefix(rest, nsKeys):
		k, err := record[store.Key](value, func(k *store.Key) { k.ID = rest[len(nsKeys):] })
		return store.Event{Kind: store.EventKey, Deleted: deleted, Key: k}, err == nil, err
	case strings.HasPrefix(rest, nsTokens):
		t, err := record[store.TokenRecord](value, func(t *store.TokenRecord) { t.ID = rest[len(nsTokens):] })
		return store.Event{Kind: store.EventToken, Deleted: deleted, Token: t}, err == nil, err
	case strings.HasPrefix(rest, nsRevocations):
		r, err := record[policy.Revocation](value, func(r *policy.Revocation) { r.ID = rest[len(nsRevocations):] })
		return store.Event{Kind: store.EventRevocation, Deleted: deleted, Revocation: r}, err == nil, err
	}
	return store.Event{}, false, nil
}

// record decodes value; a delete whose previous value etcd no longer has
// (nil) yields a record that carries only its ID, set by withID.
func record[T any](value []byte, withID func(*T)) (*T, error) {
	if value == nil {
		var v T
		withID(&v)
		return &v, nil
	}
	v, err := store.DecodeRecord[T](value)
	if err != nil {
		return nil, err
	}
	return &v, nil
}
