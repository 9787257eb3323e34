package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/grpclog"

	"github.com/tokenwarden/tokenwarden/agent"
	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/authz"
	"github.com/tokenwarden/tokenwarden/agent/secretscan"
	"github.com/tokenwarden/tokenwarden/buildinfo"
)

func newServeCommand() *cobra.Command {
	cfg := agent.Config{}
	var logLevel, logFormat string
	cmd := &cobra.Command{
		Use:   "serve --policy FILE --env NAME [--data-dir DIR]",
		Short: "Run the node agent: admin API, ext_authz, xDS, kernel side",
		Long: `Run the node agent. On first start it creates the data directory, a
key-encryption key (mode 0600; unless --kek-file names one), the first signing
key (sealed) and an admin token in <data-dir>/admin.token (mode 0600) for the
CLI.

SIGHUP reloads the policy file (a policy with errors is refused and the old
one stays); SIGTERM and SIGINT shut down gracefully (readiness drops, servers
drain, the audit log is flushed); a second one ends the process at once.

Every flag can also be set from the environment: --etcd-ca is
TOKENWARDEN_ETCD_CA, --bpf-iface TOKENWARDEN_BPF_IFACE (comma-separated for
repeatable flags). A flag on the command line wins over its variable.

In a mesh (--store=etcd) every agent must be given the same --kek-file (a
Kubernetes Secret); an agent whose KEK differs from the one stored under the
prefix refuses to start.`,
		Example: `  tokenwarden serve --data-dir .data --policy deploy/policy.example.yaml --env dev`,
		Args:    cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, args []string) error {
			return flagsFromEnv(cmd.Flags(), os.LookupEnv)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			logger, err := newLogger(cmd.ErrOrStderr(), logLevel, logFormat)
			if err != nil {
				return err
			}
			slog.SetDefault(logger)
			if ownProcess {
				// grpc's logger is global and not safe to swap while
				// servers run: only a process of its own sets it.
				grpclog.SetLoggerV2(grpcLogger{logger})
			}
			cfg.Logger = logger
			err = serve(cmd, cfg, logger, logFormat == logText && terminal(cmd.ErrOrStderr()))
			if err != nil && logFormat == logJSON {
				// Even the last word is a record.
				code := exitError
				var ee *exitErr
				if errors.As(err, &ee) {
					code = ee.code
				}
				logger.Error("tokenwarden stopped", "err", err.Error(), "exit_code", code)
				return &loggedError{exitErr{code: code, err: err}}
			}
			return err
		},
	}
	serveFlagsOf(cmd, &cfg, &logLevel, &logFormat)
	return cmd
}

// serve runs the agent until a signal ends it. The start-up banner is for a
// person at a terminal; the agent's "tokenwarden agent ready" record is the
// start-up summary in every format.
func serve(cmd *cobra.Command, cfg agent.Config, logger *slog.Logger, banner bool) error {
	ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// The first signal starts a graceful shutdown; a second one
	// ends the process at once.
	go func() { <-ctx.Done(); stop() }()
	// SIGHUP is caught from the start: its default action would
	// end the process while the agent is still being built.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if banner {
		cfg.OnReady = func(r agent.Ready) { printReady(cmd.ErrOrStderr(), r) }
	}
	percent, fromEnv := authz.TuneCollector()
	logger.Debug("garbage collector target", "gogc", percent, "from_env", fromEnv)
	a, err := agent.New(ctx, cfg)
	if err != nil {
		return namingFlags(err)
	}
	defer a.Close()
	a.Registry().MustRegister(buildinfo.Collector())
	go reloadOnHangup(ctx, hup, a, logger)
	return a.Run(ctx)
}

