package etcd

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

var _ store.Progresser = (*Store)(nil)

// progressWaiter is a Progress call waiting for the watch to dispatch every
// change up to need.
type progressWaiter struct {
	need int64 // the newest rule or key change the watch must have dispatched
	rev  int64 // the revision Progress read: what the barrier says
	done chan struct{}
}

// Progress proves the watch current. In one linearizable read (a
// transaction, so it needs a quorum) it takes the cluster's revision and
// the revocation rules and signing keys changed since the last change the
// watch dispatched; once the watch has dispatched those too, every watcher
// is sent an EventProgress at that revision, after them, and Progress
// returns it. It fails when ctx ends first: the cluster or the link to it
// is down, or the watch is being re-established.
//
// It does not rely on etcd's progress notifications: etcd 3.4 may send one
// ahead of the events it covers while a watch catches up after a broken
// connection (etcd-io/etcd#15220). Token records are not awaited (they
// feed the kernel side's index, not the decision), nor deletions (rules
// are removed only past their expiry; keys only once retired).
func (s *Store) Progress(ctx context.Context) (int64, error) {
	if err := s.usable(ctx); err != nil {
		return 0, err
	}
	s.mu.Lock()
	sess, seen := s.session, s.dispatched
	s.mu.Unlock()
	if sess == nil {
		return 0, fmt.Errorf("progress: the etcd watch is being re-established")
	}
	changed := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithMinModRev(seen + 1)}
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(s.key(nsRevocations, ""), changed...),
		clientv3.OpGet(s.key(nsKeys, ""), changed...),
	).Commit()
	if err != nil {
		return 0, fmt.Errorf("progress: %w", s.fail(ctx, err))
	}
	w := &progressWaiter{rev: resp.Header.Revision, done: make(chan struct{})}
	for _, r := range resp.Responses {
		for _, kv := range r.GetResponseRange().GetKvs() {
			w.need = max(w.need, kv.ModRevision)
		}
	}
	s.mu.Lock()
	if s.session != sess {
		s.mu.Unlock()
		return 0, fmt.Errorf("progress: the etcd watch was re-established meanwhile")
	}
	s.progress = append(s.progress, w)
	s.progressedLocked()
	s.mu.Unlock()
	select {
	case <-w.done:
		return w.rev, nil
	case <-ctx.Done():
		s.mu.Lock()
		s.dropProgressLocked(w)
		s.mu.Unlock()
		return 0, fmt.Errorf("progress: changes up to revision %d not delivered by the watch (at %d): %w", w.need, seen, ctx.Err())
	}
}

func (s *Store) dropProgressLocked(w *progressWaiter) {
	for i, x := range s.progress {
		if x == w {
			s.progress = append(s.progress[:i], s.progress[i+1:]...)
			return
		}
	}
}

// progressedLocked answers the Progress calls whose changes have all been
// dispatched: every ready watcher is sent one EventProgress at the newest
// of their revisions, after those changes. s.mu must be held.
func (s *Store) progressedLocked() {
	if len(s.progress) == 0 {
		return
	}
	keep := s.progress[:0]
	var due []*progressWaiter
	var rev int64
	for _, w := range s.progress {
		if w.need <= s.dispatched {
			due = append(due, w)
			rev = max(rev, w.rev)
		} else {
			keep = append(keep, w)
		}
	}
	s.progress = keep
	if len(due) == 0 {
		return
	}
	ev := store.Event{Kind: store.EventProgress, Revision: rev}
	for w := range s.watchers {
		if w.ready {
			s.sendLocked(w, ev)
		}
	}
	for _, w := range due {
		close(w.done)
	}
}
