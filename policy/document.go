package policy

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// MaxDocumentBytes bounds a policy file; a larger one is refused unread.
const MaxDocumentBytes = 4 << 20

// Document is the policy file as written (see deploy/policy.example.yaml).
// Load decodes it strictly and compiles it into a Policy.
type Document struct {
	Version      int                        `yaml:"version"`
	Issuer       string                     `yaml:"issuer"`
	Environments map[string]EnvironmentSpec `yaml:"environments"`
	Classes      map[string]ClassSpec       `yaml:"classes"`
	Services     map[string]ServiceSpec     `yaml:"services"`
	Anomaly      AnomalySpec                `yaml:"anomaly"`
	Audit        AuditSpec                  `yaml:"audit"`
	// ClockSkew is how far ahead of this node's clock a token's nbf and
	// iat may be; DefaultClockSkew when unset, at most MaxClockSkew.
	ClockSkew *Leeway `yaml:"clock_skew"`
	// ExpLeeway is how long after its exp a token is still accepted; 0
	// (refused the second it expires) when unset, at most MaxClockSkew.
	ExpLeeway *Leeway `yaml:"exp_leeway"`
}

// EnvironmentSpec is one row of environments: the ceiling on every token
// minted for or accepted in that environment.
type EnvironmentSpec struct {
	MaxTTL Duration `yaml:"max_ttl"`
}

// ClassSpec is a kind of token that may be issued.
type ClassSpec struct {
	Scopes        []string      `yaml:"scopes"`
	DefaultTTL    Duration      `yaml:"default_ttl"`
	MaxTTL        Duration      `yaml:"max_ttl"`
	RotateAfter   Duration      `yaml:"rotate_after"`
	RotationGrace Duration      `yaml:"rotation_grace"`
	Environments  []string      `yaml:"environments"`
	Delivery      *DeliverySpec `yaml:"delivery"`
	// Binding, when "workload", makes every token of the class bound to
	// the workload identity named at issuance (docs/binding.md).
	Binding string `yaml:"binding"`
	// Workloads are the SPIFFE ID patterns a token of a workload-bound
	// class may be bound to; empty allows any SPIFFE ID.
	Workloads []string `yaml:"workloads"`
}

// DeliverySpec says where successors of rotated tokens are delivered.
type DeliverySpec struct {
	File    string       `yaml:"file"`
	Webhook *WebhookSpec `yaml:"webhook"`
}

// WebhookSpec is an HTTP receiver of successor tokens, signed with HMAC-SHA256
// under the secret read from SecretFile.
type WebhookSpec struct {
	URL        string `yaml:"url"`
	SecretFile string `yaml:"secret_file"`
}

// ServiceSpec says which routes of a service need which scopes.
type ServiceSpec struct {
	Hosts  []string    `yaml:"hosts"`
	Routes []RouteSpec `yaml:"routes"`
}

// RouteSpec is one route rule. Path patterns use "*" for one segment and
// "**" for any number of segments (including none).
type RouteSpec struct {
	Methods []string `yaml:"methods"`
	Path    string   `yaml:"path"`
	Scopes  []string `yaml:"scopes"`
	Public  bool     `yaml:"public"`
}

// AnomalySpec configures the per-token anomaly detector.
type AnomalySpec struct {
	Window       Duration `yaml:"window"`
	MaxRPS       float64  `yaml:"max_rps"`
	SpikeFactor  float64  `yaml:"spike_factor"`
	MaxSourceIPs int      `yaml:"max_source_ips"`
	Action       string   `yaml:"action"`
}

// AuditSpec configures how allowed requests are audited.
type AuditSpec struct {
	Allows          string   `yaml:"allows"`
	SummaryInterval Duration `yaml:"summary_interval"`
}

// Duration is a time.Duration written as Go duration text ("15m", "24h").
type Duration time.Duration

// D returns the duration as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalYAML writes the duration back as text.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

var durationType = reflect.TypeOf(Duration(0))