func serveFlagsOf(cmd *cobra.Command, cfg *agent.Config, logLevel, logFormat *string) {
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", defaultDataDir(), "state: store, keys, audit log, admin token")
	f.StringVar(&cfg.PolicyPath, "policy", "", "policy file (required; see deploy/policy.example.yaml)")
	f.StringVar(&cfg.Env, "env", "", "environment this node enforces: a row of the policy's environments (required)")
	f.StringVar(&cfg.AdminAddr, "admin", agent.DefaultAdminAddr, `admin API, /healthz and /readyz listen address ("" disables)`)
	f.StringVar(&cfg.MetricsAddr, "metrics", agent.DefaultMetricsAddr, `Prometheus /metrics listen address ("" disables)`)
	f.StringVar(&cfg.AuthzGRPCAddr, "authz-grpc", agent.DefaultAuthzGRPC, `Envoy ext_authz gRPC listen address, or a unix socket path ("" disables)`)
	f.StringVar(&cfg.AuthzHTTPAddr, "authz-http", agent.DefaultAuthzHTTP, `ext_authz HTTP mode (Envoy HTTP, nginx auth_request, Caddy forward_auth) listen address ("" disables)`)
	f.StringVar(&cfg.ClientCertHeader, "authz-client-cert-header", "", "HTTP mode: read the peer's workload identity (for workload-bound tokens) from the URI= of this header on /envoy/ checks, e.g. x-forwarded-client-cert; only for an Envoy that sets it with forward_client_cert_details: SANITIZE_SET (docs/binding.md). Off by default")
	f.BoolVar(&cfg.StripAuthorization, "strip-authorization", false, "remove Authorization from allowed requests before the application sees them (the kernel side then cannot count tokens where the application receives them)")
	f.IntVar(&cfg.Connections.Conns, "max-conns", 0, "connections each ext_authz and xDS listener holds at most (0: derived from the file-descriptor limit, see docs/operations.md)")
	f.IntVar(&cfg.Connections.ConnsPerClient, "max-conns-per-client", 0, "connections one client (IP address, or process over a unix socket) holds on each ext_authz and xDS listener (0: derived)")
	f.StringVar(&cfg.TLS.CertFile, "tls-cert-file", "", "PEM certificate chain the agent serves on every TCP listener (with --tls-key-file); re-read when the file changes. Unset: TCP listeners are plain; unix sockets are always plain (docs/security.md)")
	f.StringVar(&cfg.TLS.KeyFile, "tls-key-file", "", "PEM private key of --tls-cert-file")
	f.StringVar(&cfg.TLS.MinVersion, "tls-min-version", "1.2", "oldest TLS version the listeners accept: 1.2 or 1.3")
	f.StringVar(&cfg.TLS.ClientCAs.Admin, "admin-client-ca", "", "PEM CA bundle: the admin listener requires a client certificate that chains to it (mTLS; needs --tls-cert-file)")
	f.StringVar(&cfg.TLS.ClientCAs.Metrics, "metrics-client-ca", "", "PEM CA bundle: the metrics listener requires a client certificate that chains to it (mTLS)")
	f.StringVar(&cfg.TLS.ClientCAs.AuthzGRPC, "authz-grpc-client-ca", "", "PEM CA bundle: the ext_authz gRPC listener requires a client certificate that chains to it (mTLS)")
	f.StringVar(&cfg.TLS.ClientCAs.AuthzHTTP, "authz-http-client-ca", "", "PEM CA bundle: the ext_authz HTTP-mode listener requires a client certificate that chains to it (mTLS)")
	f.StringVar(&cfg.TLS.ClientCAs.XDS, "xds-client-ca", "", "PEM CA bundle: the xDS listener requires a client certificate that chains to it (mTLS)")
	f.StringVar(&cfg.XDSAddr, "xds", agent.DefaultXDSAddr, `ADS (xDS) listen address for the node's sidecars, or unix:///path ("" disables)`)
	f.StringVar(&cfg.XDSAuthzAddress, "xds-authz-address", "", "ext_authz address as sidecars reach it, IP:port or unix:///path (default: --authz-grpc)")
	f.StringVar(&cfg.XDSAppAddress, "xds-app-address", "", "the application behind each sidecar, IP:port or unix:///path (default 127.0.0.1:8080)")
	f.StringVar(&cfg.XDSAuthzTLS.CAFile, "xds-authz-ca", "", "sidecars dial ext_authz over TLS: the PEM CA bundle the agent's certificate chains to, a path on the sidecars (as xds render --authz-ca)")
	f.StringVar(&cfg.XDSAuthzTLS.CertFile, "xds-authz-cert", "", "the sidecars' client certificate for ext_authz (mTLS), a path on the sidecars")
	f.StringVar(&cfg.XDSAuthzTLS.KeyFile, "xds-authz-key", "", "the private key of --xds-authz-cert, a path on the sidecars")
	f.StringVar(&cfg.XDSAuthzTLS.ServerName, "xds-authz-server-name", "", "the DNS name the agent's certificate must carry for the sidecars (also SNI)")
	f.StringVar(&cfg.XDSCredentials, "xds-credentials", "", "file of sidecar credentials (SHA-256 digests) that decide each sidecar's service; without it every xDS stream is refused (docs/xds.md)")
	f.StringVar(&cfg.SecretScanningKeys, "secret-scanning-keys", "", "GitHub's secret scanning public keys (the JSON of api.github.com/meta/public_keys/secret_scanning); set, "+secretscan.Path+" on the admin listener receives GitHub's alerts (docs/leaks.md)")
	f.StringVar(&cfg.SecretScanningKeysURL, "secret-scanning-keys-url", "", "https URL of GitHub's secret scanning keys (https://api.github.com/meta/public_keys/secret_scanning), fetched when an alert names a key the file lacks, at most every 5m")
	f.BoolVar(&cfg.XDSAllowUnauthenticated, "xds-allow-unauthenticated", false, "DEVELOPMENT ONLY: admit xDS streams without a credential and let them name their own service")
	f.StringVar(&cfg.BPF, "bpf", agent.DefaultBPF, "kernel side: auto (use it when it loads, say so when not), required (refuse to start without it) or off")
	f.StringArrayVar(&cfg.BPFInterfaces, "bpf-iface", nil, "interface to attach the eBPF programs to with TCX, ingress and egress (repeatable)")
	f.StringVar(&cfg.BPFCgroup, "bpf-cgroup", "", "cgroup v2 path to attach the cgroup_skb ingress program to")
	f.IntVar(&cfg.TopTokens, "top-tokens", agent.DefaultTopTokens, "per-token metric series kept: the busiest tokens of each interval")
	f.StringVar(&cfg.MetricsTokenLabels, "metrics-token-labels", agent.DefaultMetricsTokenLabels, "what per-token metric series carry: none (no per-token series), id (token id) or id+subject; whoever can scrape /metrics sees them (make run uses id+subject)")
	f.StringVar(&cfg.MetricsBearerFile, "metrics-bearer-file", "", "file holding the bearer token /metrics requires (re-read when it changes); without it /metrics is open to whoever reaches its address")
	f.StringVar(&cfg.StoreBackend, "store", agent.DefaultStore, "state backend: bolt (one node, a file in --data-dir) or etcd (many nodes; revocations made anywhere are enforced everywhere)")
	f.StringSliceVar(&cfg.EtcdEndpoints, "etcd-endpoints", nil, "etcd client URLs for --store=etcd (comma-separated)")
	f.StringVar(&cfg.EtcdPrefix, "etcd-prefix", agent.DefaultEtcdPrefix, "key prefix in etcd; agents of one mesh share it")
	f.StringVar(&cfg.Etcd.CAFile, "etcd-ca", "", "PEM CA bundle that signs the etcd servers' certificates (https:// endpoints)")
	f.StringVar(&cfg.Etcd.CertFile, "etcd-cert", "", "PEM client certificate for etcd (with --etcd-key)")
	f.StringVar(&cfg.Etcd.KeyFile, "etcd-key", "", "PEM private key of --etcd-cert")
	f.StringVar(&cfg.Etcd.Username, "etcd-username", "", "etcd user, for a cluster with auth enabled (with --etcd-password-file)")
	f.StringVar(&cfg.Etcd.PasswordFile, "etcd-password-file", "", "file holding the etcd user's password (mode 0600 or stricter)")
	f.DurationVar(&cfg.Etcd.DialTimeout, "etcd-dial-timeout", 5*time.Second, "how long start-up waits for etcd to answer")
	f.DurationVar(&cfg.Etcd.RequestTimeout, "etcd-request-timeout", 5*time.Second, "bound on each etcd read or write")
	f.DurationVar(&cfg.MaxStaleness, "max-staleness", agent.DefaultMaxStaleness, "with --store=etcd: how old this node's view of the store may be; past it /readyz fails and checks follow --stale-action (docs/operations.md)")
	f.StringVar(&cfg.StaleAction, "stale-action", agent.DefaultStaleAction, "with --store=etcd, once the view is older than --max-staleness: serve (keep deciding on the rules this node has) or deny (deny every check, store_unavailable, 503)")
	f.StringVar(&cfg.KEKFile, "kek-file", "", "key-encryption key (32 bytes) sealing the signing keys; required with --store=etcd, where every agent mounts the same Secret (default: <data-dir>/kek, created on first start)")
	f.IntVar(&cfg.CacheSize, "cache-size", agent.DefaultCacheSize, "verified tokens remembered (LRU)")
	f.StringVar(&cfg.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name, under which its audit chain head is recorded in the store; distinct per node sharing a store (env NODE_NAME; default: the host name and a digest of --data-dir)")
	f.Int64Var(&cfg.AuditMaxBytes, "audit-max-bytes", audit.DefaultMaxTotalBytes, "the audit log's size budget in bytes, all files together; the oldest files are removed beyond it (recorded as audit.prune)")
	f.StringVar(logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(logFormat, "log-format", logText, "text (a start-up banner on a terminal) or json (every line of stderr one JSON record)")
	// Required flags may come from the environment, so they are checked
	// after flagsFromEnv.
	cmd.MarkFlagRequired("policy")
	cmd.MarkFlagRequired("env")
	documentEnv(f)
}

// serveFlags names the flag that sets each agent.Config field.
var serveFlags = map[string]string{
	"DataDir": "--data-dir", "PolicyPath": "--policy", "Env": "--env",
	"AdminAddr": "--admin", "MetricsAddr": "--metrics", "AuthzGRPCAddr": "--authz-grpc", "AuthzHTTPAddr": "--authz-http",
	"XDSAddr": "--xds", "XDSAuthzAddress": "--xds-authz-address", "XDSAppAddress": "--xds-app-address",
	"BPF": "--bpf", "BPFInterfaces": "--bpf-iface", "BPFCgroup": "--bpf-cgroup",
	"StoreBackend": "--store", "EtcdEndpoints": "--etcd-endpoints", "EtcdPrefix": "--etcd-prefix",
	"CacheSize": "--cache-size", "TopTokens": "--top-tokens", "Connections": "--max-conns",
	"MetricsTokenLabels": "--metrics-token-labels", "MetricsBearerFile": "--metrics-bearer-file",
	"XDSCredentials": "--xds-credentials", "SecretScanningKeys": "--secret-scanning-keys", "SecretScanningKeysURL": "--secret-scanning-keys-url", "NodeName": "--node-name", "AuditMaxBytes": "--audit-max-bytes",
	"KEKFile": "--kek-file", "Etcd.CAFile": "--etcd-ca", "Etcd.CertFile": "--etcd-cert", "Etcd.KeyFile": "--etcd-key",
	"Etcd.Username": "--etcd-username", "Etcd.PasswordFile": "--etcd-password-file",
	"Etcd.DialTimeout": "--etcd-dial-timeout", "Etcd.RequestTimeout": "--etcd-request-timeout",
	"TLS.CertFile": "--tls-cert-file", "TLS.KeyFile": "--tls-key-file", "TLS.MinVersion": "--tls-min-version",
	"TLS.ClientCAs.Admin": "--admin-client-ca", "TLS.ClientCAs.Metrics": "--metrics-client-ca",
	"TLS.ClientCAs.AuthzGRPC": "--authz-grpc-client-ca", "TLS.ClientCAs.AuthzHTTP": "--authz-http-client-ca", "TLS.ClientCAs.XDS": "--xds-client-ca",
	"MaxStaleness": "--max-staleness", "StaleAction": "--stale-action",
}

// fieldNames matches the Config field names the agent's errors use.
var fieldNames = func() *regexp.Regexp {
	names := make([]string, 0, len(serveFlags))
	for f := range serveFlags {
		names = append(names, regexp.QuoteMeta(f))
	}
	sort.Slice(names, func(i, j int) bool { return len(names[i]) > len(names[j]) })
	return regexp.MustCompile(`\b(` + strings.Join(names, "|") + `)\b`)
}()

// namingFlags rewrites the agent's errors to name the flags that set the
// Config fields they name. Configuration mistakes (agent.FieldError) are
// usage errors.
func namingFlags(err error) error {
	var out []string
	for _, e := range unjoin(err) {
		var fe *agent.FieldError
		if !errors.As(e, &fe) {
			return errors.New(fieldNames.ReplaceAllStringFunc(err.Error(), func(f string) string { return serveFlags[f] }))
		}
		flag := serveFlags[fe.Field]
		if flag == "" {
			flag = fe.Field
		}
		if fe.Value == "" {
			out = append(out, fmt.Sprintf("%s: %s", flag, fe.Msg))
		} else {
			out = append(out, fmt.Sprintf("%s %q: %s", flag, fe.Value, fe.Msg))
		}
	}
	return usageErrorf("%s", strings.Join(out, "\n"))
}

// unjoin lists the errors errors.Join combined, or err alone.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func reloadOnHangup(ctx context.Context, hup <-chan os.Signal, a *agent.Agent, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if err := a.Reload(); err != nil {
				log.Error("policy reload refused; the old policy stays in force", "err", err)
			}
		}
	}
}

