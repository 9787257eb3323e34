package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

func newKeysCommand(af *adminFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "keys", Short: "List and rotate signing keys"}
	var now bool
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Publish a new signing key; it signs after the JWK Set cache lead time, old keys verify until their tokens expire",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := af.client(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			path := "/v1/keys/rotate"
			if now {
				path += "?now=true"
			}
			if dryRunAsked(cmd) {
				return dryRun(cmd, c, path, nil)
			}
			var k store.Key
			if err := c.do(cmd.Context(), "POST", path, nil, &k); err != nil {
				return err
			}
			if k.State == store.KeyPending {
				fmt.Fprintf(cmd.OutOrStdout(), "new signing key %s is published; it signs from %s\n", k.ID, k.ActivateAt.Format(time.RFC3339))
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "new signing key %s is active\n", k.ID)
			return nil
		},
	}
	withDryRun(rotate)
	rotate.Flags().BoolVar(&now, "now", false, "emergency (key compromise): sign with the new key at once; verifiers that cached the JWK Set must refetch it on an unknown kid")
	cmd.AddCommand(rotate, &cobra.Command{
		Use:   "list",
		Short: "List signing keys and their state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := af.client(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			var out struct {
				Keys []store.Key `json:"keys"`
			}
			if err := c.do(cmd.Context(), "GET", "/v1/keys", nil, &out); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "KID\tSTATE\tCREATED\tSIGNS FROM")
			for _, k := range out.Keys {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.ID, k.State, k.CreatedAt.Format(time.RFC3339), k.SignsFrom().Format(time.RFC3339))
			}
			return tw.Flush()
		},
	})
	return cmd
}
