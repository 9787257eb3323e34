package admin_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/tokenwarden/tokenwarden/agent/admin"
	"github.com/tokenwarden/tokenwarden/policy"
)

const docURL = "file:///openapi.json"

// openAPI is the served document, parsed, with a JSON Schema 2020-12
// compiler (the dialect OpenAPI 3.1 uses) that resolves references into it.
type openAPI struct {
	doc      map[string]any
	compiler *jsonschema.Compiler
	schemas  map[string]*jsonschema.Schema
}

func loadOpenAPI(t *testing.T, s *server) *openAPI {
	t.Helper()
	r := s.call(http.MethodGet, "/v1/openapi.json", "", nil)
	wantStatus(t, r, http.StatusOK)
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("openapi.json Content-Type %q", ct)
	}
	if !bytes.Equal(r.body, admin.OpenAPI()) {
		t.Error("the served document is not the embedded one")
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	if err := c.AddResource(docURL, doc); err != nil {
		t.Fatal(err)
	}
	o := &openAPI{doc: doc.(map[string]any), compiler: c, schemas: map[string]*jsonschema.Schema{}}
	if v := o.doc["openapi"]; v != "3.1.0" {
		t.Errorf("openapi %v, want 3.1.0", v)
	}
	// Every schema compiles: every reference in it resolves.
	for name := range o.doc["components"].(map[string]any)["schemas"].(map[string]any) {
		o.schema(t, "/components/schemas/"+name)
	}
	return o
}

func (o *openAPI) schema(t *testing.T, ptr string) *jsonschema.Schema {
	t.Helper()
	if sch, ok := o.schemas[ptr]; ok {
		return sch
	}
	sch, err := o.compiler.Compile(docURL + "#" + ptr)
	if err != nil {
		t.Fatalf("schema %s: %v", ptr, err)
	}
	o.schemas[ptr] = sch
	return sch
}

// at returns the value at a JSON pointer into the document, following
// one $ref at the end.
func (o *openAPI) at(ptr string) (any, string) {
	var v any = o.doc
	for _, tok := range strings.Split(strings.TrimPrefix(ptr, "/"), "/") {
		tok = strings.NewReplacer("~1", "/", "~0", "~").Replace(tok)
		m, ok := v.(map[string]any)
		if !ok {
			return nil, ptr
		}
		if v, ok = m[tok]; !ok {
			return nil, ptr
		}
	}
	if m, ok := v.(map[string]any); ok {
		if ref, ok := m["$ref"].(string); ok && strings.HasPrefix(ref, "#/") {
			return o.at(strings.TrimPrefix(ref, "#"))
		}
	}
	return v, ptr
}

func escape(s string) string { return strings.NewReplacer("~", "~0", "/", "~1").Replace(s) }

var methods = []string{"get", "put", "post", "delete", "patch", "head", "options", "trace"}

