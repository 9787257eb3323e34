// Package bolt is tokenwarden's embedded store: signing keys, token records
// and revocation rules in one bbolt file in the agent's data dir, for a single
// node with nothing to install. Every write is fsync'd before it returns, and
// Watch fans committed changes out to the parts of the agent that enforce them.
package bolt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

// FileName is the store's file inside the data dir.
const FileName = "tokenwarden.db"

const (
	// defaultLockTimeout is how long Open waits for another agent to let go
	// of the file. Short, because a second agent on the same data dir is a
	// deployment mistake to report, not a condition to wait out.
	defaultLockTimeout = time.Second

	// defaultWatchBuffer is how many events a watcher may fall behind before
	// it is dropped: enough to absorb a burst of revocations (a key
	// compromise, a tenant offboarding) while the reader is busy.
	defaultWatchBuffer = 1024
)

var (
	bucketKeys         = []byte("keys")
	bucketTokens       = []byte("tokens")         // jti → TokenRecord
	bucketTokensByLeak = []byte("tokens_by_leak") // sha256(token) → jti
	bucketRevocations  = []byte("revocations")    // rule id → Revocation
	bucketAudit        = []byte("audit")          // auditKeyName → AuditKey; "head/<node>" → AuditHead
	// The token indexes: "<subject|tenant|kid>\x00<jti>" → nothing. A
	// revocation by subject, tenant or key counts its tokens from them,
	// at a cost independent of how many other records are stored.
	bucketBySubject = []byte("tokens_by_subject")
	bucketByTenant  = []byte("tokens_by_tenant")
	bucketByKey     = []byte("tokens_by_kid")
)

// ErrInUse is returned by Open when another process holds the store's file.
var ErrInUse = errors.New("data dir is in use by another tokenwarden")

// Option configures Open.
type Option func(*options)

type options struct {
	lockTimeout time.Duration
	watchBuffer int
}

// WithLockTimeout sets how long Open waits for the file lock held by another
// process before it fails with ErrInUse (default 1s). It must be positive.
func WithLockTimeout(d time.Duration) Option {
	return func(o *options) { o.lockTimeout = d }
}

// WithWatchBuffer sets each watcher's channel capacity (default 1024): how
// far a watcher may fall behind before it is dropped. It must be positive.
func WithWatchBuffer(n int) Option {
	return func(o *options) { o.watchBuffer = n }
}

// Store is a store.Store kept in one bbolt file. It is safe for concurrent
// use.
type Store struct {
	db *bbolt.DB

	// writeMu spans a commit and the publication of its event, so watchers
	// see events in commit order. bbolt admits one writer at a time anyway,
	// so this costs no concurrency.
	writeMu sync.Mutex

	// watchers gets every committed change; it is closed when the store is.
	watchers *store.Fanout
}

var _ store.Store = (*Store)(nil)

// Open opens the store at path (usually <data-dir>/tokenwarden.db), creating
// the file (mode 0600) and its directory (mode 0700) when missing. It fails
// with ErrInUse, naming the holder's pid when it can, if another process has
// the file open.
func Open(path string, opts ...Option) (*Store, error) {
	o := options{lockTimeout: defaultLockTimeout, watchBuffer: defaultWatchBuffer}
	for _, opt := range opts {
		opt(&o)
	}
	if o.lockTimeout <= 0 {
		return nil, fmt.Errorf("open store %s: lock timeout must be positive, got %v", path, o.lockTimeout)
	}
	if o.watchBuffer <= 0 {
		return nil, fmt.Errorf("open store %s: watch buffer must be positive, got %d", path, o.watchBuffer)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	// NoSync stays false: the store's contract is that a write is on stable
	// storage when the call returns.
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: o.lockTimeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open store %s: %w (%s): stop it or give this agent its own data directory",
			path, ErrInUse, describeHolder(path))
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketKeys, bucketTokens, bucketTokensByLeak, bucketRevocations, bucketAudit} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("create bucket %s: %w", b, err)
			}
		}
		return buildIndexes(tx)
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return &Store{db: db, watchers: store.NewFanout(o.watchBuffer)}, nil
}

func describeHolder(path string) string {
	if pid := lockHolder(path); pid > 0 {
		return fmt.Sprintf("pid %d", pid)
	}
	return "pid unknown"
}

// Close closes every watcher's channel and the file. Calls after Close
// return store.ErrClosed; a second Close returns nil.
func (s *Store) Close() error {
	// Waiting for the writer lets an in-flight write commit and publish
	// before the watchers go away.
	s.writeMu.Lock()
	defer s.writeMu.Unlock()

	if !s.watchers.Close() {
		return nil
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close store %s: %w", s.db.Path(), err)
	}
	return nil
}

// view runs fn in a read transaction.
func (s *Store) view(ctx context.Context, fn func(tx *bbolt.Tx) error) error {
	if err := store.Usable(ctx, s.watchers.Closed()); err != nil {
		return err
	}
	return closedErr(s.db.View(fn))
}

// commit runs fn in one write transaction, which bbolt fsyncs before it
// returns, and then publishes the event fn built. Nothing is published for a
// failed transaction.
func (s *Store) commit(ctx context.Context, fn func(tx *bbolt.Tx) (store.Event, error)) error {
	return s.commitAll(ctx, func(tx *bbolt.Tx) ([]store.Event, error) {
		ev, err := fn(tx)
		return []store.Event{ev}, err
	})
}

// commitAll is commit for a transaction that makes several changes.
func (s *Store) commitAll(ctx context.Context, fn func(tx *bbolt.Tx) ([]store.Event, error)) error {
	if err := store.Usable(ctx, s.watchers.Closed()); err != nil {
		return err
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	var evs []store.Event
	err := s.db.Update(func(tx *bbolt.Tx) error {
		var err error
		evs, err = fn(tx)
		return err
	})
	if err != nil {
		return closedErr(err)
	}
	for _, ev := range evs {
		if ev.Kind == "" { // audit keys and heads are not watched
			continue
		}
		s.watchers.Publish(ev)
	}
	return nil
}

// closedErr reports a call that raced with Close as store.ErrClosed.
func closedErr(err error) error {
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return store.ErrClosed
	}
	return err
}
