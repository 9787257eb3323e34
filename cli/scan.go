package cli

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/agent/admin"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// maxScanFileBytes bounds one scanned file; larger files are skipped with a
// note rather than read into memory.
const maxScanFileBytes = 64 << 20

func newScanCommand(af *adminFlags) *cobra.Command {
	var revoke bool
	cmd := &cobra.Command{
		Use:   "scan [PATH...]",
		Short: "Find leaked tokens in files; confirm them by signature; optionally revoke them",
		Long: `Scan files and directories (or stdin, with - or no PATH) for tokenwarden
tokens. A token-shaped string is reported only when its signature verifies
under one of the agent's signing keys (fetched from the admin API), so there
are no false positives. Hits are named by jti, never printed.

With --revoke every confirmed token still live is revoked (reason "leak: found
in PATH"); only its SHA-256 is sent to the agent.

Exit status: 0 no token found, 3 tokens found, 1 an error.
Secret scanners can use the same pattern: ` + policy.CandidatePattern,
		Example: `  tokenwarden scan ./logs ./build-output.txt
  kubectl logs deploy/ci | tokenwarden scan --revoke -`,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := af.client()
			if err != nil {
				return err
			}
			var keysResp struct {
				Keys []store.Key `json:"keys"`
			}
			if err := c.do(cmd.Context(), "GET", "/v1/keys", nil, &keysResp); err != nil {
				return err
			}
			// Retired keys too: a token they signed is still a leak worth
			// naming, even if nothing accepts it any more.
			pubs := map[string]ed25519.PublicKey{}
			for _, k := range keysResp.Keys {
				pubs[k.ID] = k.Public
			}
			keys := policy.NewKeySet(pubs)
			if len(args) == 0 {
				args = []string{"-"}
			}
			out := cmd.OutOrStdout()
			found, files := 0, 0
			report := func(path string, data []byte) error {
				files++
				for _, cand := range policy.FindCandidates(data, 0) {
					tok, verr := keys.VerifySignature(cand.Text)
					if verr != nil {
						continue // shaped like a token, not one of ours
					}
					found++
					line := 1 + bytes.Count(data[:cand.Offset], []byte("\n"))
					state := "live"
					if time.Now().Unix() >= tok.Expires {
						state = "expired"
					}
					fmt.Fprintf(out, "%s:%d: token %s (subject %s, class %s, %s)", path, line, tok.ID, tok.Subject, tok.Class, state)
					if revoke && state == "live" {
						sum := policy.LeakHash(cand.Text)
						var lr admin.LeakResponse
						if err := c.do(cmd.Context(), "POST", "/v1/leaks", admin.LeakReport{SHA256: hex.EncodeToString(sum[:]), Source: path}, &lr); err != nil {
							fmt.Fprintf(out, ": NOT revoked: %v\n", err)
							continue
						}
						fmt.Fprintf(out, ": revoked (rule %s)", lr.Revocation.ID)
					}
					fmt.Fprintln(out)
				}
				return nil
			}
			for _, arg := range args {
				if arg == "-" {
					data, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), maxScanFileBytes))
					if err != nil {
						return err
					}
					report("<stdin>", data)
					continue
				}
				err := filepath.WalkDir(arg, func(path string, d fs.DirEntry, err error) error {
					if err != nil {
						return err
					}
					if d.IsDir() || !d.Type().IsRegular() {
						return nil
					}
					if info, err := d.Info(); err == nil && info.Size() > maxScanFileBytes {
						fmt.Fprintf(cmd.ErrOrStderr(), "skipping %s: over %d MiB\n", path, maxScanFileBytes>>20)
						return nil
					}
					data, err := os.ReadFile(path)
					if err != nil {
						return err
					}
					return report(path, data)
				})
				if err != nil {
					return fmt.Errorf("scan %s: %w", arg, err)
				}
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "scanned %d file(s): %d token(s) found\n", files, found)
			if found > 0 {
				return &exitError{code: 3, err: fmt.Errorf("%d leaked token(s) found", found)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&revoke, "revoke", false, "revoke every live token found")
	return cmd
}
