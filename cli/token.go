package cli

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/agent/admin"
	"github.com/tokenwarden/tokenwarden/policy"
)

func newTokenCommand(af *adminFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Issue, list, show, revoke and rotate tokens",
	}
	cmd.AddCommand(newTokenIssueCommand(af), newTokenListCommand(af), newTokenShowCommand(af),
		newTokenRevokeCommand(af), newTokenRotateCommand(af))
	return cmd
}

func newTokenIssueCommand(af *adminFlags) *cobra.Command {
	var req admin.IssueRequest
	var ttl time.Duration
	var bindJWK string
	var o *outputFlags
	cmd := &cobra.Command{
		Use:   "issue --subject S --class C [--scope X]... [--ttl D] [--tenant T] [--bind-workload SPIFFE-ID | --bind-jwk FILE]",
		Short: "Issue a token within policy; prints the token alone on stdout",
		Long: `Issue a token within policy. The token is printed alone on stdout, once:
tokenwarden keeps only its id and hashes. Its id and expiry go to stderr.
With -o json or -o yaml the token and its record (id, expires_at, ...)
are printed together on stdout instead.

Refused (exit 1) when a scope is outside the class, the TTL is above the
policy's limit, or the class is not allowed in the agent's environment,
or the workload binding does not fit the class (docs/binding.md).`,
		Example: `  TOKEN=$(tokenwarden token issue --subject ci --class service --scope orders:read --ttl 30m)
  tokenwarden token issue --subject ci --class service -o json | jq -r '.id, .token'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if ttl < 0 {
				return usageErrorf("--ttl %s: want a positive duration such as 30m or 12h", ttl)
			}
			c, err := af.client(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if ttl > 0 {
				req.TTL = ttl.String()
			}
			if bindJWK != "" {
				jkt, err := jwkFileThumbprint(bindJWK)
				if err != nil {
					return usageErrorf("--bind-jwk %s: %v", bindJWK, err)
				}
				req.BindJKT = jkt
			}
			if dryRunAsked(cmd) {
				return dryRun(cmd, c, "/v1/tokens", req)
			}
			var out admin.IssueResponse
			if err := c.do(cmd.Context(), "POST", "/v1/tokens", req, &out); err != nil {
				return err
			}
			if o.format.value != outToken {
				return issuedOut.one(cmd.OutOrStdout(), o, out)
			}
			fmt.Fprintln(cmd.OutOrStdout(), out.Token)
			fmt.Fprintf(cmd.ErrOrStderr(), "issued %s for %s (class %s, expires %s)\n",
				out.ID, printable(out.Subject), printable(out.Class), o.when(out.ExpiresAt))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Subject, "subject", "", "who the token is for (required)")
	f.StringVar(&req.Class, "class", "", "token class from the policy (required)")
	f.StringArrayVar(&req.Scopes, "scope", nil, "scope to grant (repeatable; default: every scope of the class)")
	f.DurationVar(&ttl, "ttl", 0, "lifetime (default: the class default_ttl)")
	f.StringVar(&req.Tenant, "tenant", "", "tenant the token belongs to")
	f.StringVar(&bindJWK, "bind-jwk", "", "file holding the client's JWK (public, or private: only its public part is used) a token of a class with binding: dpop is bound to")
	f.StringVar(&req.BindWorkload, "bind-workload", "", "SPIFFE ID the token is bound to (required for, and only for, a class with binding: workload)")
	o = addOutputFlags(cmd, outToken, outJSON, outYAML)
	cmd.MarkFlagRequired("subject")
	cmd.MarkFlagRequired("class")
	withDryRun(cmd)
	return cmd
}

func newTokenListCommand(af *adminFlags) *cobra.Command {
	var subject, tenant, class, kid string
	var live bool
	var limit int
	var o *outputFlags
	cmd := &cobra.Command{
		Use:   "list [--subject S] [--tenant T] [--class C] [--kid KID] [--live] [-o table|wide|json|yaml]",
		Short: "List issued tokens (ids and claims, never token strings)",
		Long: `List issued tokens, oldest first: ids and claims, never token strings.
Every page of the admin API is read unless --limit caps the count.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if limit < 0 {
				return usageErrorf("--limit %d: want 0 (no limit) or more", limit)
			}
			c, err := af.client(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			q := url.Values{}
			for k, v := range map[string]string{"subject": subject, "tenant": tenant, "class": class, "kid": kid} {
				if v != "" {
					q.Set(k, v)
				}
			}
			if live {
				q.Set("live", "true")
			}
			items, err := listAll[admin.TokenView](cmd.Context(), c, "/v1/tokens", q, limit)
			if err != nil {
				return err
			}
			return tokenOut.list(cmd.OutOrStdout(), o, items)
		},
	}
	f := cmd.Flags()
	f.StringVar(&subject, "subject", "", "only this subject's tokens")
	f.StringVar(&tenant, "tenant", "", "only this tenant's tokens")
	f.StringVar(&class, "class", "", "only tokens of this class")
	f.StringVar(&kid, "kid", "", "only tokens signed by this key")
	f.BoolVar(&live, "live", false, "only tokens that can still be used")
	f.IntVar(&limit, "limit", 0, "list at most this many tokens (0: all)")
	o = addOutputFlags(cmd)
	addJSONAlias(cmd, o)
	return cmd
}

