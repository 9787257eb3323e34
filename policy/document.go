package policy

import (
	"fmt"
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
		f.errorf(n, "%s: YAML aliases are not allowed in a policy file; write the value out", where)
		return
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	switch {
	case v.Type() == durationType:
		if n.Kind != yaml.ScalarNode {
			f.errorf(n, "%s: want a duration such as 15m or 24h", where)
			return
		}
		d, err := time.ParseDuration(n.Value)
		if err != nil || d <= 0 {
			f.errorf(n, "%s: bad duration %q: write a positive Go duration such as 90s, 15m or 24h", where, n.Value)
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
			f.errorf(n, "%s: want a mapping", where)
			return
		}
		fields := structFields(v.Type())
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			idx, ok := fields[k.Value]
			if !ok {
				f.errorf(k, "%s: unknown field %q (known fields: %s)", where, k.Value, strings.Join(sortedKeys(fields), ", "))
				continue
			}
			if seen[k.Value] {
				f.errorf(k, "%s: field %q given twice", where, k.Value)
				continue
			}
			seen[k.Value] = true
			f.decodeStrict(val, v.Field(idx), where+"."+k.Value)
		}
		return
	case v.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			f.errorf(n, "%s: want a mapping", where)
			return
		}
		if v.IsNil() {
			v.Set(reflect.MakeMap(v.Type()))
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			if v.MapIndex(reflect.ValueOf(k.Value)).IsValid() {
				f.errorf(k, "%s: %q given twice", where, k.Value)
				continue
			}
			elem := reflect.New(v.Type().Elem()).Elem()
			f.decodeStrict(val, elem, where+"."+k.Value)
			v.SetMapIndex(reflect.ValueOf(k.Value), elem)
		}
		return
	case v.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			f.errorf(n, "%s: want a list", where)
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
		f.errorf(n, "%s: want a single value", where)
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(n.Value)
	case reflect.Bool:
		b, err := strconv.ParseBool(n.Value)
		if err != nil {
			f.errorf(n, "%s: want true or false, got %q", where, n.Value)
			return
		}
		v.SetBool(b)
	case reflect.Int:
		i, err := strconv.Atoi(n.Value)
		if err != nil {
			f.errorf(n, "%s: want a whole number, got %q", where, n.Value)
			return
		}
		v.SetInt(int64(i))
	case reflect.Float64:
		x, err := strconv.ParseFloat(n.Value, 64)
		if err != nil {
			f.errorf(n, "%s: want a number, got %q", where, n.Value)
			return
		}
		v.SetFloat(x)
	default:
		f.errorf(n, "%s: unsupported value", where)
	}
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
// node for positions.
func (f *findings) parseDocument(data []byte) (*Document, *yaml.Node) {
	doc := &Document{}
	if len(data) > MaxDocumentBytes {
		f.errorf(nil, "policy file is %d bytes, over the %d-byte limit", len(data), MaxDocumentBytes)
		return doc, nil
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		line := 1
		msg := err.Error()
		// yaml.v3 reports "yaml: line N: ..." for syntax errors.
		if rest, ok := strings.CutPrefix(msg, "yaml: line "); ok {
			if num, tail, ok := strings.Cut(rest, ":"); ok {
				if l, err := strconv.Atoi(num); err == nil {
					line, msg = l, strings.TrimSpace(tail)
				}
			}
		}
		f.problems = append(f.problems, Problem{File: f.file, Line: line, Column: 1, Severity: SeverityError, Message: "YAML syntax: " + msg})
		return doc, nil
	}
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
		f.errorf(nil, "policy file is empty: start from deploy/policy.example.yaml")
		return doc, nil
	}
	top := root.Content[0]
	f.decodeStrict(top, reflect.ValueOf(doc).Elem(), "policy")
	return doc, top
}
