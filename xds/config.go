package xds

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenwarden/tokenwarden/agent/listen"
)

// Defaults of Config.
const (
	DefaultInboundAddress = "0.0.0.0"
	DefaultInboundPort    = 15006
	DefaultAppAddress     = "127.0.0.1:8080"
	DefaultAuthzAddress   = "127.0.0.1:9001"
	DefaultAuthzTimeout   = 250 * time.Millisecond

	// DefaultServeAddress is where `serve --xds` listens by default.
	DefaultServeAddress = "127.0.0.1:18000"

	// DefaultMaxNodes bounds the sidecars (and so the snapshots) one
	// server holds. A node runs at most a few hundred pods.
	DefaultMaxNodes = 1024
)

// unixPrefix marks a unix socket address: unix:///run/tokenwarden/xds.sock.
const unixPrefix = "unix:"

// Config says what a sidecar's configuration looks like and how the server
// reports. The zero value is usable: every empty field takes its default.
type Config struct {
	// InboundAddress and InboundPort are where the sidecar's inbound listener
	// binds (defaults 0.0.0.0 and 15006).
	InboundAddress string
	InboundPort    uint32

	// AppAddress is the local application the sidecar forwards requests to:
	// IP:port or unix:///path (default 127.0.0.1:8080).
	AppAddress string

	// AuthzAddress is the agent's ext_authz gRPC endpoint as the sidecar
	// reaches it: IP:port or unix:///path (default 127.0.0.1:9001). Inside a
	// pod, 127.0.0.1 is the pod itself: point it at the node agent's socket
	// (hostPath) or the node's IP.
	AuthzAddress string

	// AuthzTLS, when its CAFile is set, makes the sidecar dial ext_authz
	// over TLS (an Envoy transport_socket on the ext_authz cluster), with a
	// client certificate when CertFile is set: the agent's
	// --authz-grpc-client-ca then admits it.
	AuthzTLS UpstreamTLS

	// AuthzTimeout bounds one ext_authz check (default 250ms). A check that
	// times out is answered 503, never allowed.
	AuthzTimeout time.Duration

	// Credentials decide each sidecar's service: a stream is admitted when
	// it presents a credential of the file (CredentialHeader call metadata
	// or CredentialMetadataKey node metadata), and its sidecar serves that
	// credential's service, whatever the node claims. Nil admits none,
	// unless AllowUnauthenticated.
	Credentials *Credentials

	// AllowUnauthenticated admits streams that present no credential, and
	// lets them name their own service (NodeService). Anyone who reaches
	// the port can then choose which service's routes a node id gets: for
	// local development only. A credential presented is still checked.
	AllowUnauthenticated bool

	// MaxNodes bounds the sidecars connected at once (default
	// DefaultMaxNodes); streams of further nodes are refused.
	MaxNodes int

	// Registerer receives the tokenwarden_xds_* metrics; nil registers none.
	Registerer prometheus.Registerer

	// Streams bound the ADS streams open at once; zero means
	// StreamLimits.
	Streams listen.CallLimits

	// ListenerMetrics counts streams refused over Streams; nil counts
	// none.
	ListenerMetrics *listen.Metrics

	// Logger receives the server's logs; nil means slog.Default().
	Logger *slog.Logger
}

// withDefaults returns c with every empty field set to its default and
// checks the result.
func (c Config) withDefaults() (Config, error) {
	if c.InboundAddress == "" {
		c.InboundAddress = DefaultInboundAddress
	}
	if c.InboundPort == 0 {
		c.InboundPort = DefaultInboundPort
	}
	if c.AppAddress == "" {
		c.AppAddress = DefaultAppAddress
	}
	if c.Streams == (listen.CallLimits{}) {
		c.Streams = StreamLimits
	}
	if c.AuthzAddress == "" {
		c.AuthzAddress = DefaultAuthzAddress
	}
	if c.AuthzTimeout == 0 {
		c.AuthzTimeout = DefaultAuthzTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MaxNodes == 0 {
		c.MaxNodes = DefaultMaxNodes
	}
	var errs []error
	if c.MaxNodes < 0 {
		errs = append(errs, fmt.Errorf("max nodes %d: want a positive number", c.MaxNodes))
	}
	if net.ParseIP(c.InboundAddress) == nil {
		errs = append(errs, fmt.Errorf("inbound address %q: want an IP address such as 0.0.0.0", c.InboundAddress))
	}
	if c.InboundPort > 65535 {
		errs = append(errs, fmt.Errorf("inbound port %d: want 1-65535", c.InboundPort))
	}
	if _, err := parseEndpoint(c.AppAddress); err != nil {
		errs = append(errs, fmt.Errorf("app address: %w", err))
	}
	if _, err := parseEndpoint(c.AuthzAddress); err != nil {
		errs = append(errs, fmt.Errorf("authz address: %w", err))
	}
	if err := c.AuthzTLS.check(c.AuthzAddress); err != nil {
		errs = append(errs, fmt.Errorf("authz TLS: %w", err))
	}
	if c.AuthzTimeout < 0 {
		errs = append(errs, fmt.Errorf("authz timeout %s: want a positive duration such as 250ms", c.AuthzTimeout))
	}
	return c, errors.Join(errs...)
}

// endpoint is a parsed IP:port or unix socket address.
type endpoint struct {
	unixPath string // set for a unix socket
	ip       string
	port     uint32
}

// parseEndpoint reads IP:port, unix:///abs/path or unix:/abs/path. Names are
// refused: the sidecar's clusters are STATIC and do not resolve them.
func parseEndpoint(s string) (endpoint, error) {
	if rest, ok := strings.CutPrefix(s, unixPrefix); ok {
		path := strings.TrimPrefix(rest, "//")
		if !strings.HasPrefix(path, "/") {
			return endpoint{}, fmt.Errorf("%q: a unix socket needs an absolute path, e.g. unix:///run/tokenwarden/authz.sock", s)
		}
		return endpoint{unixPath: path}, nil
	}
	host, portText, err := net.SplitHostPort(s)
	if err != nil {
		return endpoint{}, fmt.Errorf("%q: want IP:port or unix:///path: %w", s, err)
	}
	if net.ParseIP(host) == nil {
		return endpoint{}, fmt.Errorf("%q: %q is not an IP address (static clusters resolve no names)", s, host)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil || port == 0 {
		return endpoint{}, fmt.Errorf("%q: port %q: want 1-65535", s, portText)
	}
	return endpoint{ip: host, port: uint32(port)}, nil
}