func newTokenShowCommand(af *adminFlags) *cobra.Command {
	var o *outputFlags
	cmd := &cobra.Command{
		Use:   "show ID [-o table|wide|json|yaml]",
		Short: "Show one token's record",
		Args:  tokenIDArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := af.client(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			var out admin.TokenView
			if err := c.do(cmd.Context(), "GET", "/v1/tokens/"+url.PathEscape(args[0]), nil, &out); err != nil {
				return err
			}
			return tokenOut.one(cmd.OutOrStdout(), o, out)
		},
	}
	o = addOutputFlags(cmd)
	return cmd
}

func newTokenRevokeCommand(af *adminFlags) *cobra.Command {
	var reason string
	var m mutationFlags
	cmd := &cobra.Command{
		Use:   "revoke ID --reason R",
		Short: "Revoke one token now, everywhere",
		Long: `Revoke one token. The agent asked enforces it at once and stores it; it
says "stored" when every agent has it, "REPLICATING" when the store did not
answer within 2 s (the agent keeps retrying; see docs/operations.md).
Revoking a token twice adds nothing.`,
		Example: `  tokenwarden token revoke 3q2x... --reason "leaked in CI logs"`,
		Args:    tokenIDArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := af.client(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			var out admin.RevokeResponse
			if err := c.do(cmd.Context(), "POST", "/v1/tokens/"+url.PathEscape(args[0])+"/revoke", admin.RevokeRequest{Reason: reason, DryRun: m.dryRun}, &out); err != nil {
				return err
			}
			printRevocation(cmd.OutOrStdout(), "token "+args[0], out)
			return nil
		},
	}
	m.register(cmd, false)
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded in the audit log; required)")
	cmd.MarkFlagRequired("reason")
	return cmd
}

