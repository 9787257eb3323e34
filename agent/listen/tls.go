package listen

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/agent/atomicfile"
)

// TLSFiles is the transport security of the agent's TCP listeners: one
// certificate the agent serves on every TCP listener, and per listener an
// optional CA that client certificates must chain to (mTLS). Unix socket
// listeners stay plain: the socket file's permissions decide who connects.
type TLSFiles struct {
	CertFile string // PEM certificate chain, leaf first
	KeyFile  string // PEM private key of the leaf
	// MinVersion is "1.2" (the default when "") or "1.3".
	MinVersion string
	ClientCAs  ClientCAs
}

// ClientCAs name, per listener, a PEM bundle of the CAs its clients'
// certificates must chain to. Set, the listener requires and verifies a
// client certificate; "" serves TLS without asking for one.
type ClientCAs struct {
	Admin, Metrics, AuthzGRPC, AuthzHTTP, XDS string
}

// For is the client CA file of the listener name ("" when none).
func (c ClientCAs) For(name string) string {
	switch name {
	case AdminListener:
		return c.Admin
	case MetricsListener:
		return c.Metrics
	case AuthzGRPCListener:
		return c.AuthzGRPC
	case AuthzHTTPListener:
		return c.AuthzHTTP
	case XDSListener:
		return c.XDS
	}
	return ""
}

// The enforcement listeners' names (AdminListener and MetricsListener are
// in budget.go).
const (
	AuthzGRPCListener = "authz-grpc"
	AuthzHTTPListener = "authz-http"
	XDSListener       = "xds"
)

// Enabled reports whether TLS is configured.
func (f TLSFiles) Enabled() bool { return f.CertFile != "" || f.KeyFile != "" }

// Version is the MinVersion as a crypto/tls constant.
func (f TLSFiles) Version() (uint16, error) {
	switch f.MinVersion {
	case "", "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("TLS minimum version %q: want 1.2 or 1.3", f.MinVersion)
}

// Bounds on the files read: a certificate chain or a CA bundle is a few
// KiB; a trust bundle of a large mesh stays well under this.
const maxTLSFileBytes = 1 << 20

// DefaultTLSPoll is how often the certificate, key and CA files are
// checked for changes. cert-manager and SPIRE renew well before expiry,
// so a poll of stat (which sees Kubernetes' symlink swap of a Secret
// volume, where inotify on the file would not) is prompt enough.
const DefaultTLSPoll = 5 * time.Second

// Reloader serves the agent's TLS from files and re-reads them when they
// change (a new inode, size or modification time of any of them). A
// rotation is all or nothing: a certificate that does not match its key,
// or a CA file that does not parse, leaves the previous material in use
// (and is retried at the next poll), so a half-written rotation never
// takes a listener down. Established connections keep the material they
// were handshaken with; each new handshake takes the current one.
type Reloader struct {
	files   TLSFiles
	version uint16
	log     *slog.Logger

	cur     atomic.Pointer[tlsMaterial]
	mu      sync.Mutex // serialises Check
	failed  string     // the stamp of the last refused rotation (logged once)
	metrics *tlsMetrics
}

// tlsMaterial is one consistent set of the files' contents.
type tlsMaterial struct {
	stamp   string
	cert    *tls.Certificate
	configs map[string]*tls.Config // per listener
}

// NewReloader reads the files; an error names the file at fault. reg, if
// not nil, receives the TLS metrics.
func NewReloader(files TLSFiles, reg prometheus.Registerer, log *slog.Logger) (*Reloader, error) {
	if files.CertFile == "" || files.KeyFile == "" {
		return nil, errors.New("TLS needs both a certificate file and a key file")
	}
	v, err := files.Version()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	r := &Reloader{files: files, version: v, log: log}
	if reg != nil {
		if r.metrics, err = newTLSMetrics(reg, r); err != nil {
			return nil, err
		}
	}
	stamp, err := r.stamp()
	if err != nil {
		return nil, err
	}
	m, err := r.load(stamp)
	if err != nil {
		return nil, err
	}
	r.cur.Store(m)
	return r, nil
}

// paths are the files the reloader reads, certificate and key first.
func (r *Reloader) paths() []string {
	ps := []string{r.files.CertFile, r.files.KeyFile}
	for _, name := range []string{AdminListener, MetricsListener, AuthzGRPCListener, AuthzHTTPListener, XDSListener} {
		if ca := r.files.ClientCAs.For(name); ca != "" {
			ps = append(ps, ca)
		}
	}
	return ps
}

// stamp identifies the files' current versions: device, inode, size and
// modification time of each, symlinks followed.
func (r *Reloader) stamp() (string, error) {
	var b bytes.Buffer
	for _, p := range r.paths() {
		fi, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s|%d|%d", p, fi.Size(), fi.ModTime().UnixNano())
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			fmt.Fprintf(&b, "|%d|%d", st.Dev, st.Ino)
		}
		b.WriteByte('\n')
	}
	return b.String(), nil
}

