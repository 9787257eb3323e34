package etcd

import (
	"context"
	"fmt"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

var _ store.Progresser = (*Store)(nil)

// progressWaiter is a Progress call waiting for the etcd watch to reach rev.
type progressWaiter struct {
	rev  int64
	done chan int64 // receives the revision reached, once
}

// Progress reads the cluster's revision (a linearizable read, so it needs a
// quorum), asks etcd for a progress notification on the watch stream, and
// returns once the watch has dispatched every change up to that revision and
// an EventProgress after them to every running watcher. It fails when ctx
// ends first: the cluster or the link to it is down, or the watch is being
// re-established.
//
// etcd answers a progress request with the revision its watch stream has
// reached; releases before the fix for etcd-io/etcd#15220 (3.4.25, 3.5.8)
// may send that answer just ahead of the last events it covers, already
// committed and queued on the same stream, so a barrier can precede by
// moments a change committed at the instant of the read.
func (s *Store) Progress(ctx context.Context) (int64, error) {
	if err := s.usable(ctx); err != nil {
		return 0, err
	}
	rev, err := s.currentRevision(ctx)
	if err != nil {
		return 0, fmt.Errorf("progress: %w", s.fail(ctx, err))
	}
	w := &progressWaiter{rev: rev, done: make(chan int64, 1)}
	s.mu.Lock()
	sess := s.session
	if sess == nil {
		s.mu.Unlock()
		return 0, fmt.Errorf("progress: the etcd watch is being re-established")
	}
	s.progress = append(s.progress, w)
	s.mu.Unlock()
	defer s.dropProgress(w)
	// The request goes on the session's stream (the same metadata), whose
	// context ends with the session; a new stream is never opened on ctx.
	errc := make(chan error, 1)
	go func() { errc <- s.cli.RequestProgress(sess.ctx) }()
	for {
		select {
		case reached := <-w.done:
			return reached, nil
		case err := <-errc:
			if err != nil {
				return 0, fmt.Errorf("progress: request: %w", s.fail(ctx, err))
			}
			errc = nil
		case <-ctx.Done():
			return 0, fmt.Errorf("progress: revision %d not reached by the watch: %w", rev, ctx.Err())
		}
	}
}

func (s *Store) dropProgress(w *progressWaiter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, x := range s.progress {
		if x == w {
			s.progress = append(s.progress[:i], s.progress[i+1:]...)
			return
		}
	}
}

// reached is called by the watch's one goroutine once it has dispatched
// every change up to rev: Progress calls waiting for rev or less get an
// EventProgress sent to every ready watcher first, then return.
func (s *Store) reached(rev int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rev == 0 || len(s.progress) == 0 {
		return
	}
	keep := s.progress[:0]
	var due []*progressWaiter
	for _, w := range s.progress {
		if w.rev <= rev {
			due = append(due, w)
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
		w.done <- rev
	}
}
