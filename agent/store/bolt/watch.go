package bolt

import (
	"context"
	"log/slog"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

type watcher struct {
	ch   chan store.Event
	stop func() bool // unregisters the context.AfterFunc that ends the watch
}

// Watch streams every change committed after it is called, in commit order,
// until ctx ends or the store closes; the channel is then closed. Events are
// shared by all watchers: treat them as read-only.
//
// A watcher whose buffer (WithWatchBuffer) is full when a change commits is
// dropped: its channel is closed and it gets no more events. Writers never
// wait for readers, so a stuck consumer cannot delay a revocation reaching
// the others. A consumer that sees its channel close while its ctx is still
// live must reload and watch again.
func (s *Store) Watch(ctx context.Context) (<-chan store.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	w := &watcher{ch: make(chan store.Event, s.watchBuffer)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	s.watchers[w] = struct{}{}
	// The callback needs s.mu, which is held until w.stop is set.
	w.stop = context.AfterFunc(ctx, func() { s.unwatch(w) })
	return w.ch, nil
}

// publish hands ev to every watcher without blocking. It runs under writeMu,
// so events go out in commit order.
func (s *Store) publish(ev store.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for w := range s.watchers {
		select {
		case w.ch <- ev:
		default:
			s.dropLocked(w)
			slog.Warn("store: dropped a watcher that fell behind; it must reload and watch again",
				"buffer", cap(w.ch))
		}
	}
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
}
