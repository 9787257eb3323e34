package cli

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"
)

func newConfigCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "View and edit the CLI's contexts (which agent, which admin token)",
		Long: `The CLI's configuration file names contexts: an agent's admin address, the
file holding an admin token for it, and the CA that signs its certificate
(for an https:// address). One is current; --context or
TOKENWARDEN_CONTEXT picks another for one command.

The file is $TOKENWARDEN_CONFIG, else $XDG_CONFIG_HOME/tokenwarden/config.yaml,
else ~/.config/tokenwarden/config.yaml. It is written mode 0600 and refused
when others may write it.

Each setting comes from, in order: its flag (--server, --admin-token-file);
the context named by --context or TOKENWARDEN_CONTEXT; the environment
(TOKENWARDEN_SERVER, TOKENWARDEN_ADMIN_TOKEN_FILE); the current context; the
default (the local agent and the admin token in the default data
directory, ~/.local/state/tokenwarden).`,
		Example: `  tokenwarden config set-context dev --server 127.0.0.1:9003 --admin-token-file .data/admin.token --use
  tokenwarden config get-contexts
  tokenwarden --context prod-node-1 token list`,
	}
	cmd.AddCommand(newConfigViewCommand(), newConfigGetContextsCommand(), newConfigCurrentContextCommand(),
		newConfigSetContextCommand(), newConfigUseContextCommand(), newConfigDeleteContextCommand())
	return cmd
}

func newConfigViewCommand() *cobra.Command {
	var o *outputFlags
	cmd := &cobra.Command{
		Use:   "view [-o yaml|json]",
		Short: "Print the configuration file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := loadConfig(configPath())
			if err != nil {
				return err
			}
			return encode(cmd.OutOrStdout(), o.format.value, c)
		},
	}
	o = addOutputFlags(cmd, outYAML, outJSON)
	return cmd
}

// contextRow is a context as get-contexts prints it.
type contextRow struct {
	Current bool   `json:"current"`
	Name    string `json:"name"`
	cliContext
}

var contextOut = resource[contextRow]{
	columns: []column[contextRow]{
		{header: "CURRENT", value: func(_ *outputFlags, c contextRow) string {
			if c.Current {
				return "*"
			}
			return " "
		}},
		{header: "NAME", value: func(_ *outputFlags, c contextRow) string { return c.Name }},
		{header: "SERVER", value: func(_ *outputFlags, c contextRow) string { return c.Server }},
		{header: "ADMIN TOKEN FILE", value: func(_ *outputFlags, c contextRow) string { return c.AdminTokenFile }},
		{header: "CA FILE", wide: true, value: func(_ *outputFlags, c contextRow) string { return c.CAFile }},
	},
	zoned: func(_ *outputFlags, c contextRow) contextRow { return c },
}

func newConfigGetContextsCommand() *cobra.Command {
	var o *outputFlags
	cmd := &cobra.Command{
		Use:   "get-contexts [-o table|wide|json|yaml]",
		Short: "List the contexts; * marks the current one",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := loadConfig(configPath())
			if err != nil {
				return err
			}
			rows := []contextRow{}
			for _, name := range c.names() {
				rows = append(rows, contextRow{Current: name == c.CurrentContext, Name: name, cliContext: c.Contexts[name]})
			}
			return contextOut.list(cmd.OutOrStdout(), o, rows)
		},
	}
	o = addOutputFlags(cmd)
	return cmd
}

func newConfigCurrentContextCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "current-context",
		Short: "Print the current context's name",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := loadConfig(configPath())
			if err != nil {
				return err
			}
			if c.CurrentContext == "" {
				return fmt.Errorf("no current context in %s: choose one with `tokenwarden config use-context NAME`", configPath())
			}
			fmt.Fprintln(cmd.OutOrStdout(), c.CurrentContext)
			return nil
		},
	}
}

