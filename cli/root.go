// Package cli is tokenwarden's command tree. Each command parses its flags
// and calls a package; none holds logic of its own.
package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
)

// Environment variables that set CLI defaults.
const (
	envServer         = "TOKENWARDEN_SERVER"
	envAdminTokenFile = "TOKENWARDEN_ADMIN_TOKEN_FILE"
	envDataDir        = "TOKENWARDEN_DATA_DIR"
)

// defaultDataDir is where `make run` keeps its state: .data in the current
// directory, unless TOKENWARDEN_DATA_DIR says otherwise.
func defaultDataDir() string {
	if d := os.Getenv(envDataDir); d != "" {
		return d
	}
	return ".data"
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

// exitError carries an exit code without printing usage.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

// Execute runs the command line and returns the process exit code.
func Execute() int {
	root := newRootCommand()
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "tokenwarden:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 1
	}
	return 0
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "tokenwarden",
		Short: "API token policy enforcer for service meshes",
		Long: `tokenwarden issues short-lived, scoped API tokens and enforces them on every
request: a node agent serves Envoy ext_authz and xDS, keeps an exact
revocation set, counts per-token traffic in the kernel with eBPF and audits
every token's life.

Start an agent:      tokenwarden serve --policy deploy/policy.example.yaml --env dev
Issue a token:       tokenwarden token issue --subject ci --class service
Revoke it:           tokenwarden token revoke ID --reason "leaked"
Follow the audit:    tokenwarden audit tail -f`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	admin := &adminFlags{}
	root.PersistentFlags().StringVar(&admin.server, "server", envOr(envServer, "http://127.0.0.1:9003"),
		"admin API of the agent (env "+envServer+")")
	root.PersistentFlags().StringVar(&admin.tokenFile, "admin-token-file",
		envOr(envAdminTokenFile, filepath.Join(defaultDataDir(), "admin.token")),
		"file holding an admin token (env "+envAdminTokenFile+")")
	root.AddCommand(
		newServeCommand(),
		newTokenCommand(admin),
		newRevokeCommand(admin),
		newKeysCommand(admin),
		newPolicyCommand(),
		newAuditCommand(admin),
		newXDSCommand(),
		newScanCommand(admin),
	)
	return root
}
