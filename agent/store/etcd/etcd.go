// Package etcd is tokenwarden's many-node backend: signing keys, token records
// and revocation rules kept in an etcd cluster under one key prefix. Every
// agent watches it, so a revocation made anywhere is enforced everywhere.
//
// Records are the same JSON values, bounded to the same size
// (store.EncodeRecord), as the embedded bolt store's. Under the prefix
// (default "/tokenwarden/") they live at
//
//	keys/<kid>               store.Key
//	tokens/<jti>             store.TokenRecord
//	leak/<hex sha256>        jti: the index behind TokenByLeakHash
//	revocations/<rule id>    policy.Revocation
//	index/<field>/<value>/<jti>  "": tokens by subject, tenant and kid
//	index/v1                 "": the indexes are complete
//
// A write returns once etcd has committed it through raft, so it is on a
// quorum's disks. Reads are linearizable: a node reads what any node wrote
// before the read began.
package etcd

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/logutil"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

const (
	// DefaultPrefix is where the store's keys live when Config.Prefix is
	// empty.
	DefaultPrefix = "/tokenwarden/"

	// DefaultDialTimeout bounds Open's first round trip to the cluster when
	// Config.DialTimeout is zero.
	DefaultDialTimeout = 5 * time.Second

	// DefaultRequestTimeout bounds each read or write (each attempt of it)
	// that has no earlier deadline, when Config.RequestTimeout is zero.
	DefaultRequestTimeout = 5 * time.Second

	// defaultWatchBuffer is how many events a watcher may fall behind before
	// it is dropped, as in the bolt store: enough to absorb a burst of
	// revocations (a key compromise, a tenant offboarding) while the reader
	// is busy.
	defaultWatchBuffer = 1024

	// Keep-alive pings let a watch notice a dead connection (a node or
	// network gone without a FIN) within seconds instead of waiting on TCP.
	keepAliveTime    = 10 * time.Second
	keepAliveTimeout = 5 * time.Second

	// maxReconnectDelay caps the backoff between attempts to reconnect to
	// an endpoint.
	maxReconnectDelay = 500 * time.Millisecond
)

// Namespaces under the prefix.
const (
	nsKeys        = "keys/"
	nsTokens      = "tokens/"
	nsLeak        = "leak/"
	nsRevocations = "revocations/"
)

// Config says how to reach the cluster and where in it the store lives.
type Config struct {
	// Endpoints are the etcd client URLs, e.g. "https://etcd-0:2379". At
	// least one is required.
	Endpoints []string
	// Prefix is the key prefix every record lives under (default
	// DefaultPrefix). A trailing "/" is added when missing. Agents that
	// share state use the same prefix; separate deployments on one cluster
	// use prefixes that are not prefixes of each other.
	Prefix string
	// DialTimeout bounds Open's first round trip to the cluster, which
	// proves an endpoint answers (default DefaultDialTimeout).
	DialTimeout time.Duration
	// RequestTimeout bounds each request to the cluster whose context has
	// no deadline, retries included, and each attempt of every request
	// (default DefaultRequestTimeout). Watches are not requests: they stay
	// open.
	RequestTimeout time.Duration
	// Username and Password authenticate to a cluster with auth enabled.
	Username string
	Password string
	// TLS, when set, is used for the client connections (https endpoints,
	// client certificates); see ClientTLS. Open checks it by a handshake
	// with the endpoints first, so a wrong CA or a refused client
	// certificate is reported as ErrTLS, not as a timeout.
	TLS *tls.Config
	// WatchBuffer is each watcher's channel capacity (default 1024): how far
	// a watcher may fall behind before it is dropped. Zero means the
	// default.
	WatchBuffer int
	// AllowUnreachable lets Open return a store whose cluster did not
	// answer within DialTimeout (an agent that has a local snapshot to
	// serve from): the etcd watch starts once an endpoint answers, and
	// Unreached says why it had not. Refused credentials or TLS still fail
	// Open.
	AllowUnreachable bool
}

