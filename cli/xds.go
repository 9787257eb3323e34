package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/policy"
	"github.com/tokenwarden/tokenwarden/xds"
)

// newXDSCommand is `tokenwarden xds`: the Envoy sidecar configuration that
// `serve --xds` otherwise serves, for operators who run without xDS.
func newXDSCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "xds",
		Short: "Envoy sidecar configuration",
		Long: `Envoy sidecar configuration.

The agent serves each sidecar on its node its configuration over xDS
(serve --xds). For sidecars that cannot use xDS, render prints the same
configuration as a static Envoy bootstrap.`,
	}
	cmd.AddCommand(newXDSRenderCommand())
	return cmd
}

func newXDSRenderCommand() *cobra.Command {
	var (
		policyFile, node, service, output string
		cfg                               xds.Config
	)
	cmd := &cobra.Command{
		Use:   "render --policy FILE --node ID [--service NAME]",
		Short: "Print a complete static Envoy configuration for one sidecar",
		Long: `Print a complete static Envoy configuration (envoy.config.bootstrap.v3.Bootstrap
with static_resources, YAML) for the sidecar of one service: an inbound
listener that asks tokenwarden's ext_authz on every request (public routes
excepted), the service's routes, the application cluster and the agent's
ext_authz cluster. It is what the xDS server would serve that sidecar.

The service is --service, or derived from an Istio-style --node id
(sidecar~IP~POD.NAMESPACE~DOMAIN: the pod name without its ReplicaSet and
pod hash suffixes). The output is static: render it again after every
policy change.`,
		Example: `  tokenwarden xds render --policy /etc/tokenwarden/policy.yaml \
    --node sidecar~10.1.2.3~orders-7d4b9c8f6d-x2x7k.default~default.svc.cluster.local \
    --authz-address unix:///run/tokenwarden/authz.sock -o envoy.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := policy.ReadFile(policyFile)
			if err != nil {
				return fmt.Errorf("read policy: %w", err)
			}
			p, err := policy.Load(policyFile, data)
			if err != nil {
				return fmt.Errorf("policy %s:\n%w\n(run `tokenwarden policy check %s` for every problem)", policyFile, err, policyFile)
			}
			out, err := xds.RenderBootstrap(p, node, service, cfg)
			if err != nil {
				// The policy loaded: what is left is the flags (addresses,
				// node id, service).
				return usageErrorf("%v", err)
			}
			if output == "" {
				_, err = cmd.OutOrStdout().Write(out)
				return err
			}
			if err := os.WriteFile(output, out, 0o644); err != nil {
				return fmt.Errorf("write %s: %w", output, err)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&policyFile, "policy", "", "policy file (YAML) to render the routes from")
	f.StringVar(&node, "node", "", "the sidecar's Envoy node id, e.g. sidecar~10.1.2.3~orders-7d4b9c8f6d-x2x7k.default~default.svc.cluster.local")
	f.StringVar(&service, "service", "", "the sidecar's service in the policy (default: derived from an Istio-style --node)")
	f.Uint32Var(&cfg.InboundPort, "inbound-port", xds.DefaultInboundPort, "port of the sidecar's inbound listener")
	f.StringVar(&cfg.AppAddress, "app-address", xds.DefaultAppAddress, "the local application allowed requests go to: IP:port or unix:///path")
	f.StringVar(&cfg.AuthzAddress, "authz-address", xds.DefaultAuthzAddress,
		"the agent's ext_authz gRPC endpoint as the sidecar reaches it: IP:port or unix:///path (inside a pod, 127.0.0.1 is the pod itself)")
	f.DurationVar(&cfg.AuthzTimeout, "authz-timeout", xds.DefaultAuthzTimeout, "bound on one ext_authz check; a timeout is answered 503")
	f.StringVar(&cfg.AuthzTLS.CAFile, "authz-ca", "", "dial ext_authz over TLS: the PEM CA bundle the agent's certificate chains to, as a path on the sidecar (serve --tls-cert-file)")
	f.StringVar(&cfg.AuthzTLS.CertFile, "authz-cert", "", "the sidecar's client certificate for ext_authz (mTLS, serve --authz-grpc-client-ca), a path on the sidecar")
	f.StringVar(&cfg.AuthzTLS.KeyFile, "authz-key", "", "the private key of --authz-cert, a path on the sidecar")
	f.StringVar(&cfg.AuthzTLS.ServerName, "authz-server-name", "", "the DNS name the agent's certificate must carry (also sent as SNI); default: the chain alone is verified")
	f.StringVarP(&output, "output", "o", "", "write the configuration to this file instead of standard output")
	for _, name := range []string{"policy", "node"} {
		if err := cmd.MarkFlagRequired(name); err != nil {
			panic(err) // a flag defined just above
		}
	}
	return cmd
}
