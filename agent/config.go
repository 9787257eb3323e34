package agent

import (
	"cmp"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/authz"
	"github.com/tokenwarden/tokenwarden/agent/freshness"
	"github.com/tokenwarden/tokenwarden/agent/kernel"
	"github.com/tokenwarden/tokenwarden/agent/listen"
	"github.com/tokenwarden/tokenwarden/agent/retention"
	"github.com/tokenwarden/tokenwarden/agent/revocation"
	etcdstore "github.com/tokenwarden/tokenwarden/agent/store/etcd"
	"github.com/tokenwarden/tokenwarden/agent/usage"
	"github.com/tokenwarden/tokenwarden/xds"
)

// Config is everything the agent needs; cli fills it from flags. An empty
// listen address disables that listener, for every listener alike.
type Config struct {
	DataDir    string
	PolicyPath string
	Env        string

	AdminAddr   string // admin API, /healthz, /readyz
	MetricsAddr string // Prometheus /metrics

	AuthzGRPCAddr string // ext_authz gRPC: host:port or unix socket path
	AuthzHTTPAddr string // ext_authz HTTP mode (Envoy HTTP, nginx, Caddy)
	XDSAddr       string // ADS for the node's sidecars
	// XDSAuthzAddress is the ext_authz address as sidecars reach it
	// (default AuthzGRPCAddr); XDSAppAddress is the application behind
	// each sidecar (default xds.DefaultAppAddress).
	XDSAuthzAddress string
	XDSAppAddress   string
	// XDSAuthzTLS makes the sidecars dial ext_authz over TLS (files on
	// the sidecars' file system).
	XDSAuthzTLS xds.UpstreamTLS
	// XDSCredentials is the file of sidecar credentials that decide each
	// sidecar's service (docs/xds.md); without it every xDS stream is
	// refused, unless XDSAllowUnauthenticated (development only).
	XDSCredentials          string
	XDSAllowUnauthenticated bool
	// SecretScanningKeys is GitHub's secret scanning public key document;
	// set, the admin listener receives GitHub's alerts (docs/leaks.md).
	// SecretScanningKeysURL, optional, is fetched for keys GitHub rotated in.
	SecretScanningKeys    string
	SecretScanningKeysURL string
	// StripAuthorization removes Authorization from allowed requests
	// before the application sees them (the kernel side then cannot count
	// them where the application receives them).
	StripAuthorization bool
	// ClientCertHeader is authz.Config.ClientCertHeader: where HTTP mode
	// reads the peer's workload identity; "" reads none.
	ClientCertHeader string
	// Connections bounds each enforcement listener (ext_authz, xDS); zero
	// fields are derived from RLIMIT_NOFILE (see listen.NewPlan).
	Connections listen.Limits
	// TLS serves every TCP listener over TLS, with mTLS where a listener
	// has a client CA; unix sockets stay plain (docs/security.md).
	TLS listen.TLSFiles

	BPF           string   // kernel.ModeAuto (default), ModeRequired or ModeOff
	BPFInterfaces []string // TCX attach points
	BPFCgroup     string   // cgroup_skb attach point

	// StoreBackend is StoreBolt (one file in DataDir, the default) or
	// StoreEtcd (many nodes share EtcdEndpoints; a revocation made on any
	// node is enforced on all). The admin token and audit log stay in
	// DataDir on each node. See state.go.
	StoreBackend  string
	EtcdEndpoints []string
	EtcdPrefix    string
	Etcd          EtcdAccess
	// KEKFile is the key-encryption key every agent of a mesh shares (a
	// Kubernetes Secret). Required with StoreEtcd; with StoreBolt the
	// default is DataDir/kek, created on first start.
	KEKFile string
	// MaxStaleness bounds how old this node's view of the etcd store may
	// be (freshness.DefaultMaxStaleness when zero); past it /readyz fails
	// and checks are decided under StaleAction: ActionServe (the default)
	// keeps deciding on the rules the node has, ActionDeny denies every
	// check with store_unavailable (503). No effect with StoreBolt.
	MaxStaleness time.Duration
	StaleAction  string

	// NodeName names this node's audit chain head in the store (default:
	// DefaultNodeName). Nodes sharing a store need distinct names.
	NodeName string
	// AuditMaxBytes is the audit log's size budget (default
	// audit.DefaultMaxTotalBytes); the oldest files go beyond it.
	AuditMaxBytes int64

	CacheSize int // verified tokens remembered (DefaultCacheSize when zero)
	TopTokens int // per-token metric series kept (DefaultTopTokens when zero; negative: none)
	// MetricsTokenLabels says what per-token series carry: none (the
	// default: no per-token series), id, or id+subject (usage.TokenLabels).
	MetricsTokenLabels string
	// MetricsBearerFile, when set, holds the bearer token /metrics
	// requires (re-read when it changes; scrape.Bearer).
	MetricsBearerFile string

	// Timing overrides the agent's intervals (tests); zero fields keep
	// their defaults.
	Timing Timing

	// OnReady, if set, is called once every listener is up.
	OnReady func(Ready)
	Logger  *slog.Logger
	Now     func() time.Time
}

