// Package istio_test strictly decodes the Istio objects under deploy/istio
// into istio.io/api types: a misspelt field fails here, not silently in a
// cluster where Istio would ignore it.
package istio_test

import (
	"encoding/json"
	"os"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	securityv1beta1 "istio.io/api/security/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

func TestMeshConfig(t *testing.T) {
	b, err := os.ReadFile("istiod-values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var values struct {
		MeshConfig json.RawMessage `json:"meshConfig"`
	}
	if err := yaml.UnmarshalStrict(b, &values); err != nil {
		t.Fatal(err)
	}
	var mc meshv1alpha1.MeshConfig
	if err := (protojson.UnmarshalOptions{}).Unmarshal(values.MeshConfig, &mc); err != nil {
		t.Fatalf("meshConfig does not decode strictly: %v", err)
	}
	if len(mc.ExtensionProviders) != 1 {
		t.Fatalf("%d extension providers", len(mc.ExtensionProviders))
	}
	p := mc.ExtensionProviders[0]
	g := p.GetEnvoyExtAuthzGrpc()
	if p.Name != "tokenwarden" || g == nil {
		t.Fatal("no envoyExtAuthzGrpc provider named tokenwarden")
	}
	if g.Service != "tokenwarden.tokenwarden.svc.cluster.local" || g.Port != 9001 {
		t.Errorf("provider points at %s:%d, want the chart's node-local Service", g.Service, g.Port)
	}
	if g.FailOpen {
		t.Error("failOpen: a proxy must deny when the agent does not answer")
	}
	if g.Timeout == nil || g.Timeout.AsDuration() <= 0 {
		t.Error("no timeout")
	}
}

func TestAuthorizationPolicy(t *testing.T) {
	b, err := os.ReadFile("authorization-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var obj struct {
		metav1.TypeMeta   `json:",inline"`
		metav1.ObjectMeta `json:"metadata"`
		Spec              json.RawMessage `json:"spec"`
	}
	if err := yaml.UnmarshalStrict(b, &obj); err != nil {
		t.Fatal(err)
	}
	if obj.APIVersion != "security.istio.io/v1" || obj.Kind != "AuthorizationPolicy" {
		t.Fatalf("%s %s", obj.APIVersion, obj.Kind)
	}
	var ap securityv1beta1.AuthorizationPolicy
	if err := (protojson.UnmarshalOptions{}).Unmarshal(obj.Spec, &ap); err != nil {
		t.Fatalf("spec does not decode strictly: %v", err)
	}
	if ap.Action != securityv1beta1.AuthorizationPolicy_CUSTOM || ap.GetProvider().GetName() != "tokenwarden" {
		t.Errorf("action %v provider %q, want CUSTOM with tokenwarden", ap.Action, ap.GetProvider().GetName())
	}
	if len(ap.GetSelector().GetMatchLabels()) == 0 {
		t.Error("no workload selector: a CUSTOM policy without one applies to the whole namespace")
	}
}
