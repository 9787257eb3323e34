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
	cmd.AddCommand(&cobra.Command{
		Use:   "rotate",
		Short: "Make a new signing key active; old keys keep verifying until their tokens expire",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := af.client(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			var k store.Key
			if err := c.do(cmd.Context(), "POST", "/v1/keys/rotate", nil, &k); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "new signing key %s is active\n", k.ID)
			return nil
		},
	}, &cobra.Command{
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
			fmt.Fprintln(tw, "KID\tSTATE\tCREATED")
			for _, k := range out.Keys {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", k.ID, k.State, k.CreatedAt.Format(time.RFC3339))
			}
			return tw.Flush()
		},
	})
	return cmd
}