func newConfigSetContextCommand() *cobra.Command {
	var server, tokenFile, caFile string
	var use bool
	cmd := &cobra.Command{
		Use:   "set-context NAME [--server ADDR] [--admin-token-file FILE] [--ca-file FILE] [--use]",
		Short: "Add a context, or change the settings given of an existing one",
		Long: `Add a context, or change the settings given of an existing one. Files are
stored as absolute paths (a relative one is taken from the current
directory), so the context works from any directory.`,
		Args:              contextNameArg,
		ValidArgsFunction: completeContexts,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			path := configPath()
			c, err := loadConfig(path)
			if err != nil {
				return err
			}
			if c.Contexts == nil {
				c.Contexts = map[string]cliContext{}
			}
			ctx := c.Contexts[name]
			f := cmd.Flags()
			if f.Changed("server") {
				if _, err := serverURL(server); err != nil {
					return err
				}
				ctx.Server = server
			}
			for flag, v := range map[string]struct{ from, to *string }{
				"admin-token-file": {&tokenFile, &ctx.AdminTokenFile}, "ca-file": {&caFile, &ctx.CAFile},
			} {
				if !f.Changed(flag) {
					continue
				}
				*v.to = ""
				if *v.from != "" {
					abs, err := filepath.Abs(*v.from)
					if err != nil || len(abs) > maxConfigPathBytes {
						return usageErrorf("--%s %q: not a usable path", flag, *v.from)
					}
					*v.to = abs
				}
			}
			if _, ok := c.Contexts[name]; !ok && len(c.Contexts) >= maxContexts {
				return usageErrorf("%s holds %d contexts already: delete one first", path, maxContexts)
			}
			c.Contexts[name] = ctx
			if use {
				c.CurrentContext = name
			}
			if err := c.save(path); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "context %s set in %s\n", name, path)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&server, "server", "", "the agent's admin address, http(s)://HOST:PORT")
	f.StringVar(&tokenFile, "admin-token-file", "", "file holding an admin token for that agent")
	f.StringVar(&caFile, "ca-file", "", "PEM bundle of the CA that signs the agent's certificate (https:// servers)")
	f.BoolVar(&use, "use", false, "make it the current context")
	return cmd
}

func newConfigUseContextCommand() *cobra.Command {
	return &cobra.Command{
		Use:               "use-context NAME",
		Short:             "Make NAME the current context",
		Args:              contextNameArg,
		ValidArgsFunction: completeContexts,
		RunE: func(cmd *cobra.Command, args []string) error {
			path := configPath()
			c, err := loadConfig(path)
			if err != nil {
				return err
			}
			if _, _, err := c.selected(args[0]); err != nil {
				return err
			}
			c.CurrentContext = args[0]
			if err := c.save(path); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "current context is %s\n", args[0])
			return nil
		},
	}
}

func newConfigDeleteContextCommand() *cobra.Command {
	return &cobra.Command{
		Use:               "delete-context NAME",
		Short:             "Remove a context",
		Args:              contextNameArg,
		ValidArgsFunction: completeContexts,
		RunE: func(cmd *cobra.Command, args []string) error {
			path := configPath()
			c, err := loadConfig(path)
			if err != nil {
				return err
			}
			if _, _, err := c.selected(args[0]); err != nil {
				return err
			}
			delete(c.Contexts, args[0])
			if c.CurrentContext == args[0] {
				c.CurrentContext = ""
			}
			if err := c.save(path); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "context %s deleted\n", args[0])
			return nil
		},
	}
}

// contextNameArg accepts one context name.
func contextNameArg(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return usageErrorf("give one context name, got %d argument(s)", len(args))
	}
	if !contextName.MatchString(args[0]) {
		return usageErrorf("context name %q: a letter or digit, then up to 62 letters, digits, '.', '_' or '-'", args[0])
	}
	return nil
}

// completeContexts completes the names of the file's contexts.
func completeContexts(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	c, err := loadConfig(configPath())
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	return c.names(), cobra.ShellCompDirectiveNoFileComp
}
