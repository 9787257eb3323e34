package cli

import (
	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/policy"
)

func newRevocationsCommand(af *adminFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "revocations", Short: "List the revocation rules in force"}
	var o *outputFlags
	var limit int
	list := &cobra.Command{
		Use:   "list [-o table|wide|json|yaml]",
		Short: "List revocation rules, oldest first",
		Long: `List the revocation rules the agents enforce, oldest first: by token,
subject, tenant or key, with when each takes effect and why it was made.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if limit < 0 {
				return usageErrorf("--limit %d: want 0 (no limit) or more", limit)
			}
			c, err := af.client(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			items, err := listAll[policy.Revocation](cmd.Context(), c, "/v1/revocations", nil, limit)
			if err != nil {
				return err
			}
			return revocationOut.list(cmd.OutOrStdout(), o, items)
		},
	}
	list.Flags().IntVar(&limit, "limit", 0, "list at most this many rules (0: all)")
	o = addOutputFlags(list)
	cmd.AddCommand(list)
	return cmd
}
