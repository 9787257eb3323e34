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

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/agent/admin"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// maxScanFileBytes bounds one scanned file; larger files are skipped with a
// note rather than read into memory.
const maxScanFileBytes = 64 << 20

// exitFound is scan's exit status when it found tokens.
const exitFound = 3

// readBounded reads at most limit bytes of a file: a scanned file that was
// no larger than limit when listed may have grown since, and a policy file
// is read one byte past its limit so policy.Load refuses it by size.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}

// leakSource names where a leak was found within the API's 512-byte limit.
func leakSource(path string) string {
	if len(path) <= 512 {
		return path
	}
	return "..." + path[len(path)-509:]
}

func newScanCommand(af *adminFlags) *cobra.Command {
	var revoke, dryRun bool
	cmd := &cobra.Command{
		Use:   "scan [PATH...]",
		Short: "Find leaked tokens in files; confirm them by signature; optionally revoke them",
		Long: `Scan files and directories (or stdin, with - or no PATH) for tokenwarden
tokens. A token-shaped string is reported only when its signature verifies
under one of the agent's signing keys (fetched from the admin API), so there
are no false positives. Hits are named by jti, never printed.

With --revoke every confirmed token still live is revoked (reason "leak: found
in PATH"); only its SHA-256 is sent to the agent.

Exit status: 0 no token found, 3 tokens found, 1 an error (including a
token found but not revoked with --revoke, or a file that could not be
read), 2 a usage mistake.
Secret scanners can use the same pattern: ` + policy.CandidatePattern,
		Example: `  tokenwarden scan ./logs ./build-output.txt
  kubectl logs deploy/ci | tokenwarden scan --revoke -`,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := af.client(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			signing, err := listAll[store.Key](cmd.Context(), c, "/v1/keys", nil, 0)
			if err != nil {
				return err
			}
			// Retired keys too: a token they signed is still a leak worth
			// naming, even if nothing accepts it any more.
			pubs := map[string]ed25519.PublicKey{}
			for _, k := range signing {
				pubs[k.ID] = k.Public
			}
			keys := policy.NewKeySet(pubs)
			if len(args) == 0 {
				args = []string{"-"}
			}
			out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
			found, files, notRevoked, unread := 0, 0, 0, 0
			report := func(path string, data []byte) {
				files++
				for _, cand := range policy.FindCandidates(data, 0) {
					tok, verr := keys.VerifySignature(cand.Text)
					if verr != nil {
						continue // shaped like a token, not one of ours
					}
					found++
					line := 1 + bytes.Count(data[:cand.Offset], []byte("\n"))
					state := scanState(cmd, c, tok)
					fmt.Fprint(out, printable(fmt.Sprintf("%s:%d: token %s (subject %s, class %s, %s)", path, line, tok.ID, tok.Subject, tok.Class, state)))
					if revoke && state == "live" {
						sum := policy.LeakHash(cand.Text)
						var lr admin.LeakResponse
						if err := c.do(cmd.Context(), "POST", "/v1/leaks", admin.LeakReport{SHA256: hex.EncodeToString(sum[:]), Source: leakSource(path), DryRun: dryRun}, &lr); err != nil {
							notRevoked++
							fmt.Fprintf(out, ": NOT revoked: %v\n", err)
							continue
						}
						switch {
						case lr.DryRun:
							fmt.Fprint(out, ": would be revoked (dry run)")
						case lr.AlreadyRevoked:
							fmt.Fprint(out, ": already revoked")
						case lr.Replicating:
							fmt.Fprintf(out, ": revoked on this agent (rule %s), REPLICATING: the store has not taken it yet", lr.Revocation.ID)
						default:
							fmt.Fprintf(out, ": revoked (rule %s)", lr.Revocation.ID)
						}
					}
					fmt.Fprintln(out)
				}
			}
			for _, arg := range args {
				if arg == "-" {
					data, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), maxScanFileBytes+1))
					if err != nil {
						return fmt.Errorf("read standard input: %w", err)
					}
					if len(data) > maxScanFileBytes {
						data = data[:maxScanFileBytes]
						unread++
						fmt.Fprintf(errOut, "standard input is over %d MiB: only its first %d MiB were scanned; save it to files and scan those\n", maxScanFileBytes>>20, maxScanFileBytes>>20)
					}
					report("<stdin>", data)
					continue
				}
				err := filepath.WalkDir(arg, func(path string, d fs.DirEntry, err error) error {
					if err != nil {
						if path == arg {
							return err // the argument itself
						}
						unread++
						fmt.Fprintln(errOut, printable(fmt.Sprintf("skipping %s: %v", path, err)))
						return nil
					}
					if d.IsDir() || !d.Type().IsRegular() {
						return nil
					}
					if info, err := d.Info(); err == nil && info.Size() > maxScanFileBytes {
						unread++
						fmt.Fprintln(errOut, printable(fmt.Sprintf("skipping %s: over %d MiB", path, maxScanFileBytes>>20)))
						return nil
					}
					data, err := readBounded(path, maxScanFileBytes)
					if err != nil {
						unread++
						fmt.Fprintln(errOut, printable(fmt.Sprintf("skipping %s: %v", path, err)))
						return nil
					}
					report(path, data)
					return nil
				})
				if err != nil {
					return fmt.Errorf("scan %s: %w", arg, err)
				}
			}
			fmt.Fprintf(errOut, "scanned %d file(s): %d token(s) found\n", files, found)
			switch {
			case notRevoked > 0:
				return &exitErr{code: exitError, err: fmt.Errorf("%d leaked token(s) found, %d of them NOT revoked: revoke them with `tokenwarden token revoke ID --reason leak`", found, notRevoked)}
			case found > 0:
				return &exitErr{code: exitFound, err: fmt.Errorf("%d leaked token(s) found", found)}
			case unread > 0:
				return &exitErr{code: exitError, err: fmt.Errorf("no token found, but %d file(s) could not be scanned (see above)", unread)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&revoke, "revoke", false, "revoke every live token found (revoked and expired ones are skipped)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "with --revoke: say which tokens would be revoked, revoke nothing")
	return cmd
}
