package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/tokenwarden/tokenwarden/agent/atomicfile"
)

// ErrTLS is returned by Open when no endpoint completes a TLS handshake
// with the given configuration: the server's certificate is not signed by
// the CA, or the server refused the client certificate.
var ErrTLS = errors.New("TLS handshake with etcd failed")

// ErrAuth is returned by Open when the cluster refuses the username and
// password (or requires them and none were given).
var ErrAuth = errors.New("etcd refused the credentials")

// maxPEMBytes bounds each certificate or key file read by ClientTLS.
const maxPEMBytes = 1 << 20

// ClientTLS builds the client TLS configuration from PEM files: caFile
// holds the CA certificates that sign the servers' certificates (empty:
// the system pool), certFile and keyFile the client certificate (both or
// neither). The minimum version is TLS 1.2.
func ClientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := readPEM(caFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("a client certificate needs both its certificate file and its key file")
	}
	if certFile != "" {
		certPEM, err := readPEM(certFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate file: %w", err)
		}
		keyPEM, err := readPEM(keyFile)
		if err != nil {
			return nil, fmt.Errorf("client key file: %w", err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("client certificate %s with key %s: %w", certFile, keyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// readPEM reads a certificate or key file: a regular file of at most
// maxPEMBytes (atomicfile.Read).
func readPEM(path string) ([]byte, error) {
	b, _, err := atomicfile.Read(path, maxPEMBytes)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}

// checkTLS completes a TLS handshake with the endpoints in turn and returns
// nil at the first that succeeds. The etcd client dials lazily and retries
// a failed handshake until its deadline, so without this check a wrong CA
// would surface as "no answer".
func checkTLS(ctx context.Context, endpoints []string, cfg *tls.Config, timeout time.Duration) error {
	var errs []error
	undialled := 0
	for _, ep := range endpoints {
		host := ep
		if u, err := url.Parse(ep); err == nil && u.Host != "" {
			if u.Scheme != "https" && u.Scheme != "unixs" {
				errs = append(errs, fmt.Errorf("%s: TLS is configured but the endpoint is not https://", ep))
				continue
			}
			host = u.Host
		}
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: cfg.Clone()}
		dctx, cancel := context.WithTimeout(ctx, timeout)
		conn, err := d.DialContext(dctx, "tcp", host)
		cancel()
		if err == nil {
			// A server that requires a client certificate may refuse it
			// only after the client's Finished; read to see the alert.
			conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			_, rerr := conn.Read(make([]byte, 1))
			conn.Close()
			var ne net.Error
			if rerr == nil || errors.Is(rerr, io.EOF) || (errors.As(rerr, &ne) && ne.Timeout()) {
				return nil
			}
			err = rerr
		}
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			undialled++
		}
		errs = append(errs, fmt.Errorf("%s: %w", ep, err))
	}
	if undialled == len(endpoints) {
		return fmt.Errorf("%w: %w", errNoDial, errors.Join(errs...))
	}
	return fmt.Errorf("%w: %w", ErrTLS, errors.Join(errs...))
}

// errNoDial is checkTLS's answer when no endpoint could be dialled: the
// cluster is unreachable, which says nothing of TLS.
var errNoDial = errors.New("no endpoint answers")

// requestDeadline gives each unary request without an earlier deadline one
// of d, so a cluster that accepts connections but does not answer (lost
// quorum) fails requests instead of hanging them.
func requestDeadline(d time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > d {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

func isAuthError(err error) bool {
	for _, e := range []error{rpctypes.ErrAuthFailed, rpctypes.ErrUserEmpty, rpctypes.ErrPermissionDenied, rpctypes.ErrInvalidAuthToken, rpctypes.ErrAuthOldRevision} {
		if errors.Is(err, e) || strings.Contains(err.Error(), e.Error()) {
			return true
		}
	}
	return false
}

// boundedKV bounds every key-value call without a deadline to d as a
// whole, retries included: the client retries a failed attempt up to a
// hundred times, so a bound on each attempt alone lets a call to an
// unreachable cluster hang for minutes. A caller's deadline is kept.
type boundedKV struct {
	clientv3.KV
	d time.Duration
}

func (k boundedKV) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, k.d)
}

func (k boundedKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	ctx, cancel := k.bound(ctx)
	defer cancel()
	return k.KV.Get(ctx, key, opts...)
}

func (k boundedKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	ctx, cancel := k.bound(ctx)
	defer cancel()
	return k.KV.Put(ctx, key, val, opts...)
}

func (k boundedKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	ctx, cancel := k.bound(ctx)
	defer cancel()
	return k.KV.Delete(ctx, key, opts...)
}

func (k boundedKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	ctx, cancel := k.bound(ctx)
	defer cancel()
	return k.KV.Do(ctx, op)
}

func (k boundedKV) Txn(ctx context.Context) clientv3.Txn {
	ctx, cancel := k.bound(ctx)
	return boundedTxn{Txn: k.KV.Txn(ctx), cancel: cancel}
}

// boundedTxn releases its bound when committed.
type boundedTxn struct {
	clientv3.Txn
	cancel context.CancelFunc
}

func (t boundedTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	return boundedTxn{Txn: t.Txn.If(cs...), cancel: t.cancel}
}

func (t boundedTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	return boundedTxn{Txn: t.Txn.Then(ops...), cancel: t.cancel}
}

func (t boundedTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	return boundedTxn{Txn: t.Txn.Else(ops...), cancel: t.cancel}
}

func (t boundedTxn) Commit() (*clientv3.TxnResponse, error) {
	defer t.cancel()
	return t.Txn.Commit()
}
