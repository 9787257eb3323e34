package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/buildinfo"
)

// versionView is the build as `version -o json|yaml` prints it.
type versionView struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"go_version"`
}

func newVersionCommand() *cobra.Command {
	var o *outputFlags
	cmd := &cobra.Command{
		Use:   "version [-o json|yaml]",
		Short: "Print the version, commit and Go version of this build",
		Long: `Print the version, commit and Go version of this build (also --version).
A running agent exports the same as the tokenwarden_build_info metric.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			i := buildinfo.Get()
			if o.format.value == outTable {
				_, err := fmt.Fprintln(cmd.OutOrStdout(), i)
				return err
			}
			return encode(cmd.OutOrStdout(), o.format.value, versionView{Version: i.Version, Commit: i.Commit, GoVersion: i.GoVersion})
		},
	}
	o = addOutputFlags(cmd, outTable, outJSON, outYAML)
	cmd.Flags().MarkHidden("local") // no times to show
	return cmd
}