// Store is a store.Store kept in etcd. It is safe for concurrent use.
type Store struct {
	cli         *clientv3.Client
	prefix      string
	endpoints   string // for messages
	dialTimeout time.Duration
	watchBuffer int

	// ctx lives until Close and is the parent of the etcd watch; done is
	// closed when the goroutine that runs the watch has returned.
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	closed   atomic.Bool
	mu       sync.Mutex // guards watchers, session and the moment closed is set
	watchers map[*watcher]struct{}
	session  *session // the running etcd watch; nil between two
	// dispatched is the revision up to which every change has been handed
	// to the watchers (or, before a session's start, loaded by them);
	// progress are the Progress calls waiting for it to move.
	dispatched int64
	progress   []*progressWaiter
	// unreached is why Open returned without an answer from the cluster
	// (Config.AllowUnreachable); nil when it had one.
	unreached error
}

var _ store.Store = (*Store)(nil)

// Open connects to the cluster, checks that it answers (within ctx and
// Config.DialTimeout), and starts the one etcd watch on the prefix that
// feeds every Watch. The store owns the connection until Close.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("open etcd store: no endpoints: give at least one etcd client URL")
	}
	endpoints := strings.Join(cfg.Endpoints, ",")
	prefix := NormalPrefix(cfg.Prefix)
	dialTimeout := cfg.DialTimeout
	if dialTimeout == 0 {
		dialTimeout = DefaultDialTimeout
	}
	if dialTimeout < 0 {
		return nil, fmt.Errorf("open etcd store at %s: dial timeout must be positive, got %v", endpoints, dialTimeout)
	}
	requestTimeout := cfg.RequestTimeout
	if requestTimeout == 0 {
		requestTimeout = DefaultRequestTimeout
	}
	if requestTimeout < 0 {
		return nil, fmt.Errorf("open etcd store at %s: request timeout must be positive, got %v", endpoints, requestTimeout)
	}
	watchBuffer := cfg.WatchBuffer
	if watchBuffer == 0 {
		watchBuffer = defaultWatchBuffer
	}
	if watchBuffer < 0 {
		return nil, fmt.Errorf("open etcd store at %s: watch buffer must be positive, got %d", endpoints, watchBuffer)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if cfg.TLS != nil {
		// An endpoint that cannot be dialled says nothing of TLS: with
		// AllowUnreachable, the client checks it when it connects.
		if err := checkTLS(ctx, cfg.Endpoints, cfg.TLS, dialTimeout); err != nil && !(cfg.AllowUnreachable && errors.Is(err, errNoDial)) {
			return nil, fmt.Errorf("open etcd store at %s: %w", endpoints, err)
		}
	}

	// The client's own log goes to stderr as JSON; keep it to what an
	// operator must see. Its warnings are one line per failed attempt of
	// every request (the freshness check makes several a second while the
	// cluster is unreachable); the store's callers report failures.
	lg, err := logutil.CreateDefaultZapLogger(zapcore.ErrorLevel)
	if err != nil {
		return nil, fmt.Errorf("open etcd store at %s: client logger: %w", endpoints, err)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          dialTimeout,
		DialKeepAliveTime:    keepAliveTime,
		DialKeepAliveTimeout: keepAliveTimeout,
		Username:             cfg.Username,
		Password:             cfg.Password,
		TLS:                  cfg.TLS,
		Logger:               lg,
		DialOptions: []grpc.DialOption{
			grpc.WithChainUnaryInterceptor(requestDeadline(requestTimeout)),
			// gRPC's default reconnect backoff grows to two minutes: after a
			// long outage an agent would stay blind that long once the
			// cluster is back. Capped, every agent reconnects within moments.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: maxReconnectDelay},
				MinConnectTimeout: time.Second,
			}),
		},
	})
	if err != nil {
		if isAuthError(err) {
			err = fmt.Errorf("%w: %v", ErrAuth, err)
		}
		return nil, fmt.Errorf("open etcd store at %s: %w", endpoints, err)
	}

	cli.KV = boundedKV{KV: cli.KV, d: requestTimeout}

	sctx, cancel := context.WithCancel(context.Background())
	s := &Store{
		cli:         cli,
		prefix:      prefix,
		endpoints:   endpoints,
		dialTimeout: dialTimeout,
		watchBuffer: watchBuffer,
		ctx:         sctx,
		cancel:      cancel,
		done:        make(chan struct{}),
		watchers:    make(map[*watcher]struct{}),
	}
	// The client connects lazily; the first session's read is the proof
	// that an endpoint answers (and that the credentials are good).
	octx, ocancel := context.WithTimeout(ctx, dialTimeout)
	wch, from, err := s.startSession(octx, 0)
	ocancel()
	if err != nil && cfg.AllowUnreachable && ctx.Err() == nil && !isAuthError(err) {
		s.unreached = fmt.Errorf("open etcd store at %s: no answer within %v: %w", endpoints, dialTimeout, err)
		go s.run(nil, 0)
		return s, nil
	}
	if err != nil {
		cancel()
		cli.Close()
		switch {
		case isAuthError(err):
			err = fmt.Errorf("%w: %v", ErrAuth, err)
		case ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded):
			err = fmt.Errorf("no answer within %v: %w", dialTimeout, err)
		}
		return nil, fmt.Errorf("open etcd store at %s: %w", endpoints, err)
	}
	go s.run(wch, from)
	ictx, icancel := context.WithTimeout(ctx, 5*dialTimeout)
	err = s.buildIndexes(ictx)
	icancel()
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("open etcd store at %s: build token indexes: %w", endpoints, err)
	}
	return s, nil
}

