package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/tokenwarden/tokenwarden/agent"
	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/store/bolt"
	etcdstore "github.com/tokenwarden/tokenwarden/agent/store/etcd"
)

func newAuditCommand(af *adminFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Read, follow and verify the audit log"}
	cmd.AddCommand(newAuditTailCommand(af), newAuditVerifyCommand(af))
	return cmd
}

func newAuditTailCommand(af *adminFlags) *cobra.Command {
	var n int
	var follow bool
	var filter audit.Filter
	var o *outputFlags
	cmd := &cobra.Command{
		Use:   "tail [-f] [-n N] [--token ID] [--subject S] [--action A] [-o table|wide|json|yaml]",
		Short: "Print the last audit records; -f follows new ones",
		Long: `Print the last audit records, oldest first; -f keeps printing new ones.

-o json and -o yaml print {"items": [...]} as the admin API does; with -f
they print one record per line (JSON) or per document (YAML), as records
come.`,
		Example: `  tokenwarden audit tail -n 20
  tokenwarden audit tail -f --action token.   # every token.* action, live
  tokenwarden audit tail -f -o json | jq -c 'select(.action == "token.revoke")'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if n < 0 || n > 10000 {
				return usageErrorf("--lines %d: want 0 to 10000", n)
			}
			c, err := af.client(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			q := url.Values{}
			for k, v := range map[string]string{"token": filter.TokenID, "subject": filter.Subject, "action": filter.Action} {
				if v != "" {
					q.Set(k, v)
				}
			}
			out := cmd.OutOrStdout()
			if !follow {
				var recs []audit.Record
				if n > 0 {
					// Pages go back in time: the newest first.
					pages, err := listPages[audit.Record](cmd.Context(), c, "/v1/audit", q, n)
					if err != nil {
						return err
					}
					slices.Reverse(pages)
					recs = slices.Concat(pages...)
				}
				switch o.format.value {
				case outJSON, outYAML:
					return auditOut.list(out, o, recs)
				}
				printAuditHeader(out, o)
				for _, r := range recs {
					printAuditRow(out, o, r)
				}
				return nil
			}
			q.Set("n", strconv.Itoa(n))
			resp, err := c.send(cmd.Context(), "GET", "/v1/audit/stream?"+q.Encode(), nil)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			print := func(r audit.Record) error {
				switch o.format.value {
				case outJSON:
					b, err := json.Marshal(auditOut.zoned(o, r))
					if err != nil {
						return err
					}
					_, err = fmt.Fprintf(out, "%s\n", b)
					return err
				case outYAML:
					fmt.Fprintln(out, "---")
					return encode(out, outYAML, auditOut.zoned(o, r))
				}
				printAuditRow(out, o, r)
				return nil
			}
			if o.format.value == outTable || o.format.value == outWide {
				printAuditHeader(out, o)
			}
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
				if err := print(r); err != nil {
					return err
				}
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
	f.StringVar(&filter.TokenID, "token", "", "only records about this token id")
	f.StringVar(&filter.Subject, "subject", "", "only records about this subject")
	f.StringVar(&filter.Action, "action", "", `only this action ("token." for a prefix)`)
	o = addOutputFlags(cmd)
	addJSONAlias(cmd, o)
	return cmd
}

// Audit records are printed a line each, in fixed-width columns, so that
// a followed log stays aligned without waiting for the records to come.
func printAuditHeader(w io.Writer, o *outputFlags) {
	printAuditLine(w, o, "TIME", "SEQ", "ACTION", "ACTOR", "DETAILS", "CHAIN KEY", "HASH")
}

func printAuditRow(w io.Writer, o *outputFlags, r audit.Record) {
	printAuditLine(w, o, o.when(r.Time), strconv.FormatUint(r.Seq, 10), r.Action, r.Actor, recordDetails(r), r.ChainKey, r.Hash)
}

func printAuditLine(w io.Writer, o *outputFlags, when, seq, action, actor, details, chainKey, hash string) {
	width := len(time.RFC3339) - 5 // 2006-01-02T15:04:05Z
	if o.local {
		width = len(time.RFC3339)
	}
	line := fmt.Sprintf("%-*s  %6s  %-18s  %-26s  ", width, cell(when), cell(seq), cell(action), cell(actor))
	if o.format.value == outWide {
		line += fmt.Sprintf("%-19s  %-64s  ", cell(chainKey), cell(hash))
	}
	fmt.Fprintln(w, line+cell(details))
}

// recordDetails is what a record says beyond its time, seq, action and
// actor, as key=value pairs and its evidence as compact JSON.
func recordDetails(r audit.Record) string {
	var b strings.Builder
	for _, kv := range [][2]string{{"token", r.TokenID}, {"subject", r.Subject}, {"tenant", r.Tenant}, {"reason", r.Reason}, {"source", r.Source}, {"route", r.Route}} {
		if v := kv[1]; v != "" {
			if strings.ContainsAny(v, " \"=") {
				v = strconv.Quote(v)
			}
			fmt.Fprintf(&b, " %s=%s", kv[0], v)
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
	return strings.TrimPrefix(b.String(), " ")
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

func newAuditVerifyCommand(af *adminFlags) *cobra.Command {
	var dataDir, backend, prefix, node string
	var endpoints []string
	var online bool
	cmd := &cobra.Command{
		Use:   "verify [--data-dir DIR] [--store bolt|etcd ...] [--node-name NAME]",
		Short: "Check the audit log's keyed hash chain across all its files against the head recorded in the store; names the first bad line",
		Long: `Walks every file of the audit log and checks each record's HMAC under the
store's audit key, the links between records, and that the log holds and
reaches the chain head this node last recorded in the store. It then says
what it proved and what it could not: unkeyed legacy records, records after
the last recorded head (a cut tail there cannot be detected), or everything
keyed when the store could not be read (with bolt, the running agent holds
the store's file: use --online, or stop the agent first).

--online asks the running agent (admin API) to verify its own log with its
key and recorded head.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if online {
				return verifyOnline(cmd, af)
			}
			if backend != agent.StoreBolt && backend != agent.StoreEtcd {
				return usageErrorf("--store %q: want %s or %s", backend, agent.StoreBolt, agent.StoreEtcd)
			}
			dir := filepath.Join(dataDir, "audit")
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				return fmt.Errorf("no audit log at %s: pass the agent's --data-dir (env %s)", dir, envDataDir)
			}
			if node == "" {
				var err error
				if node, err = agent.DefaultNodeName(dataDir); err != nil {
					return err
				}
			}
			opts, err := auditVerifyOptions(cmd.Context(), dataDir, backend, endpoints, prefix, node)
			if err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %v\nverifying without the audit key and the recorded head: keyed records are checked for order and links only, and a cut tail cannot be detected\n", err)
			}
			rep, err := audit.Verify(dir, opts)
			if err != nil {
				return &exitErr{code: exitError, err: fmt.Errorf("audit log %s is NOT intact: %w", dir, err)}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %s\n", rep.Summary())
			if rep.Gaps > 0 {
				return &exitErr{code: exitError, err: fmt.Errorf("audit log %s: the agent found records missing (audit.gap at #%d)", dir, rep.GapSeq)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dataDir, "data-dir", defaultDataDir(), "the agent's data directory (env "+envDataDir+")")
	f.StringVar(&backend, "store", agent.DefaultStore, "the agent's store: bolt (in --data-dir) or etcd")
	f.StringSliceVar(&endpoints, "etcd-endpoints", nil, "etcd client URLs for --store=etcd")
	f.StringVar(&prefix, "etcd-prefix", agent.DefaultEtcdPrefix, "key prefix in etcd")
	f.BoolVar(&online, "online", false, "ask the running agent to verify its log (admin API, --server)")
	f.StringVar(&node, "node-name", "", "the node whose recorded head to check: the agent's --node-name (default: as the agent defaults it for --data-dir)")
	return cmd
}

// verifyOnline asks the agent to verify its own log.
func verifyOnline(cmd *cobra.Command, af *adminFlags) error {
	c, err := af.client(cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	var resp struct {
		OK      bool   `json:"ok"`
		Summary string `json:"summary"`
		Error   string `json:"error"`
	}
	if err := c.do(cmd.Context(), "GET", "/v1/audit/verify", nil, &resp); err != nil {
		return err
	}
	if resp.Error != "" {
		return &exitErr{code: exitError, err: fmt.Errorf("the agent's audit log is NOT intact: %s", printable(resp.Error))}
	}
	out := cmd.OutOrStdout()
	for i, line := range strings.Split(resp.Summary, "\n") {
		if i == 0 {
			line = "ok: " + line
		}
		fmt.Fprintln(out, printable(line))
	}
	if !resp.OK {
		return &exitErr{code: exitError, err: errors.New("the agent found records missing from its audit log (audit.gap)")}
	}
	return nil
}

// auditVerifyOptions reads the audit key (unsealed with the KEK in dataDir)
// and node's recorded head from the store.
func auditVerifyOptions(ctx context.Context, dataDir, backend string, endpoints []string, prefix, node string) (audit.VerifyOptions, error) {
	// Read only: verifying must not create a key or a store that are missing.
	for _, name := range []string{"kek", bolt.FileName} {
		if _, err := os.Stat(filepath.Join(dataDir, name)); err != nil && (name == "kek" || backend == agent.StoreBolt) {
			return audit.VerifyOptions{}, err
		}
	}
	kek, err := store.LoadOrCreateKEK(filepath.Join(dataDir, "kek"))
	if err != nil {
		return audit.VerifyOptions{}, err
	}
	var st store.Store
	switch backend {
	case agent.StoreBolt:
		st, err = bolt.Open(filepath.Join(dataDir, bolt.FileName), bolt.WithLockTimeout(time.Second))
	case agent.StoreEtcd:
		st, err = etcdstore.Open(ctx, etcdstore.Config{Endpoints: endpoints, Prefix: prefix})
	default:
		err = fmt.Errorf("--store %q: want bolt or etcd", backend)
	}
	if err != nil {
		return audit.VerifyOptions{}, err
	}
	defer st.Close()
	sk, err := st.AuditKey(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return audit.VerifyOptions{}, errors.New("the store holds no audit key: the log was never keyed")
	}
	if err != nil {
		return audit.VerifyOptions{}, err
	}
	secret, err := store.UnsealAuditSecret(kek, sk)
	if err != nil {
		return audit.VerifyOptions{}, err
	}
	opts := audit.VerifyOptions{Key: &audit.Key{ID: sk.ID, Secret: secret}}
	h, err := st.AuditHead(ctx, node)
	switch {
	case err == nil:
		opts.Head = &h
	case !errors.Is(err, store.ErrNotFound):
		return opts, fmt.Errorf("read the recorded head of %s: %w", node, err)
	}
	return opts, nil
}
