package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spf13/cobra"
)

// newHealthCommand is the probe of an agent whose admin listener the
// kubelet cannot reach (on the pod's loopback, or requiring TLS): an exec
// probe runs it inside the container.
func newHealthCommand(admin *adminFlags) *cobra.Command {
	var ready bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "health [--ready]",
		Short: "Exit 0 when the agent at --server is alive (--ready: ready to enforce); for exec probes",
		Long: `Ask the agent's /healthz (or with --ready /readyz) and exit 0 when it
answers 200, 1 otherwise. No admin token is needed or sent. The Helm chart's
probes run it in the container, since the admin listener binds the pod's
loopback (docs/kubernetes.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := admin.resolve()
			if err != nil {
				return err
			}
			base, err := serverURL(t.server)
			if err != nil {
				return err
			}
			transport, err := t.transport(base)
			if err != nil {
				return err
			}
			path := "/healthz"
			if ready {
				path = "/readyz"
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
			if err != nil {
				return err
			}
			client := &http.Client{Transport: transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			resp, err := client.Do(req)
			if err != nil {
				return fmt.Errorf("%s%s: %w", base, path, err)
			}
			defer resp.Body.Close()
			io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s%s answered %d", base, path, resp.StatusCode)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&ready, "ready", false, "ask /readyz: ready to enforce (the store's watch is up)")
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "how long to wait for the answer")
	return cmd
}
