package store

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
)

// Fanout hands events to watchers without ever blocking the publisher: a
// watcher whose buffer is full when an event comes is dropped (its channel
// closed) and must reload and watch again. It is safe for concurrent use;
// the zero value is not usable, call NewFanout.
type Fanout struct {
	buffer int
	closed atomic.Bool // set under mu, read without it

	mu       sync.Mutex // guards watchers and the moment closed is set
	watchers map[*fanoutWatcher]struct{}
}

type fanoutWatcher struct {
	ch   chan Event
	stop func() bool // unregisters the context.AfterFunc that ends the watch
}

// NewFanout returns a Fanout whose watchers each buffer up to buffer events.
func NewFanout(buffer int) *Fanout {
	return &Fanout{buffer: buffer, watchers: make(map[*fanoutWatcher]struct{})}
}

// Watch registers a watcher that gets every event published from now on,
// until ctx ends or Close; its channel is then closed. It fails with
// ErrClosed after Close.
func (f *Fanout) Watch(ctx context.Context) (<-chan Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	w := &fanoutWatcher{ch: make(chan Event, f.buffer)}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed.Load() {
		return nil, ErrClosed
	}
	f.watchers[w] = struct{}{}
	// The callback needs f.mu, which is held until w.stop is set.
	w.stop = context.AfterFunc(ctx, func() { f.unwatch(w) })
	return w.ch, nil
}

// Publish hands ev to every watcher without blocking, dropping those whose
// buffer is full. Callers that need one order across watchers publish from
// one goroutine, or under their own lock, in commit order.
func (f *Fanout) Publish(ev Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for w := range f.watchers {
		select {
		case w.ch <- ev:
		default:
			f.dropLocked(w)
			LogDroppedWatcher(f.buffer)
		}
	}
}

// Closed reports whether Close has been called.
func (f *Fanout) Closed() bool { return f.closed.Load() }

// Close closes every watcher's channel; later Watch calls fail with
// ErrClosed. It reports false when the Fanout was already closed.
func (f *Fanout) Close() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed.Load() {
		return false
	}
	f.closed.Store(true)
	for w := range f.watchers {
		f.dropLocked(w)
	}
	return true
}

func (f *Fanout) unwatch(w *fanoutWatcher) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.watchers[w]; ok {
		f.dropLocked(w)
	}
}

// dropLocked ends a watch. f.mu must be held.
func (f *Fanout) dropLocked(w *fanoutWatcher) {
	w.stop()
	delete(f.watchers, w)
	close(w.ch)
}

// LogDroppedWatcher is the warning every backend gives when it drops a
// watcher that fell more than buffer events behind.
func LogDroppedWatcher(buffer int) {
	slog.Warn("store: dropped a watcher that fell behind; it must reload and watch again",
		"buffer", buffer)
}
