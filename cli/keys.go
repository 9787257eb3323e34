package cli

import (
	"fmt"
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
				fmt.Fprintf(cmd.OutOrStdout(), "new signing key %s is published; it signs from %s\n", k.ID, k.ActivateAt.UTC().Format(time.RFC3339))
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "new signing key %s is active\n", k.ID)
			return nil
		},
	}
	withDryRun(rotate)
	rotate.Flags().BoolVar(&now, "now", false, "emergency (key compromise): sign with the new key at once; verifiers that cached the JWK Set must refetch it on an unknown kid")
	cmd.AddCommand(rotate, newKeysListCommand(af))
	return cmd
}

func newKeysListCommand(af *adminFlags) *cobra.Command {
	var o *outputFlags
	cmd := &cobra.Command{
		Use:   "list [-o table|wide|json|yaml]",
		Short: "List signing keys and their state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := af.client(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			items, err := listAll[store.Key](cmd.Context(), c, "/v1/keys", nil, 0)
			if err != nil {
				return err
			}
			return keyOut.list(cmd.OutOrStdout(), o, items)
		},
	}
	o = addOutputFlags(cmd)
	return cmd
}