// Timing is how often the agent's loops run.
type Timing struct {
	PolicyPoll   time.Duration // policy file checked for changes (DefaultPolicyPoll)
	Kernel       time.Duration // kernel counters read (kernel.DefaultEvery)
	Housekeeping time.Duration // in-memory pruning, admin token refresh (DefaultHousekeeping)
	Retention    time.Duration // store pruning (retention.DefaultEvery)
	TLSPoll      time.Duration // TLS files checked for changes (listen.DefaultTLSPoll)
}

// Defaults. Each lives once: the CLI's flags and the parts' own defaults
// refer to these.
const (
	DefaultAdminAddr   = "127.0.0.1:9003"
	DefaultMetricsAddr = "127.0.0.1:9090"
	DefaultAuthzGRPC   = xds.DefaultAuthzAddress // where sidecars find ext_authz by default
	DefaultAuthzHTTP   = "127.0.0.1:9002"
	DefaultXDSAddr     = xds.DefaultServeAddress
	DefaultEtcdPrefix  = etcdstore.DefaultPrefix
	DefaultCacheSize   = revocation.DefaultCacheSize
	DefaultTopTokens   = authz.DefaultTopTokens
	// DefaultMetricsTokenLabels: no per-token series (least exposure).
	DefaultMetricsTokenLabels = string(usage.LabelsNone)
	DefaultBPF                = kernel.ModeAuto
	DefaultStore              = StoreBolt
	DefaultStaleAction        = string(freshness.ActionServe)
	// DefaultMaxStaleness is freshness.DefaultMaxStaleness.
	DefaultMaxStaleness = freshness.DefaultMaxStaleness

	// DefaultPolicyPoll is how often the policy file is checked for
	// changes. A poll of the content (not inotify) also sees Kubernetes
	// ConfigMap updates, which swap a symlink rather than write the file.
	DefaultPolicyPoll = 2 * time.Second
	// DefaultHousekeeping is how often rules and cached tokens past every
	// possible exp are dropped from memory and the admin token refreshed.
	DefaultHousekeeping = time.Minute
)

// Store backends.
const (
	StoreBolt = "bolt"
	StoreEtcd = "etcd"
)

// Files in the data directory.
const (
	kekFile   = "kek"
	storeFile = "tokenwarden.db"
	auditDir  = "audit"
)

// DefaultNodeName names the audit chain of the agent using dataDir when no
// node name is given: the host name and a digest of the data dir's absolute
// path, so two agents on one host (tests, a mesh on a laptop) keep apart.
func DefaultNodeName(dataDir string) (string, error) {
	host, err := os.Hostname()
	if err == nil {
		dataDir, err = filepath.Abs(dataDir)
	}
	if err != nil {
		return "", fmt.Errorf("node name: %w; set a node name", err)
	}
	sum := sha256.Sum256([]byte(dataDir))
	return fmt.Sprintf("%s-%x", host, sum[:4]), nil
}

// FieldError is a Config field with a bad value. Field is the Go field name;
// the CLI names its flag.
type FieldError struct {
	Field string
	Value string
	Msg   string
}