// Leeway is a duration of whole seconds that may be zero, written as Go
// duration text ("0s", "5s"): clock_skew and exp_leeway.
type Leeway time.Duration

// D returns the leeway as a time.Duration.
func (l Leeway) D() time.Duration { return time.Duration(l) }

// MarshalYAML writes the leeway back as text.
func (l Leeway) MarshalYAML() (any, error) { return time.Duration(l).String(), nil }

var leewayType = reflect.TypeOf(Leeway(0))

// Severity tells an error (the file is refused) from a warning.
type Severity string

const (
	SeverityError   Severity = "error"
	SeverityWarning Severity = "warning"
)

// Problem is one finding about a policy file, with its position.
type Problem struct {
	File     string
	Line     int
	Column   int
	Severity Severity
	Message  string
}

func (p Problem) String() string {
	return fmt.Sprintf("%s:%d:%d: %s: %s", p.File, p.Line, p.Column, p.Severity, p.Message)
}

// LoadError is returned when a policy file has errors; it lists every one.
type LoadError struct {
	Problems []Problem
}

func (e *LoadError) Error() string {
	var b strings.Builder
	n := 0
	for _, p := range e.Problems {
		if p.Severity != SeverityError {
			continue
		}
		if n > 0 {
			b.WriteString("\n")
		}
		b.WriteString(p.String())
		n++
	}
	return b.String()
}

// findings collects problems while a document is decoded and checked.
type findings struct {
	file     string
	problems []Problem
	// failed holds the paths ("classes.ci.max_ttl") whose value could not
	// be decoded, so that validation does not report the same mistake again
	// as a missing value.
	failed map[string]bool
}

// badValue reports a value at path that cannot be decoded.
func (f *findings) badValue(n *yaml.Node, path string, format string, args ...any) {
	if f.failed == nil {
		f.failed = map[string]bool{}
	}
	f.failed[path] = true
	f.errorf(n, format, args...)
}

// decoded reports whether path and every path above it were decoded
// without a problem.
func (f *findings) decoded(path string) bool {
	if f.failed["policy"] {
		return false
	}
	for i := 0; i <= len(path); i++ {
		if i == len(path) || path[i] == '.' || path[i] == '[' {
			if f.failed[path[:i]] {
				return false
			}
		}
	}
	return true
}

