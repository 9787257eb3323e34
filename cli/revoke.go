package cli

import (
	"bufio"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/agent/admin"
	"github.com/tokenwarden/tokenwarden/policy"
)

// mutationFlags are the safety rails of a revocation.
type mutationFlags struct {
	dryRun, yes, allowEmpty, force bool
}

func (m *mutationFlags) register(cmd *cobra.Command, broad bool) {
	f := cmd.Flags()
	f.BoolVar(&m.dryRun, "dry-run", false, "print what the rule would cover (a count and some token ids) and change nothing")
	if broad {
		f.BoolVar(&m.yes, "yes", false, "do not ask for confirmation (required when standard input is not a terminal)")
		f.BoolVar(&m.allowEmpty, "allow-empty", false, "revoke even if the target covers no live token (refused otherwise: a typo, most likely)")
		f.BoolVar(&m.force, "force", false, "revoke the key that signed your own admin token (the agent then writes itself a new one)")
	}
}

// isTerminal reports whether standard input is an interactive terminal;
// tests replace it.
var isTerminal = terminal

// confirm asks before a broad revocation: on a terminal, y/N; elsewhere it
// refuses (exit 2) unless --yes.
func confirm(cmd *cobra.Command, m *mutationFlags, what string, covered *int) error {
	if m.yes || m.dryRun {
		return nil
	}
	if !isTerminal(cmd.InOrStdin()) {
		return usageErrorf("revoking %s needs confirmation: standard input is not a terminal, so pass --yes (try --dry-run first to see what it covers)", what)
	}
	n := "an unknown number of"
	if covered != nil {
		n = fmt.Sprint(*covered)
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "Revoke %s? It covers %s live token(s) on every agent. [y/N] ", what, n)
	line, _ := bufio.NewReader(io.LimitReader(cmd.InOrStdin(), 256)).ReadString('\n')
	if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
		return usageErrorf("not revoked: not confirmed")
	}
	return nil
}

// printRevocation says what happened: stored everywhere (201), enforced
// here and replicating (202), in force already (200), or a dry run.
func printRevocation(w io.Writer, what string, out admin.RevokeResponse) {
	covers := ""
	if out.Covered != nil {
		covers = fmt.Sprintf(": covers %d live token(s)", *out.Covered)
	}
	switch {
	case out.DryRun:
		fmt.Fprintf(w, "dry run: revoking %s would cover %d live token(s)", what, deref(out.Covered))
		if out.Existed {
			fmt.Fprint(w, " (a rule in force already covers it)")
		}
		fmt.Fprintln(w)
		for _, id := range out.Sample {
			fmt.Fprintf(w, "  %s\n", id)
		}
		if n := deref(out.Covered); n > len(out.Sample) {
			fmt.Fprintf(w, "  ... and %d more\n", n-len(out.Sample))
		}
	case out.Existed:
		fmt.Fprintf(w, "%s was revoked already: nothing added\n", what)
	case out.Replicating:
		fmt.Fprintf(w, "revoked %s on this agent (rule %s); the store is not answering: REPLICATING, other agents enforce it once the store takes it (the agent keeps retrying)\n", what, out.Revocation.ID)
	default:
		fmt.Fprintf(w, "revoked %s%s (rule %s), stored: every agent enforces it\n", what, covers, out.Revocation.ID)
	}
	if out.AdminTokenReissued {
		fmt.Fprintln(w, "the key signed your admin token: the agent wrote a new one to <data-dir>/admin.token")
	}
}

func deref(n *int) int {
	if n == nil {
		return 0
	}
	return *n
}

// scanState is what a found token is now: expired by its claims, else as
// the agent knows it (revoked, rotated, live); live when the agent has no
// record of it or cannot be asked.
func scanState(cmd *cobra.Command, c *adminClient, tok *policy.Token) string {
	if time.Now().Unix() >= tok.Expires {
		return "expired"
	}
	var v struct {
		State string `json:"state"`
	}
	if err := c.do(cmd.Context(), "GET", "/v1/tokens/"+url.PathEscape(tok.ID), nil, &v); err == nil && v.State == "revoked" {
		return "revoked"
	}
	return "live"
}

// withDryRun gives a mutation the --dry-run flag.
func withDryRun(cmd *cobra.Command) *cobra.Command {
	cmd.Flags().Bool("dry-run", false, "say what it would do and change nothing (nothing is signed, stored or audited)")
	return cmd
}

// dryRunAsked reports --dry-run.
func dryRunAsked(cmd *cobra.Command) bool {
	dry, _ := cmd.Flags().GetBool("dry-run")
	return dry
}

// dryRun asks the API what path would do (?dry_run=true) and prints it.
func dryRun(cmd *cobra.Command, c *adminClient, path string, body any) error {
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	var out admin.DryRunResponse
	if err := c.do(cmd.Context(), "POST", path+sep+"dry_run=true", body, &out); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "dry run: would %s\n", out.Would)
	return nil
}
