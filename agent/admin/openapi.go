package admin

import (
	_ "embed"
	"fmt"
	"net/http"

	"sigs.k8s.io/yaml"
)

// openapiYAML is the API's OpenAPI 3.1 document, kept as YAML to be easy
// to edit and served as JSON.
//
//go:embed openapi.yaml
var openapiYAML []byte

var openapiJSON, openapiErr = func() ([]byte, error) {
	b, err := yaml.YAMLToJSON(openapiYAML)
	if err != nil {
		return nil, fmt.Errorf("admin: openapi.yaml: %w", err)
	}
	return b, nil
}()

// OpenAPI returns the API's OpenAPI 3.1 document (JSON).
func OpenAPI() []byte { return openapiJSON }

// serveOpenAPI answers GET /v1/openapi.json, without a token: it describes
// the API's shape, which the source shows anyway.
func serveOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	w.Write(openapiJSON)
}