func (e *FieldError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("%s: %s", e.Field, e.Msg)
	}
	return fmt.Sprintf("%s %q: %s", e.Field, e.Value, e.Msg)
}

func fieldErr(field, value, format string, args ...any) error {
	return &FieldError{Field: field, Value: value, Msg: fmt.Sprintf(format, args...)}
}

// withDefaults fills the fields whose zero value means "the default".
func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	c.BPF = cmp.Or(c.BPF, DefaultBPF)
	c.StoreBackend = cmp.Or(c.StoreBackend, DefaultStore)
	c.EtcdPrefix = cmp.Or(c.EtcdPrefix, DefaultEtcdPrefix)
	c.MaxStaleness = cmp.Or(c.MaxStaleness, DefaultMaxStaleness)
	c.StaleAction = cmp.Or(c.StaleAction, DefaultStaleAction)
	c.CacheSize = cmp.Or(c.CacheSize, DefaultCacheSize)
	c.TopTokens = cmp.Or(c.TopTokens, DefaultTopTokens)
	c.MetricsTokenLabels = cmp.Or(c.MetricsTokenLabels, DefaultMetricsTokenLabels)
	c.XDSAuthzAddress = cmp.Or(c.XDSAuthzAddress, c.AuthzGRPCAddr)
	c.Timing.PolicyPoll = cmp.Or(c.Timing.PolicyPoll, DefaultPolicyPoll)
	c.Timing.Housekeeping = cmp.Or(c.Timing.Housekeeping, DefaultHousekeeping)
	c.Timing.Retention = cmp.Or(c.Timing.Retention, retention.DefaultEvery)
	c.Timing.TLSPoll = cmp.Or(c.Timing.TLSPoll, listen.DefaultTLSPoll)
	return c
}

// Validate checks every setting before anything is created on disk: a bad
// store, kernel mode or address is refused before the data directory, the
// key-encryption key or the audit log exist. It validates the Config as New
// would use it (defaults filled in).
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	for field, v := range map[string]string{"DataDir": c.DataDir, "PolicyPath": c.PolicyPath, "Env": c.Env} {
		if v == "" {
			errs = append(errs, fieldErr(field, "", "required"))
		}
	}
	for _, a := range []struct {
		field, addr string
		unix        bool
	}{
		{"AdminAddr", c.AdminAddr, false},
		{"MetricsAddr", c.MetricsAddr, false},
		{"AuthzGRPCAddr", c.AuthzGRPCAddr, true},
		{"AuthzHTTPAddr", c.AuthzHTTPAddr, true},
		{"XDSAddr", c.XDSAddr, true},
	} {
		if err := checkAddr(a.addr, a.unix); err != nil {
			errs = append(errs, fieldErr(a.field, a.addr, "%v", err))
		}
	}
	if err := kernel.ValidMode(c.BPF); err != nil {
		errs = append(errs, fieldErr("BPF", c.BPF, "want %s, %s or %s", kernel.ModeAuto, kernel.ModeRequired, kernel.ModeOff))
	} else if c.BPF == kernel.ModeRequired && len(c.BPFInterfaces) == 0 && c.BPFCgroup == "" {
		errs = append(errs, fieldErr("BPF", c.BPF, "the kernel side is required but has nothing to attach to: give BPFInterfaces and/or BPFCgroup"))
	}
	if c.BPFCgroup != "" && !filepath.IsAbs(c.BPFCgroup) {
		errs = append(errs, fieldErr("BPFCgroup", c.BPFCgroup, "want an absolute path, e.g. /sys/fs/cgroup"))
	}
	switch c.StoreBackend {
	case StoreBolt:
	case StoreEtcd:
		if len(c.EtcdEndpoints) == 0 {
			errs = append(errs, fieldErr("EtcdEndpoints", "", "the etcd store needs at least one endpoint (e.g. http://10.0.0.5:2379)"))
		}
		if c.KEKFile == "" {
			errs = append(errs, fieldErr("KEKFile", "", "the etcd store needs the key-encryption key every agent of the mesh shares (a Kubernetes Secret); it is never generated on one node"))
		}
		for _, e := range c.EtcdEndpoints {
			if !strings.HasPrefix(e, "http://") && !strings.HasPrefix(e, "https://") {
				errs = append(errs, fieldErr("EtcdEndpoints", e, "want a client URL, http://HOST:PORT or https://HOST:PORT"))
			}
		}
	default:
		errs = append(errs, fieldErr("StoreBackend", c.StoreBackend, "want %s or %s", StoreBolt, StoreEtcd))
	}
	errs = append(errs, c.validateTLS()...)
	if c.MaxStaleness < 0 {
		errs = append(errs, fieldErr("MaxStaleness", c.MaxStaleness.String(), "want a positive duration, e.g. 2s"))
	}
	if a := freshness.Action(c.StaleAction); a != freshness.ActionServe && a != freshness.ActionDeny {
		errs = append(errs, fieldErr("StaleAction", c.StaleAction, "want %s or %s", freshness.ActionServe, freshness.ActionDeny))
	}
	if c.AuditMaxBytes < 0 {
		errs = append(errs, fieldErr("AuditMaxBytes", fmt.Sprint(c.AuditMaxBytes), "want a positive number of bytes"))
	}
	if c.CacheSize < 0 {
		errs = append(errs, fieldErr("CacheSize", fmt.Sprint(c.CacheSize), "want a positive number"))
	}
	if _, err := usage.ParseTokenLabels(c.MetricsTokenLabels); err != nil {
		errs = append(errs, fieldErr("MetricsTokenLabels", c.MetricsTokenLabels, "want %s, %s or %s", usage.LabelsNone, usage.LabelsID, usage.LabelsIDSubject))
	}
	return errors.Join(errs...)
}

