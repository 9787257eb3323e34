package cli

import "github.com/spf13/cobra"

// newXDSCommand is replaced by the xDS work in progress.
func newXDSCommand() *cobra.Command {
	return &cobra.Command{Use: "xds", Short: "xDS tools", Hidden: true}
}