// load reads every file and builds each listener's configuration.
func (r *Reloader) load(stamp string) (*tlsMaterial, error) {
	certPEM, err := readBounded(r.files.CertFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readBounded(r.files.KeyFile)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate %s with key %s: %w", r.files.CertFile, r.files.KeyFile, err)
	}
	m := &tlsMaterial{stamp: stamp, cert: &cert, configs: map[string]*tls.Config{}}
	pools := map[string]*x509.CertPool{}
	for _, name := range []string{AdminListener, MetricsListener, AuthzGRPCListener, AuthzHTTPListener, XDSListener} {
		cfg := &tls.Config{
			MinVersion:   r.version,
			Certificates: []tls.Certificate{cert},
			NextProtos:   nextProtos(name),
		}
		if ca := r.files.ClientCAs.For(name); ca != "" {
			pool, ok := pools[ca]
			if !ok {
				if pool, err = readPool(ca); err != nil {
					return nil, err
				}
				pools[ca] = pool
			}
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
			cfg.ClientCAs = pool
			// Every connection is verified against the CA in force
			// when it is made: no resumption of a session verified
			// against a bundle rotated out since.
			cfg.SessionTicketsDisabled = true
		}
		m.configs[name] = cfg
	}
	return m, nil
}

// nextProtos is the ALPN a listener speaks: HTTP/2 for gRPC (grpc-go
// clients require it negotiated), HTTP/1.1 for the HTTP listeners.
func nextProtos(name string) []string {
	switch name {
	case AuthzGRPCListener, XDSListener:
		return []string{"h2"}
	}
	return []string{"http/1.1"}
}

// readBounded reads one of the TLS files: a regular file of at most
// maxTLSFileBytes (atomicfile.Read).
func readBounded(path string) ([]byte, error) {
	b, _, err := atomicfile.Read(path, maxTLSFileBytes)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}

func readPool(path string) (*x509.CertPool, error) {
	b, err := readBounded(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("client CA file %s holds no PEM certificate", path)
	}
	return pool, nil
}

// Check re-reads the files if any of them changed since the material in
// use was read, and reports whether new material is now served.
func (r *Reloader) Check() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	stamp, err := r.stamp()
	if err == nil && stamp == r.cur.Load().stamp {
		return false
	}
	if err == nil {
		var m *tlsMaterial
		if m, err = r.load(stamp); err == nil {
			r.cur.Store(m)
			r.failed = ""
			r.metrics.reloaded("ok")
			r.log.Info("TLS certificate reloaded", "cert", r.files.CertFile, "not_after", m.cert.Leaf.NotAfter)
			return true
		}
	}
	// A rotation in progress (a file written, its partner not yet) is
	// retried at the next poll; the error is logged once per version.
	if stamp != r.failed {
		r.failed = stamp
		r.metrics.reloaded("error")
		r.log.Error("TLS files changed but cannot be used; the previous certificate stays in use", "err", err)
	}
	return false
}

// Run checks the files every interval until ctx ends.
func (r *Reloader) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.Check()
		}
	}
}

// NotAfter is when the served certificate expires.
func (r *Reloader) NotAfter() time.Time { return r.cur.Load().cert.Leaf.NotAfter }

// Config is the TLS configuration of listener name: each handshake takes
// the material current at that moment.
func (r *Reloader) Config(name string) *tls.Config {
	return &tls.Config{
		MinVersion: r.version,
		NextProtos: nextProtos(name),
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return r.cur.Load().configs[name], nil
		},
	}
}

// Secure wraps lis so that it serves TLS with r's material for listener
// name, unless lis is a unix socket (kept plain) or r is nil (TLS off).
func Secure(lis net.Listener, name string, r *Reloader) net.Listener {
	if r == nil || lis.Addr().Network() == "unix" {
		return lis
	}
	return tls.NewListener(lis, r.Config(name))
}

// tlsMetrics tell an operator that rotation works before a certificate
// expires. Two series and two label values.
type tlsMetrics struct {
	reloads *prometheus.CounterVec
}

func newTLSMetrics(reg prometheus.Registerer, r *Reloader) (*tlsMetrics, error) {
	m := &tlsMetrics{reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenwarden_tls_reloads_total",
		Help: "Changes of the TLS certificate, key or client CA files seen, by result (ok: served from the next handshake; error: refused, the previous material stays).",
	}, []string{"result"})}
	expiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tokenwarden_tls_certificate_expiry_timestamp_seconds",
		Help: "When the certificate the listeners serve expires (Unix time).",
	}, func() float64 {
		if m := r.cur.Load(); m != nil {
			return float64(m.cert.Leaf.NotAfter.Unix())
		}
		return 0
	})
	for _, c := range []prometheus.Collector{m.reloads, expiry} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m.reloads.WithLabelValues("ok")
	m.reloads.WithLabelValues("error")
	return m, nil
}

func (m *tlsMetrics) reloaded(result string) {
	if m != nil {
		m.reloads.WithLabelValues(result).Inc()
	}
}
