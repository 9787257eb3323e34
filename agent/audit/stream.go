package audit

import (
	"context"
	"sync"
	"sync/atomic"
)

// SubscriberBuffer is how many records a subscriber may fall behind before
// it is cut off. It absorbs a burst (a storm of denies) while the subscriber
// writes to a slow network stream, without letting a stalled one hold up
// Append or hold records in memory without end.
const SubscriberBuffer = 1024

// stream fans appended records out to subscribers.
type stream struct {
	subsMu sync.Mutex
	subs   map[*subscriber]struct{}
	ended  bool // the log is closed; no more subscribers
	// cutOff counts subscribers whose channel was closed for falling behind.
	cutOff atomic.Uint64
}

type subscriber struct {
	filter Filter
	ch     chan Record
	// release stops waiting for the subscriber's context once the channel
	// is closed for another reason.
	release func() bool
}

// Subscribe returns a channel of the records appended from now on that match
// filter, in seq order. The channel is closed when ctx ends, when the log is
// closed, or when the subscriber falls more than SubscriberBuffer records
// behind: Append never waits for a subscriber, and a stream with a silent
// hole is worse than one that ends. A closed channel while ctx is still live
// therefore means records were missed; Read from the seq after the last one
// received, then Subscribe again.
//
// To follow the log with no gap, Subscribe first, then Read or Tail the
// history, and drop streamed records whose seq was already read.
func (l *Log) Subscribe(ctx context.Context, filter Filter) <-chan Record {
	s := &subscriber{filter: filter, ch: make(chan Record, SubscriberBuffer)}
	l.subsMu.Lock()
	defer l.subsMu.Unlock()
	if l.ended || ctx.Err() != nil {
		close(s.ch)
		return s.ch
	}
	if l.subs == nil {
		l.subs = make(map[*subscriber]struct{})
	}
	l.subs[s] = struct{}{}
	s.release = context.AfterFunc(ctx, func() { l.unsubscribe(s) })
	return s.ch
}

func (l *stream) unsubscribe(s *subscriber) {
	l.subsMu.Lock()
	defer l.subsMu.Unlock()
	if _, ok := l.subs[s]; ok {
		delete(l.subs, s)
		close(s.ch)
	}
}

// publish hands durable records to every matching subscriber without
// blocking. Its callers hold Log.syncMu, so batches arrive in seq order.
func (l *stream) publish(batch []Record) {
	l.subsMu.Lock()
	defer l.subsMu.Unlock()
	for s := range l.subs {
		for _, r := range batch {
			if !s.filter.Match(r) {
				continue
			}
			select {
			case s.ch <- r:
				continue
			default:
			}
			delete(l.subs, s)
			close(s.ch)
			s.release()
			l.cutOff.Add(1)
			break
		}
	}
}

func (l *stream) closeSubscribers() {
	l.subsMu.Lock()
	defer l.subsMu.Unlock()
	l.ended = true
	for s := range l.subs {
		delete(l.subs, s)
		close(s.ch)
		s.release()
	}
}
