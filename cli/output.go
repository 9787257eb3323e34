package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// Output formats of -o, kubectl's flag: table (the default), wide (table
// with more columns), json and yaml (the API's own field names).
const (
	outTable = "table"
	outWide  = "wide"
	outJSON  = "json"
	outYAML  = "yaml"
	// outToken is the default of token issue and rotate: the token alone.
	outToken = "token"
)

// outputFormat is -o's value: one of the formats the command allows; any
// other value is refused when the flag is parsed (a usage error).
type outputFormat struct {
	value   string
	allowed []string
}

func (o *outputFormat) String() string { return o.value }
func (o *outputFormat) Type() string   { return "format" }
func (o *outputFormat) Set(s string) error {
	if !slices.Contains(o.allowed, s) {
		return fmt.Errorf("want %s", strings.Join(o.allowed, ", "))
	}
	o.value = s
	return nil
}

// jsonAlias is the deprecated --json: -o json.
type jsonAlias struct{ o *outputFlags }

func (j jsonAlias) String() string { return "false" }
func (j jsonAlias) Type() string   { return "bool" }
func (j jsonAlias) IsBoolFlag() bool {
	return true
}
func (j jsonAlias) Set(s string) error {
	switch s {
	case "true":
		j.o.format.value = outJSON
		j.o.jsonAlias = true
	case "false":
	default:
		return fmt.Errorf("want true or false")
	}
	return nil
}

// outputFlags are -o and --local.
type outputFlags struct {
	format    outputFormat
	local     bool
	jsonAlias bool // --json was given
}

// addOutputFlags gives cmd -o (formats allowed, the first the default) and
// --local.
func addOutputFlags(cmd *cobra.Command, formats ...string) *outputFlags {
	if len(formats) == 0 {
		formats = []string{outTable, outWide, outJSON, outYAML}
	}
	o := &outputFlags{format: outputFormat{value: formats[0], allowed: formats}}
	cmd.Flags().VarP(&o.format, "output", "o", "output format: "+strings.Join(formats, ", "))
	cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(formats, cobra.ShellCompDirectiveNoFileComp))
	cmd.Flags().BoolVar(&o.local, "local", false, "show times in the local time zone rather than UTC")
	return o
}

// addJSONAlias keeps the --json of earlier versions as -o json, hidden;
// using it says so on stderr (cobra's own deprecation notice would go to
// the command's output, into the JSON).
func addJSONAlias(cmd *cobra.Command, o *outputFlags) {
	f := cmd.Flags().VarPF(jsonAlias{o}, "json", "", "same as -o json (deprecated)")
	f.NoOptDefVal = "true"
	f.Hidden = true
	run := cmd.RunE
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if o.jsonAlias {
			fmt.Fprintln(cmd.ErrOrStderr(), "warning: --json is deprecated: use -o json")
		}
		return run(cmd, args)
	}
}

// localZone is the zone of --local (a variable for tests: time.Local is
// read by every goroutine of the process).
var localZone = time.Local

// zone is the time zone times are shown in.
func (o *outputFlags) zone() *time.Location {
	if o.local {
		return localZone
	}
	return time.UTC
}

// when renders t in RFC 3339; "-" for the zero time.
func (o *outputFlags) when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.In(o.zone()).Format(time.RFC3339)
}

// in moves t to the output's zone, keeping the zero time zero.
func (o *outputFlags) in(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.In(o.zone())
}

// column is one column of a resource's table.
type column[T any] struct {
	header string
	wide   bool // shown only with -o wide
	value  func(o *outputFlags, v T) string
}

// resource says how one kind of record is printed.
type resource[T any] struct {
	columns []column[T]
	// zoned returns v with its times in o's zone (for json and yaml).
	zoned func(o *outputFlags, v T) T
}

// list prints items: a table, or {"items": [...]} in JSON or YAML, the
// shape of the API's answer.
func (r resource[T]) list(w io.Writer, o *outputFlags, items []T) error {
	switch o.format.value {
	case outJSON, outYAML:
		out := make([]T, len(items))
		for i, v := range items {
			out[i] = r.zoned(o, v)
		}
		return encode(w, o.format.value, struct {
			Items []T `json:"items"`
		}{out})
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	var head []string
	for _, c := range r.columns {
		if !c.wide || o.format.value == outWide {
			head = append(head, c.header)
		}
	}
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for _, v := range items {
		var row []string
		for _, c := range r.columns {
			if !c.wide || o.format.value == outWide {
				row = append(row, cell(c.value(o, v)))
			}
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return tw.Flush()
}

// one prints a single record: the object itself in JSON or YAML, a table
// of one row otherwise.
func (r resource[T]) one(w io.Writer, o *outputFlags, v T) error {
	switch o.format.value {
	case outJSON, outYAML:
		return encode(w, o.format.value, r.zoned(o, v))
	}
	return r.list(w, o, []T{v})
}

// cell is a table cell: escaped for the terminal, and "-" when empty so
// columns stay aligned for the eye and for awk.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return printable(s)
}

// encode writes v as indented JSON or as YAML (converted from the JSON, so
// the field names are the same).
func encode(w io.Writer, format string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if format == outYAML {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
