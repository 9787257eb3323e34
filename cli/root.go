// Package cli is tokenwarden's command tree. Each command parses its flags
// and calls a package; none holds logic of its own.
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/tokenwarden/tokenwarden/agent/admintoken"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/buildinfo"
	"github.com/tokenwarden/tokenwarden/policy"
)

// Environment variables that set CLI defaults.
const (
	envServer         = "TOKENWARDEN_SERVER"
	envAdminTokenFile = "TOKENWARDEN_ADMIN_TOKEN_FILE"
	envServerCA       = "TOKENWARDEN_SERVER_CA"
	envClientCert     = "TOKENWARDEN_CLIENT_CERT"
	envClientKey      = "TOKENWARDEN_CLIENT_KEY"
	envDataDir        = "TOKENWARDEN_DATA_DIR"
)

// defaultDataDir is the agent's data directory unless --data-dir says
// otherwise: $TOKENWARDEN_DATA_DIR, else $XDG_STATE_HOME/tokenwarden, else
// ~/.local/state/tokenwarden, else /var/lib/tokenwarden; always absolute, so
// that serve and the CLI agree from any directory.
func defaultDataDir() string {
	if d := os.Getenv(envDataDir); d != "" {
		if abs, err := filepath.Abs(d); err == nil {
			return abs
		}
		return d
	}
	if x := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(x) {
		return filepath.Join(x, "tokenwarden")
	}
	if home, err := os.UserHomeDir(); err == nil && filepath.IsAbs(home) {
		return filepath.Join(home, ".local", "state", "tokenwarden")
	}
	return "/var/lib/tokenwarden"
}

// defaultAdminTokenFile is where an agent with the default data directory
// writes its admin token.
func defaultAdminTokenFile() string { return filepath.Join(defaultDataDir(), admintoken.FileName) }

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the command failed
	exitUsage = 2 // the command line was wrong: unknown command or flag, missing argument
)

// exitErr carries an exit code without printing usage.
type exitErr struct {
	code int
	err  error
}

func (e *exitErr) Error() string { return e.err.Error() }
func (e *exitErr) Unwrap() error { return e.err }

// runError marks an error returned by a command's RunE; any other error
// came from parsing the command line.
type runError struct{ err error }

func (e *runError) Error() string { return e.err.Error() }
func (e *runError) Unwrap() error { return e.err }

// usageErrorf is a command-line mistake found by a command itself (a
// combination of flags cobra cannot check).
func usageErrorf(format string, args ...any) error {
	return &exitErr{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// ownProcess is set when the command line runs as the process (Execute),
// not in a test: what is global to the process is set only then.
var ownProcess bool

// Execute runs the command line and returns the process exit code.
func Execute() int {
	ownProcess = true
	root := newRootCommand()
	cmd, err := root.ExecuteC()
	return report(os.Stderr, cmd, err)
}

// report prints err, if any, and returns the exit code: a usage mistake
// says where the command's help is.
func report(w io.Writer, cmd *cobra.Command, err error) int {
	if err == nil {
		return exitOK
	}
	var le *loggedError
	if errors.As(err, &le) {
		return le.code
	}
	fmt.Fprintln(w, "tokenwarden:", redactTokens(err.Error()))
	var ee *exitErr
	if errors.As(err, &ee) {
		if ee.code == exitUsage && cmd != nil {
			fmt.Fprintf(w, "Run '%s --help' for usage.\n", cmd.CommandPath())
		}
		return ee.code
	}
	var re *runError
	if errors.As(err, &re) {
		return exitError
	}
	if cmd != nil {
		fmt.Fprintf(w, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return exitUsage
}

// redactTokens blanks out whatever looks like a token in an error message:
// cobra quotes an unexpected argument back, and a token pasted where an id
// belongs would otherwise land on stderr, and from there in CI logs.
func redactTokens(msg string) string {
	cands := policy.FindCandidates([]byte(msg), 0)
	for i := len(cands) - 1; i >= 0; i-- {
		c := cands[i]
		msg = msg[:c.Offset] + "<token redacted>" + msg[c.Offset+len(c.Text):]
	}
	return msg
}

// markRunErrors wraps the RunE of every command under c, so that report
// tells what a command returned from what cobra found in parsing.
func markRunErrors(c *cobra.Command) {
	if run := c.RunE; run != nil {
		c.RunE = func(cmd *cobra.Command, args []string) error {
			if err := run(cmd, args); err != nil {
				var ee *exitErr
				if errors.As(err, &ee) {
					return err
				}
				return &runError{err}
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		markRunErrors(sub)
	}
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
Follow the audit:    tokenwarden audit tail -f

Exit status: 0 success, 1 the command failed, 2 a usage mistake (unknown
command or flag, missing argument); scan exits 3 when it finds tokens.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       buildinfo.Get().String(),
	}
	root.SetVersionTemplate("{{.Version}}\n")
	admin := &adminFlags{}
	root.PersistentFlags().StringVar(&admin.server, "server", "",
		"admin API of the agent (default: the context's server, env "+envServer+", or "+defaultServer+")")
	root.PersistentFlags().StringVar(&admin.tokenFile, "admin-token-file", "",
		"file holding an admin token (default: the context's, env "+envAdminTokenFile+", or <data-dir>/admin.token of the default data directory)")
	root.PersistentFlags().StringVar(&admin.context, "context", "",
		"context of the configuration file to use (env "+envContext+"; see `tokenwarden config`)")
	root.PersistentFlags().StringVar(&admin.serverCA, "server-ca", "",
		"PEM CA bundle the agent's TLS certificate chains to, for an https:// --server (default: the context's ca-file, or env "+envServerCA+")")
	root.PersistentFlags().StringVar(&admin.clientCert, "client-cert", "",
		"PEM client certificate for an agent whose admin listener requires one (serve --admin-client-ca) (env "+envClientCert+")")
	root.PersistentFlags().StringVar(&admin.clientKey, "client-key", "",
		"PEM private key of --client-cert (env "+envClientKey+")")
	root.AddCommand(
		newServeCommand(),
		newTokenCommand(admin),
		newRevokeCommand(admin),
		newKeysCommand(admin),
		newRevocationsCommand(admin),
		newConfigCommand(),
		newPolicyCommand(),
		newAuditCommand(admin),
		newXDSCommand(),
		newScanCommand(admin),
		newVersionCommand(),
		newHealthCommand(admin),
		newDPoPCommand(),
		newAdminCommand(admin),
	)
	// A command group run without a subcommand shows its help; an unknown
	// subcommand is a usage error rather than the group's help.
	for _, c := range root.Commands() {
		if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
			c.Args = cobra.NoArgs
			c.RunE = func(cmd *cobra.Command, args []string) error { return cmd.Help() }
		}
	}
	registerCompletions(root, admin)
	markRunErrors(root)
	return root
}
