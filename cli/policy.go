package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/agent"
	"github.com/tokenwarden/tokenwarden/policy"
)

func newPolicyCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Work with policy files"}
	var env string
	check := &cobra.Command{
		Use:   "check FILE...",
		Short: "Validate policy files: prints ok or every problem; exit 1 on errors",
		Long: `Validate policy files: prints ok or every problem; exit 1 on errors.

With --env, each file is also checked as ` + "`tokenwarden serve --env NAME`" + ` checks
it at start and on every reload (the same code): the environment exists and
a class grants tokenwarden:admin in it. ok then means the agent starts with
the file (and takes it on a reload).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			failed := false
			for _, path := range args {
				if checkPolicyFile(cmd.OutOrStdout(), path, env) {
					failed = true
				}
			}
			if failed {
				return &exitErr{code: exitError, err: fmt.Errorf("policy check failed")}
			}
			return nil
		},
	}
	check.Flags().StringVar(&env, "env", "", "also run the checks `serve --env NAME` runs on the file")
	cmd.AddCommand(check)
	return cmd
}

// checkPolicyFile prints the file's problems (or "ok") and reports whether
// it has errors. With env, a file without errors then goes through
// agent.LoadPolicy, the agent's own start and reload check.
func checkPolicyFile(w io.Writer, path, env string) bool {
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
	if errs > 0 {
		return true
	}
	if env != "" {
		if _, _, err := agent.LoadPolicy(path, env); err != nil {
			fmt.Fprintf(w, "%s: error: serve --env %s would refuse it: %v\n", path, env, err)
			return true
		}
		fmt.Fprintf(w, "%s: ok (environment %s)\n", path, env)
		return false
	}
	fmt.Fprintf(w, "%s: ok\n", path)
	return false
}
