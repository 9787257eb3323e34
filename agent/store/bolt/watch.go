package bolt

import (
	"context"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

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
	return s.watchers.Watch(ctx)
}