// checkAddr accepts "" (disabled), host:port, and with unix a socket path
// (unix:///path, unix:/path or /path).
func checkAddr(addr string, unix bool) error {
	if addr == "" {
		return nil
	}
	if path, isUnix := listen.SocketPath(addr); isUnix && unix {
		if !strings.HasPrefix(path, "/") {
			return errors.New("want an absolute socket path, e.g. unix:///run/tokenwarden/authz.sock")
		}
		return nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		if unix {
			return errors.New("want host:port or a unix socket (unix:///path)")
		}
		return errors.New("want host:port")
	}
	return nil
}

// validateTLS checks the TLS settings: a certificate comes with its key,
// and a client CA (mTLS) only where TLS is served, so that no listener an
// operator meant to require client certificates on serves without them.
func (c Config) validateTLS() []error {
	t := c.TLS
	var errs []error
	if (t.CertFile == "") != (t.KeyFile == "") {
		errs = append(errs, fieldErr("TLS.CertFile", t.CertFile, "a TLS certificate needs its key and a key its certificate: give both"))
	}
	if _, err := t.Version(); err != nil {
		errs = append(errs, fieldErr("TLS.MinVersion", t.MinVersion, "want 1.2 or 1.3"))
	}
	for _, l := range []struct{ field, name, addr string }{
		{"TLS.ClientCAs.Admin", listen.AdminListener, c.AdminAddr},
		{"TLS.ClientCAs.Metrics", listen.MetricsListener, c.MetricsAddr},
		{"TLS.ClientCAs.AuthzGRPC", listen.AuthzGRPCListener, c.AuthzGRPCAddr},
		{"TLS.ClientCAs.AuthzHTTP", listen.AuthzHTTPListener, c.AuthzHTTPAddr},
		{"TLS.ClientCAs.XDS", listen.XDSListener, c.XDSAddr},
	} {
		ca := t.ClientCAs.For(l.name)
		if ca == "" {
			continue
		}
		if !t.Enabled() {
			errs = append(errs, fieldErr(l.field, ca, "client certificates are verified only over TLS: give the agent's certificate and key too"))
		} else if _, isUnix := listen.SocketPath(l.addr); isUnix && l.addr != "" {
			errs = append(errs, fieldErr(l.field, ca, "the %s listener is a unix socket, which is never TLS: its file's permissions decide who connects; drop the CA or listen on host:port", l.name))
		}
	}
	return errs
}