func newTokenRotateCommand(af *adminFlags) *cobra.Command {
	var o *outputFlags
	cmd := &cobra.Command{
		Use:   "rotate ID",
		Short: "Issue a successor; the old token is revoked after its class's rotation_grace",
		Long: `Issue a successor of token ID (same subject, class and tenant; the scopes
its class still grants) and print it alone on stdout. The predecessor keeps
working for the class's rotation_grace, then a future-effective revocation
retires it. A revocation still pending on the predecessor is carried to the
successor: it is revoked at the same time.`,
		Args: tokenIDArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := af.client(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if dryRunAsked(cmd) {
				return dryRun(cmd, c, "/v1/tokens/"+url.PathEscape(args[0])+"/rotate", nil)
			}
			var out admin.RotateResponse
			if err := c.do(cmd.Context(), "POST", "/v1/tokens/"+url.PathEscape(args[0])+"/rotate", nil, &out); err != nil {
				return err
			}
			if out.Warning != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", printable(out.Warning))
			}
			if o.format.value != outToken {
				return issuedOut.one(cmd.OutOrStdout(), o, out.IssueResponse)
			}
			fmt.Fprintln(cmd.OutOrStdout(), out.Token)
			fmt.Fprintf(cmd.ErrOrStderr(), "rotated %s -> %s (expires %s)\n", args[0], out.ID, o.when(out.ExpiresAt))
			return nil
		},
	}
	o = addOutputFlags(cmd, outToken, outJSON, outYAML)
	return withDryRun(cmd)
}

func newRevokeCommand(af *adminFlags) *cobra.Command {
	var subject, tenant, key, reason string
	var m mutationFlags
	cmd := &cobra.Command{
		Use:   "revoke (--subject S | --tenant T | --key KID) --reason R",
		Short: "Revoke every token of a subject, a tenant or a signing key",
		Long: `Revoke by subject (role change) or tenant (contract ends): every token
issued to it until now stops working; tokens issued afterwards work. Revoke by
key (compromise): every token the key signed stops working.
Prints how many live tokens the rule covers. Asks for confirmation on a
terminal (--yes elsewhere); refuses a target that covers no live token
unless --allow-empty, and the key of your own admin token unless --force.
--dry-run prints what it would cover and changes nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			req := admin.RevokeRequest{Reason: reason}
			n := 0
			for kind, target := range map[string]string{"subject": subject, "tenant": tenant, "key": key} {
				if target != "" {
					req.Kind, req.Target = policy.RevocationKind(kind), target
					n++
				}
			}
			if n != 1 {
				return usageErrorf("give exactly one of --subject, --tenant or --key")
			}
			c, err := af.client(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			what := fmt.Sprintf("%s %s", req.Kind, req.Target)
			if !m.yes && !m.dryRun {
				if !isTerminal(cmd.InOrStdin()) {
					return confirm(cmd, &m, what, nil)
				}
				// Show what it covers before asking.
				var preview admin.RevokeResponse
				dry := req
				dry.DryRun = true
				if err := c.do(cmd.Context(), "POST", "/v1/revocations", dry, &preview); err != nil {
					return err
				}
				if err := confirm(cmd, &m, what, preview.Covered); err != nil {
					return err
				}
			}
			req.DryRun, req.AllowEmpty, req.Force = m.dryRun, m.allowEmpty, m.force
			var out admin.RevokeResponse
			if err := c.do(cmd.Context(), "POST", "/v1/revocations", req, &out); err != nil {
				return err
			}
			printRevocation(cmd.OutOrStdout(), what, out)
			return nil
		},
	}
	m.register(cmd, true)
	f := cmd.Flags()
	f.StringVar(&subject, "subject", "", "revoke this subject's tokens")
	f.StringVar(&tenant, "tenant", "", "revoke this tenant's tokens")
	f.StringVar(&key, "key", "", "revoke every token signed by this key id")
	f.StringVar(&reason, "reason", "", "why (recorded in the audit log; required)")
	cmd.MarkFlagRequired("reason")
	return cmd
}

// tokenIDArg accepts exactly one non-empty token id (see `token list`).
func tokenIDArg(cmd *cobra.Command, args []string) error {
	if len(args) != 1 || strings.TrimSpace(args[0]) == "" {
		return fmt.Errorf("give one token ID (the ID column of `tokenwarden token list`), got %d argument(s)", len(args))
	}
	if strings.HasPrefix(args[0], policy.TokenPrefix) {
		return fmt.Errorf("that is a token, not a token ID: pass its ID (the ID column of `tokenwarden token list`), and treat the token as leaked if it was pasted somewhere shared")
	}
	return nil
}