// sortProblems puts problems in file order; problems at one position keep
// the order in which they were found.
func (f *findings) sortProblems() {
	sort.SliceStable(f.problems, func(i, j int) bool {
		a, b := f.problems[i], f.problems[j]
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
}

func (f *findings) errorf(n *yaml.Node, format string, args ...any) {
	f.add(n, SeverityError, format, args...)
}

func (f *findings) warnf(n *yaml.Node, format string, args ...any) {
	f.add(n, SeverityWarning, format, args...)
}

func (f *findings) add(n *yaml.Node, s Severity, format string, args ...any) {
	line, col := 1, 1
	if n != nil {
		line, col = n.Line, n.Column
	}
	f.problems = append(f.problems, Problem{File: f.file, Line: line, Column: col, Severity: s, Message: fmt.Sprintf(format, args...)})
}

func (f *findings) hasErrors() bool {
	for _, p := range f.problems {
		if p.Severity == SeverityError {
			return true
		}
	}
	return false
}

// decodeStrict decodes node into v, reporting every unknown field, wrong type
// and bad duration at its line and column instead of stopping at the first.
func (f *findings) decodeStrict(n *yaml.Node, v reflect.Value, where string) {
	if n.Kind == yaml.AliasNode {
		f.badValue(n, where, "%s: YAML aliases are not allowed in a policy file; write the value out", where)
		return
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	switch {
	case v.Type() == durationType:
		if n.Kind != yaml.ScalarNode {
			f.badValue(n, where, "%s: want a duration such as 15m or 24h", where)
			return
		}
		d, err := time.ParseDuration(n.Value)
		if err != nil || d <= 0 {
			f.badValue(n, where, "%s: bad duration %q: write a positive Go duration such as 90s, 15m or 24h", where, n.Value)
			return
		}
		v.SetInt(int64(d))
		return
	case v.Type() == leewayType:
		if n.Kind != yaml.ScalarNode {
			f.badValue(n, where, "%s: want a duration such as 0s or 5s", where)
			return
		}
		d, err := time.ParseDuration(n.Value)
		switch {
		case err != nil || d < 0:
			f.badValue(n, where, "%s: bad duration %q: write a Go duration of 0s or more, such as 0s, 5s or 30s", where, n.Value)
			return
		case d%time.Second != 0:
			f.badValue(n, where, "%s: %s is not a whole number of seconds (token times are in seconds): write %s", where, d, d.Truncate(time.Second))
			return
		case d > MaxClockSkew:
			f.badValue(n, where, "%s: %s is above the %s limit: clocks that far apart need fixing (NTP), not a wider window", where, d, MaxClockSkew)
			return
		}
		v.SetInt(int64(d))
		return
	case v.Kind() == reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		f.decodeStrict(n, v.Elem(), where)
		return
	case v.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			f.badValue(n, where, "%s: want a mapping of %s", where, strings.Join(sortedKeys(structFields(v.Type())), ", "))
			return
		}
		fields := structFields(v.Type())
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			idx, ok := fields[k.Value]
			if !ok {
				f.errorf(k, "%s: unknown field %q: remove it or correct its spelling (known fields: %s)", where, k.Value, strings.Join(sortedKeys(fields), ", "))
				continue
			}
			if seen[k.Value] {
				f.errorf(k, "%s: field %q given twice: keep one", where, k.Value)
				continue
			}
			seen[k.Value] = true
			f.decodeStrict(val, v.Field(idx), childPath(where, k.Value))
		}
		return
	case v.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			f.badValue(n, where, "%s: want a mapping of names", where)
			return
		}
		if v.IsNil() {
			v.Set(reflect.MakeMap(v.Type()))
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			if v.MapIndex(reflect.ValueOf(k.Value)).IsValid() {
				f.errorf(k, "%s: %q given twice: merge the two or rename one", where, k.Value)
				continue
			}
			elem := reflect.New(v.Type().Elem()).Elem()
			f.decodeStrict(val, elem, childPath(where, k.Value))
			v.SetMapIndex(reflect.ValueOf(k.Value), elem)
		}
		return
	case v.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			f.badValue(n, where, "%s: want a list, e.g. [a, b]", where)
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			f.decodeStrict(item, s.Index(i), fmt.Sprintf("%s[%d]", where, i))
		}
		v.Set(s)
		return
	}
	if n.Kind != yaml.ScalarNode {
		f.badValue(n, where, "%s: want a single value, not a list or mapping", where)
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(n.Value)
	case reflect.Bool:
		b, err := strconv.ParseBool(n.Value)
		if err != nil {
			f.badValue(n, where, "%s: want true or false, got %q", where, n.Value)
			return
		}
		v.SetBool(b)
	case reflect.Int:
		i, err := strconv.Atoi(n.Value)
		if err != nil {
			f.badValue(n, where, "%s: want a whole number, got %q", where, n.Value)
			return
		}
		v.SetInt(int64(i))
	case reflect.Float64:
		x, err := strconv.ParseFloat(n.Value, 64)
		if err != nil || math.IsNaN(x) || math.IsInf(x, 0) {
			f.badValue(n, where, "%s: want a number, got %q", where, n.Value)
			return
		}
		v.SetFloat(x)
	default:
		f.badValue(n, where, "%s: unsupported value", where)
	}
}

// childPath names a field the way validation problems do: "classes.ci.max_ttl",
// without the "policy" of the root.
func childPath(where, key string) string {
	if where == "policy" {
		return key
	}
	return where + "." + key
}

