package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/policy"
)

func newPolicyCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Work with policy files"}
	cmd.AddCommand(&cobra.Command{
		Use:   "check FILE...",
		Short: "Validate policy files: prints ok or every problem; exit 1 on errors",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			failed := false
			for _, path := range args {
				if checkPolicyFile(cmd.OutOrStdout(), path) {
					failed = true
				}
			}
			if failed {
				return &exitErr{code: exitError, err: fmt.Errorf("policy check failed")}
			}
			return nil
		},
	})
	return cmd
}

// checkPolicyFile prints the file's problems (or "ok") and reports whether
// it has errors.
func checkPolicyFile(w io.Writer, path string) bool {
	data, err := policy.ReadFile(path)
	if err != nil {
		fmt.Fprintf(w, "%s: error: %v\n", path, err)
		return true
	}
	problems := policy.Check(path, data)
	errs := 0
	for _, p := range problems {
		fmt.Fprintln(w, p.String())
		if p.Severity == policy.SeverityError {
			errs++
		}
	}
	if errs == 0 {
		fmt.Fprintf(w, "%s: ok\n", path)
	}
	return errs > 0
}
