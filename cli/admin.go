package cli

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/agent/admin"
	"github.com/tokenwarden/tokenwarden/agent/atomicfile"
)

func newAdminCommand(af *adminFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Operators' admin credentials",
	}
	cmd.AddCommand(newAdminIssueCommand(af))
	return cmd
}

func newAdminIssueCommand(af *adminFlags) *cobra.Command {
	var req admin.AdminIssueRequest
	var ttl time.Duration
	var out string
	cmd := &cobra.Command{
		Use:   "issue --subject NAME [--ttl D] [--scope tokenwarden:read|revoke|issue|admin]... [--out FILE]",
		Short: "Mint an operator's own admin token; prints it alone on stdout",
		Long: `Mint an admin token named after the operator who will hold it, in the
policy's admin class. Each operator gets one; revoking it (token revoke ID,
or revoke --subject NAME) leaves every other admin token working. Every
admin action is audited with the acting token's subject (admin.request
records) and id (the actor of each record).

Scopes (repeatable; default tokenwarden:admin, which implies the others):
  tokenwarden:read    list and show tokens, revocations, keys; read the audit log
  tokenwarden:revoke  revoke tokens and report leaks (a pager bot)
  tokenwarden:issue   issue and rotate tokens that carry no tokenwarden: scope
Only a tokenwarden:admin token mints admin tokens.

The token is printed once, alone on stdout, or written to a new file with
--out (mode 0600; an existing file is never replaced). Its id and expiry
go to stderr.`,
		Example: `  tokenwarden admin issue --subject alice --ttl 8h --out ~/.config/tokenwarden/alice.token
  tokenwarden admin issue --subject pager-bot --scope tokenwarden:revoke > pager.token`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if ttl < 0 {
				return usageErrorf("--ttl %s: want a positive duration such as 8h", ttl)
			}
			for _, s := range req.Scopes {
				if !strings.HasPrefix(s, "tokenwarden:") {
					return usageErrorf("--scope %s: an admin token holds tokenwarden:read, :revoke, :issue or :admin", s)
				}
			}
			if out != "" {
				// Refused before minting: a token minted and not written
				// would only need revoking.
				if _, err := os.Lstat(out); err == nil {
					return usageErrorf("--out %s: the file exists; name a new one", out)
				}
			}
			c, err := af.client(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if ttl > 0 {
				req.TTL = ttl.String()
			}
			var resp admin.IssueResponse
			if err := c.do(cmd.Context(), "POST", "/v1/admin/tokens", req, &resp); err != nil {
				return err
			}
			if out != "" {
				if err := atomicfile.Create(out, []byte(resp.Token+"\n")); err != nil {
					return fmt.Errorf("admin token %s was issued but not written: revoke it (tokenwarden token revoke %s): %w", resp.ID, resp.ID, err)
				}
			} else {
				fmt.Fprintln(cmd.OutOrStdout(), resp.Token)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "issued admin token %s for %s (scopes %s, expires %s)\n",
				resp.ID, req.Subject, strings.Join(resp.Scopes, " "), resp.ExpiresAt.UTC().Format(time.RFC3339))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Subject, "subject", "", "the operator who holds the token (required)")
	f.DurationVar(&ttl, "ttl", 0, "lifetime (default: the admin class's default_ttl)")
	f.StringArrayVar(&req.Scopes, "scope", nil, "admin API scope to grant (repeatable; default tokenwarden:admin)")
	f.StringVar(&out, "out", "", "write the token to this new file (mode 0600) instead of stdout")
	cmd.MarkFlagRequired("subject")
	return cmd
}