func structFields(t reflect.Type) map[string]int {
	m := make(map[string]int, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			m[name] = i
		}
	}
	return m
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// fieldNode finds the value node of key in a mapping node, or returns the
// mapping itself so that a problem still points somewhere useful.
func fieldNode(m *yaml.Node, path ...string) *yaml.Node {
	n := m
	for _, key := range path {
		if n == nil || n.Kind != yaml.MappingNode {
			return n
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				next = n.Content[i+1]
				break
			}
		}
		if next == nil {
			return n
		}
		n = next
	}
	return n
}

// keyNode finds the key node itself (for "this entry" problems).
func keyNode(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return m
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i]
		}
	}
	return m
}

func seqItem(n *yaml.Node, i int) *yaml.Node {
	if n != nil && n.Kind == yaml.SequenceNode && i < len(n.Content) {
		return n.Content[i]
	}
	return n
}

// parseDocument decodes data into a Document and returns the root mapping
// node for positions; the node is nil when there is nothing to validate.
func (f *findings) parseDocument(data []byte) (*Document, *yaml.Node) {
	doc := &Document{}
	if len(data) > MaxDocumentBytes {
		f.errorf(nil, "policy file is %d bytes, over the %d-byte limit: a policy this large is a mistake; check that this is the right file", len(data), MaxDocumentBytes)
		return doc, nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if err == io.EOF {
			f.errorf(nil, "policy file is empty: start from deploy/policy.example.yaml")
		} else {
			f.syntaxError(data, err)
		}
		return doc, nil
	}
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
		f.errorf(nil, "policy file is empty: start from deploy/policy.example.yaml")
		return doc, nil
	}
	top := root.Content[0]
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == io.EOF:
	case err != nil:
		f.syntaxError(data, err)
		return doc, nil
	default:
		// yaml.Unmarshal would silently drop every document but the first.
		f.errorf(&next, "a second YAML document starts here: a policy file holds one; remove the extra ---")
		return doc, nil
	}
	if top.Kind == yaml.ScalarNode && top.Tag == "!!null" {
		f.errorf(top, "policy file is empty: start from deploy/policy.example.yaml")
		return doc, nil
	}
	f.decodeStrict(top, reflect.ValueOf(doc).Elem(), "policy")
	if top.Kind != yaml.MappingNode {
		return doc, nil
	}
	return doc, top
}

// yamlParserErrors are the messages of yaml.v3's parser (as opposed to its
// scanner). For them yaml.v3 reports the 0-based line where the enclosing
// collection starts, one less than the line a reader counts.
var yamlParserErrors = map[string]bool{
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"did not find expected '-' indicator":    true,
	"did not find expected <document start>": true,
	"did not find expected key":              true,
	"did not find expected node content":     true,
	"found duplicate %TAG directive":         true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
}

// syntaxError reports a YAML syntax error. yaml.v3 gives the line only
// ("yaml: line N: ..."); the column is that of the line's first character
// after its indenting spaces, which is where indentation mistakes, the
// usual cause, show (a tab is itself pointed at).
func (f *findings) syntaxError(data []byte, err error) {
	line, msg := 1, err.Error()
	msg = strings.TrimPrefix(msg, "yaml: ")
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, tail, ok := strings.Cut(rest, ":"); ok {
			if l, err := strconv.Atoi(num); err == nil && l > 0 {
				line, msg = l, strings.TrimSpace(tail)
				if yamlParserErrors[msg] {
					line++
				}
			}
		}
	}
	f.problems = append(f.problems, Problem{
		File: f.file, Line: line, Column: firstColumn(data, line), Severity: SeverityError,
		Message: "YAML syntax: " + msg + ": check the indentation (spaces, not tabs), colons and quoting here",
	})
}

// firstColumn is the 1-based column of the first character other than a
// space on a 1-based line of data, or 1.
func firstColumn(data []byte, line int) int {
	for l := 1; l < line; l++ {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return 1
		}
		data = data[i+1:]
	}
	for i, c := range data {
		if c != ' ' {
			if c == '\n' || c == '\r' {
				return 1
			}
			return i + 1
		}
	}
	return 1
}