// TestOpenAPIMatchesRouteTable: every route the API serves is documented
// with the scope it requires, and every documented operation is served.
func TestOpenAPIMatchesRouteTable(t *testing.T) {
	s := newServer(t)
	o := loadOpenAPI(t, s)
	documented := map[string]string{} // "METHOD pattern": x-required-scope
	for path, item := range o.doc["paths"].(map[string]any) {
		for m, op := range item.(map[string]any) {
			if !slices.Contains(methods, m) {
				continue
			}
			scope, _ := op.(map[string]any)["x-required-scope"].(string)
			documented[strings.ToUpper(m)+" "+path] = scope
			sec, hasSec := op.(map[string]any)["security"].([]any)
			if public := scope == admin.Public; public != (hasSec && len(sec) == 0) {
				t.Errorf("%s %s: x-required-scope %s but security %v", m, path, scope, sec)
			}
		}
	}
	served := map[string]bool{}
	for _, rt := range s.api.Routes() {
		key := rt.Method + " " + rt.Pattern
		served[key] = true
		scope, ok := documented[key]
		switch {
		case !ok:
			t.Errorf("%s is served but not documented", key)
		case scope != rt.Scope:
			t.Errorf("%s requires %s, documented as %q", key, rt.Scope, scope)
		}
	}
	for key := range documented {
		if !served[key] {
			t.Errorf("%s is documented but not served", key)
		}
	}
	// docs/admin.md's table says the same.
	page, err := os.ReadFile(filepath.Join("..", "..", "docs", "admin.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, rt := range s.api.Routes() {
		row := "| `" + rt.Method + " " + rt.Pattern + "` | `" + rt.Scope + "` |"
		if rt.Scope == admin.Public {
			row = "`" + rt.Method + " " + rt.Pattern + "`"
		}
		if !bytes.Contains(page, []byte(row)) {
			t.Errorf("docs/admin.md lacks %s", row)
		}
	}
	// A documented route answers with something other than "no such
	// route", to the same method; the mux agrees with the table.
	for key := range documented {
		method, path, _ := strings.Cut(key, " ")
		path = strings.ReplaceAll(path, "{id}", "x")
		req, _ := http.NewRequest(method, path, nil)
		if status, code := s.statusOf(req.Method, path, "", nil); code == "not_found" && status == http.StatusNotFound || status == http.StatusMethodNotAllowed {
			t.Errorf("%s: %d %s", key, status, code)
		}
	}
}

// TestOpenAPIValidatesAnswers: the answers of a session against the real
// API, over real parts (successes and errors of every route), validate
// against the document's schemas, and each status is documented for its
// operation.
func TestOpenAPIValidatesAnswers(t *testing.T) {
	s := newServer(t)
	o := loadOpenAPI(t, s)
	mux := http.NewServeMux() // which route a path is, as the API's mux decides
	for _, rt := range s.api.Routes() {
		mux.HandleFunc(rt.Method+" "+rt.Pattern, func(http.ResponseWriter, *http.Request) {})
	}
	type answer struct {
		method, path string
		r            response
	}
	var answers []answer
	s.capture = func(method, path string, r response) { answers = append(answers, answer{method, path, r}) }

	// A session: every route, its success and its errors.
	s.call(http.MethodGet, "/healthz", "", nil)
	s.call(http.MethodGet, "/readyz", "", nil)
	s.setReady(errors.New("store not open"))
	s.call(http.MethodGet, "/readyz", "", nil)
	s.setReady(nil)
	s.call(http.MethodGet, "/v1/openapi.json", "", nil)
	s.call(http.MethodGet, "/v1/nope", "", nil)
	s.call(http.MethodDelete, "/v1/tokens", s.admin, nil)
	s.call(http.MethodGet, "/v1/tokens", "", nil)
	s.call(http.MethodGet, "/v1/tokens", "tw_garbage", nil)
	reader := s.scopedToken("reader", admin.ReadScope)
	s.call(http.MethodPost, "/v1/tokens", reader, map[string]any{"subject": "x", "class": "service"})

	issued := s.as(http.MethodPost, "/v1/tokens", map[string]any{"subject": "orders-api", "class": "service", "tenant": "acme"})
	var out struct{ ID string }
	json.Unmarshal(issued.body, &out)
	id := out.ID
	s.as(http.MethodPost, "/v1/tokens", map[string]any{"subject": "orders-api", "class": "nope"})
	s.as(http.MethodPost, "/v1/tokens", `{"subject":"`+strings.Repeat("a", 70<<10)+`"}`)
	s.as(http.MethodPost, "/v1/tokens", `{"subject":`)
	s.as(http.MethodGet, "/v1/tokens", nil)
	s.as(http.MethodGet, "/v1/tokens?live=true&limit=1", nil)
	s.as(http.MethodGet, "/v1/tokens/"+id, nil)
	s.as(http.MethodGet, "/v1/tokens/nosuch", nil)
	s.as(http.MethodPost, "/v1/tokens/"+id+"/rotate", nil)
	s.as(http.MethodPost, "/v1/tokens/nosuch/rotate", nil)
	s.as(http.MethodPost, "/v1/tokens/"+id+"/revoke", map[string]string{"reason": ""})
	s.as(http.MethodPost, "/v1/tokens/"+id+"/revoke", map[string]string{"reason": "leaked"})
	s.as(http.MethodPost, "/v1/revocations", map[string]string{"kind": "subject", "target": "orders-api", "reason": "offboarded"})
	s.as(http.MethodPost, "/v1/revocations", map[string]string{"kind": "nope", "target": "x", "reason": "r"})
	s.as(http.MethodGet, "/v1/revocations", nil)
	leak := s.issue(policy.IssueRequest{Subject: "billing", Class: "service"})
	sum := sha256.Sum256([]byte(leak.Token))
	s.as(http.MethodPost, "/v1/leaks", map[string]string{"sha256": hex.EncodeToString(sum[:]), "source": "ci log"})
	s.as(http.MethodPost, "/v1/leaks", map[string]string{"sha256": hex.EncodeToString(sum[:]), "source": "ci log"})
	s.as(http.MethodPost, "/v1/leaks", map[string]string{"sha256": "zz"})
	s.as(http.MethodGet, "/v1/keys", nil)
	s.as(http.MethodPost, "/v1/keys/rotate", nil)
	s.as(http.MethodGet, "/v1/audit", nil)
	s.as(http.MethodGet, "/v1/audit?limit=0", nil)
	s.as(http.MethodGet, "/v1/audit/verify", nil)
	s.as(http.MethodGet, "/v1/audit/stream?n=-1", nil)
	s.as(http.MethodPost, "/v1/admin/tokens", map[string]any{"subject": "alice", "ttl": "8h"})
	s.as(http.MethodPost, "/v1/admin/tokens", map[string]any{"subject": "alice", "scopes": []string{"orders:read"}})
	s.call(http.MethodPost, "/v1/admin/tokens", reader, map[string]any{"subject": "mallory"})

	seen := map[string]bool{}
	for _, a := range answers {
		req, _ := http.NewRequest(a.method, a.path, nil)
		_, pattern := mux.Handler(req)
		name := fmt.Sprintf("%s %s %d", a.method, a.path, a.r.status)
		if pattern == "" {
			// No route: the error schema.
			if err := o.schema(t, "/components/schemas/Error").Validate(mustJSON(t, a.r.body)); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			continue
		}
		seen[pattern] = true
		method, path, _ := strings.Cut(pattern, " ")
		opPtr := "/paths/" + escape(path) + "/" + strings.ToLower(method)
		resp, respPtr := o.at(opPtr + "/responses/" + strconv.Itoa(a.r.status))
		if resp == nil {
			t.Errorf("%s: status %d is not documented for %s", name, a.r.status, pattern)
			continue
		}
		ct, _, _ := strings.Cut(a.r.header.Get("Content-Type"), ";")
		content, _ := resp.(map[string]any)["content"].(map[string]any)
		if _, ok := content[ct]; !ok {
			t.Errorf("%s: Content-Type %s is not documented (%v)", name, ct, content)
			continue
		}
		if ct != "application/json" {
			continue
		}
		err := o.schema(t, respPtr+"/content/"+escape(ct)+"/schema").Validate(mustJSON(t, a.r.body))
		switch {
		case err != nil:
			t.Errorf("%s: %v\n%.500s", name, err, a.r.body)
		}
	}
	for _, rt := range s.api.Routes() {
		if key := rt.Method + " " + rt.Pattern; !seen[key] && key != "GET /v1/audit/stream" {
			t.Errorf("the session never called %s", key)
		}
	}

	// The audit stream: each line an AuditRecord.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.srv.URL+"/v1/audit/stream?n=5", nil)
	req.Header.Set("Authorization", "Bearer "+s.admin)
	resp, err := s.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, documented := o.at("/paths/" + escape("/v1/audit/stream") + "/get/responses/200/content/application~1x-ndjson"); documented == "" {
		t.Error("the stream's media type is not documented")
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for n := 0; n < 5 && sc.Scan(); n++ {
		if err := o.schema(t, "/components/schemas/AuditRecord").Validate(mustJSON(t, sc.Bytes())); err != nil {
			t.Errorf("streamed record: %v\n%s", err, sc.Bytes())
		}
	}
}

func mustJSON(t *testing.T, b []byte) any {
	t.Helper()
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("not JSON: %v: %.300s", err, b)
	}
	return v
}
