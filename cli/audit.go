package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/agent/audit"
)

func newAuditCommand(af *adminFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Read, follow and verify the audit log"}
	cmd.AddCommand(newAuditTailCommand(af), newAuditVerifyCommand())
	return cmd
}

func newAuditTailCommand(af *adminFlags) *cobra.Command {
	var n int
	var follow, asJSON bool
	var filter audit.Filter
	cmd := &cobra.Command{
		Use:   "tail [-f] [--token ID] [--subject S] [--action A]",
		Short: "Print the last audit records; -f follows new ones",
		Example: `  tokenwarden audit tail -n 20
  tokenwarden audit tail -f --action token.   # every token.* action, live`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if n < 0 || n > 10000 {
				return usageErrorf("--lines %d: want 0 to 10000", n)
			}
			c, err := af.client(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			q := url.Values{"n": {strconv.Itoa(n)}}
			for k, v := range map[string]string{"token": filter.TokenID, "subject": filter.Subject, "action": filter.Action} {
				if v != "" {
					q.Set(k, v)
				}
			}
			out := cmd.OutOrStdout()
			print := func(r audit.Record) {
				if asJSON {
					json.NewEncoder(out).Encode(r)
					return
				}
				fmt.Fprintln(out, formatRecord(r))
			}
			if !follow {
				var resp struct {
					Records []audit.Record `json:"records"`
				}
				if err := c.do(cmd.Context(), "GET", "/v1/audit?"+q.Encode(), nil, &resp); err != nil {
					return err
				}
				for _, r := range resp.Records {
					print(r)
				}
				return nil
			}
			resp, err := c.send(cmd.Context(), "GET", "/v1/audit/stream?"+q.Encode(), nil)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 64<<10), 2<<20)
			for sc.Scan() {
				line := bytes.TrimSpace(sc.Bytes())
				if len(line) == 0 {
					continue // heartbeat
				}
				var r audit.Record
				if err := json.Unmarshal(line, &r); err != nil {
					return fmt.Errorf("audit stream: %w", err)
				}
				print(r)
			}
			if cmd.Context().Err() != nil {
				return nil
			}
			if err := sc.Err(); err != nil && err != io.EOF {
				return fmt.Errorf("audit stream ended: %w (run the command again to resume)", err)
			}
			return fmt.Errorf("the agent ended the audit stream (it stopped, or this reader fell behind); run the command again to resume")
		},
	}
	f := cmd.Flags()
	f.IntVarP(&n, "lines", "n", 20, "how many past records to print first (0 to 10000)")
	f.BoolVarP(&follow, "follow", "f", false, "keep printing new records as they are written")
	f.BoolVar(&asJSON, "json", false, "print records as JSON lines")
	f.StringVar(&filter.TokenID, "token", "", "only records about this token id")
	f.StringVar(&filter.Subject, "subject", "", "only records about this subject")
	f.StringVar(&filter.Action, "action", "", `only this action ("token." for a prefix)`)
	return cmd
}

// formatRecord renders one record on one line for people.
func formatRecord(r audit.Record) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s  #%d  %-18s actor=%s", r.Time.Local().Format(time.DateTime), r.Seq, r.Action, r.Actor)
	for _, kv := range [][2]string{{"token", r.TokenID}, {"subject", r.Subject}, {"tenant", r.Tenant}, {"reason", r.Reason}, {"source", r.Source}, {"route", r.Route}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, " %s=%s", kv[0], kv[1])
		}
	}
	if r.Count > 0 {
		fmt.Fprintf(&b, " count=%d", r.Count)
	}
	if len(r.Details) > 0 {
		var compact bytes.Buffer
		if json.Compact(&compact, r.Details) == nil {
			fmt.Fprintf(&b, " %s", compact.Bytes())
		}
	}
	return printable(b.String())
}

// printable escapes what a terminal would act on rather than show (control
// characters, escape sequences): a record's source or a scanned file's name
// can come from anyone.
func printable(s string) string {
	clean := true
	for _, r := range s {
		if r != ' ' && !unicode.IsPrint(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if r == ' ' || unicode.IsPrint(r) {
			b.WriteRune(r)
			continue
		}
		q := strconv.QuoteRune(r)
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
}

func newAuditVerifyCommand() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "verify [--data-dir DIR]",
		Short: "Check the audit log's hash chain across all its files; names the first bad line",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := filepath.Join(dataDir, "audit")
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				return fmt.Errorf("no audit log at %s: pass the agent's --data-dir (env %s)", dir, envDataDir)
			}
			rep, err := audit.Verify(dir)
			if err != nil {
				return &exitErr{code: exitError, err: fmt.Errorf("audit log %s is NOT intact: %w", dir, err)}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %d records (#%d to #%d) in %d file(s); chain head %s\n",
				rep.Records, rep.FirstSeq, rep.LastSeq, rep.Files, rep.LastHash)
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", defaultDataDir(), "the agent's data directory (env "+envDataDir+")")
	return cmd
}