// printReady tells the person at the terminal where things are and what to
// try next.
func printReady(w io.Writer, r agent.Ready) {
	fmt.Fprintf(w, "\ntokenwarden agent is serving environment %q\n", r.Env)
	scheme := "http"
	if r.TLS {
		scheme = "https"
	}
	fmt.Fprintf(w, "  admin API   %s://%s   (/healthz, /readyz, /v1/...)\n", scheme, r.AdminAddr)
	names := make([]string, 0, len(r.Listeners))
	for name := range r.Listeners {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(w, "  %-11s %s\n", name, r.Listeners[name])
	}
	if r.MetricsAddr != "" {
		fmt.Fprintf(w, "  metrics     %s://%s/metrics\n", scheme, r.MetricsAddr)
	}
	fmt.Fprintf(w, "  admin token %s (mode 0600; the CLI reads it from there)\n\n", r.AdminTokenFile)
	fmt.Fprintf(w, "Next, in another shell:\n")
	fmt.Fprintf(w, "  TOKEN=$(./bin/tokenwarden token issue --subject ci --class service --scope orders:read)\n")
	fmt.Fprintf(w, "  ./bin/tokenwarden token list\n")
	fmt.Fprintf(w, "  ./bin/tokenwarden token revoke ID --reason \"leaked\"\n")
	fmt.Fprintf(w, "  ./bin/tokenwarden audit tail -f\n\n")
}