// NormalPrefix is the key prefix a Config.Prefix stands for: DefaultPrefix
// when empty, with a trailing "/".
func NormalPrefix(prefix string) string {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return prefix
}

// Unreached says why Open returned without an answer from the cluster
// (Config.AllowUnreachable), or nil when it had one. It does not change
// once Open has returned: the etcd watch starts in the background when an
// endpoint answers.
func (s *Store) Unreached() error { return s.unreached }

// Close ends every watch (closing the channels), stops the etcd watch and
// closes the connection. Calls after Close return store.ErrClosed; a second
// Close returns nil. A write racing with Close may have committed even
// though it returns ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		return nil
	}
	s.closed.Store(true)
	for w := range s.watchers {
		s.dropLocked(w)
	}
	s.mu.Unlock()

	s.cancel()
	<-s.done
	if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("close etcd store at %s: %w", s.endpoints, err)
	}
	return nil
}

func (s *Store) usable(ctx context.Context) error { return store.Usable(ctx, s.closed.Load()) }

// fail reports an error from the cluster: a call that raced with Close as
// store.ErrClosed, one whose context ended as that context's error.
func (s *Store) fail(ctx context.Context, err error) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		err = fmt.Errorf("%w: %w", cerr, err) // keep err's type: a refusal stays one
	}
	if unavailable(err) {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	return err
}

// unavailable: the cluster did not answer (no endpoint reachable, no
// leader, the request's time ran out), as against a refusal.
func unavailable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return errors.Is(err, rpctypes.ErrNoLeader) || errors.Is(err, rpctypes.ErrTimeout) || errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail) || errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost)
}

func (s *Store) key(ns, id string) string { return s.prefix + ns + id }

func (s *Store) leakKey(h [32]byte) string { return s.key(nsLeak, hex.EncodeToString(h[:])) }

// currentRevision returns the cluster's revision now, by a linearizable
// read: every write acknowledged before the call is at or below it.
func (s *Store) currentRevision(ctx context.Context) (int64, error) {
	resp, err := s.cli.Get(ctx, s.prefix, clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// LogValue keeps the password out of structured logs.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(slog.Any("endpoints", c.Endpoints), slog.String("prefix", c.Prefix), slog.String("username", c.Username))
}
