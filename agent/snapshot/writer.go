package snapshot

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

// DefaultEvery is how often Writer looks for changes to write: the file
// is rewritten at most this often.
const DefaultEvery = time.Second

// Writer keeps the snapshot file in step with the store.
type Writer struct {
	Path   string
	KEK    []byte
	Store  store.Store
	Prefix string // the store's place (Snapshot.Prefix)
	// Changes counts the changes this node applied (rules, keys, reloads):
	// the file is rewritten only when it moved.
	Changes func() uint64
	// Revision is the store revision up to which this node has applied
	// every change; read before the store, it is at or below what the
	// reads return.
	Revision func() int64
	Every    time.Duration // DefaultEvery when zero
	Now      func() time.Time
	Logger   *slog.Logger
}

// Run writes the snapshot at once and then whenever this node applied a
// change, at most once every Every, until ctx ends. A write that fails
// (the store is unreachable, the disk full) is tried again at the next
// tick; the previous file stays in place meanwhile.
func (w *Writer) Run(ctx context.Context) {
	every := cmp.Or(w.Every, DefaultEvery)
	now := w.Now
	if now == nil {
		now = time.Now
	}
	log := cmp.Or(w.Logger, slog.Default())
	t := time.NewTicker(every)
	defer t.Stop()
	var written uint64
	first, failing := true, false
	for {
		if c := w.Changes(); first || c != written {
			if err := w.write(ctx, now); err != nil {
				if ctx.Err() != nil {
					return
				}
				if !failing {
					log.Warn("cannot write the local store snapshot; retrying", "path", w.Path, "err", err)
				}
				failing = true
			} else {
				first, failing, written = false, false, c
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// write reads the store (linearizable reads: the copy is current as of
// their start) and replaces the file.
func (w *Writer) write(ctx context.Context, now func() time.Time) error {
	s := &Snapshot{Revision: w.Revision(), Prefix: w.Prefix, TakenAt: now().UTC()}
	var err error
	if s.Rules, err = w.Store.Revocations(ctx); err != nil {
		return err
	}
	if s.Keys, err = w.Store.Keys(ctx); err != nil {
		return err
	}
	switch k, err := w.Store.AuditKey(ctx); {
	case err == nil:
		s.Audit = &k
	case !errors.Is(err, store.ErrNotFound):
		return err
	}
	return Save(w.Path, w.KEK, s)
}
