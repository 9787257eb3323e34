package cli

import (
	"context"
	"io"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/agent/admin"
	"github.com/tokenwarden/tokenwarden/agent/store"
)

// Dynamic completion: cobra's `completion bash|zsh|fish|powershell` prints
// the shell's script, which calls the hidden `__complete` command; these
// functions answer it by asking the agent (the context's, or --server's)
// for token ids, key ids, classes, subjects and tenants. A completion that
// cannot reach the agent offers nothing and says nothing.

// completionTimeout bounds one completion's call to the agent: a shell
// waits for it.
const completionTimeout = 3 * time.Second

// completeTokens completes a token id argument; live only offers tokens
// that can still be used (what revoke and rotate act on).
func completeTokens(af *adminFlags, live bool) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return completeTokenIDs(cmd, af, live, toComplete)
	}
}

func completeTokenIDs(cmd *cobra.Command, af *adminFlags, live bool, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	toks, ok := completionTokens(cmd, af, live)
	if !ok {
		return nil, cobra.ShellCompDirectiveError | cobra.ShellCompDirectiveNoFileComp
	}
	var out []cobra.Completion
	for _, t := range toks {
		if strings.HasPrefix(t.ID, toComplete) {
			out = append(out, cobra.CompletionWithDesc(t.ID, printable(t.Subject+" "+t.Class+" "+t.State)))
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completionTokens asks the agent for one page of tokens.
func completionTokens(cmd *cobra.Command, af *adminFlags, live bool) ([]admin.TokenView, bool) {
	c, err := af.client(io.Discard)
	if err != nil {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), completionTimeout)
	defer cancel()
	q := url.Values{}
	if live {
		q.Set("live", "true")
	}
	toks, err := listAll[admin.TokenView](ctx, c, "/v1/tokens", q, admin.MaxPageLimit)
	return toks, err == nil
}

// completeTokenField completes a flag with the values one field takes
// across issued tokens: classes, subjects, tenants.
func completeTokenField(af *adminFlags, field func(admin.TokenView) string) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		toks, ok := completionTokens(cmd, af, false)
		if !ok {
			return nil, cobra.ShellCompDirectiveError | cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, t := range toks {
			if v := field(t); v != "" && strings.HasPrefix(v, toComplete) && !slices.Contains(out, v) {
				out = append(out, printable(v))
			}
		}
		slices.Sort(out)
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeKeys completes a signing key id.
func completeKeys(af *adminFlags) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		c, err := af.client(io.Discard)
		if err != nil {
			return nil, cobra.ShellCompDirectiveError | cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), completionTimeout)
		defer cancel()
		keys, err := listAll[store.Key](ctx, c, "/v1/keys", nil, admin.MaxPageLimit)
		if err != nil {
			return nil, cobra.ShellCompDirectiveError | cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, k := range keys {
			if strings.HasPrefix(k.ID, toComplete) {
				out = append(out, cobra.CompletionWithDesc(k.ID, string(k.State)))
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

func tokenClass(t admin.TokenView) string   { return t.Class }
func tokenSubject(t admin.TokenView) string { return t.Subject }
func tokenTenant(t admin.TokenView) string  { return t.Tenant }

// registerCompletions wires the dynamic completions of the admin commands.
func registerCompletions(root *cobra.Command, af *adminFlags) {
	// A command or flag that is not there (renamed) just goes without.
	find := func(path ...string) *cobra.Command {
		if c, _, err := root.Find(path); err == nil && c != root {
			return c
		}
		return &cobra.Command{}
	}
	flag := func(c *cobra.Command, name string, f cobra.CompletionFunc) {
		if c.Flags().Lookup(name) != nil {
			c.RegisterFlagCompletionFunc(name, f)
		}
	}
	find("token", "show").ValidArgsFunction = completeTokens(af, false)
	find("token", "revoke").ValidArgsFunction = completeTokens(af, true)
	find("token", "rotate").ValidArgsFunction = completeTokens(af, true)
	issue, list, revoke, tail := find("token", "issue"), find("token", "list"), find("revoke"), find("audit", "tail")
	flag(issue, "class", completeTokenField(af, tokenClass))
	flag(issue, "subject", completeTokenField(af, tokenSubject))
	flag(issue, "tenant", completeTokenField(af, tokenTenant))
	flag(list, "class", completeTokenField(af, tokenClass))
	flag(list, "subject", completeTokenField(af, tokenSubject))
	flag(list, "tenant", completeTokenField(af, tokenTenant))
	flag(list, "kid", completeKeys(af))
	flag(revoke, "subject", completeTokenField(af, tokenSubject))
	flag(revoke, "tenant", completeTokenField(af, tokenTenant))
	flag(revoke, "key", completeKeys(af))
	flag(tail, "token", func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		return completeTokenIDs(cmd, af, false, toComplete)
	})
	flag(tail, "subject", completeTokenField(af, tokenSubject))
}
