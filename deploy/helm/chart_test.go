// Package helm_test renders the tokenwarden chart with helm and checks
// every object it produces: strictly decoded into its Kubernetes (or
// prometheus-operator) Go type, unknown fields refused, and the security
// context asserted. It also runs the mesh in a box (mesh_test.go) from the
// rendered DaemonSet.
package helm_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

const chartDir = "tokenwarden"

// helmBin is helm from PATH or ~/go/bin (where .ci/run installs it).
func helmBin(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	home, _ := os.UserHomeDir()
	p := filepath.Join(home, "go", "bin", "helm")
	if _, err := os.Stat(p); err != nil {
		const install = "helm is not installed (go install helm.sh/helm/v3/cmd/helm@v3.21.4, as .ci/run does)"
		if os.Getenv("CI") == "true" || os.Getenv("TOKENWARDEN_REQUIRE_BPF") == "1" {
			t.Fatal(install + "; required in CI")
		}
		t.Skip(install)
	}
	return p
}

// combos are the documented values combinations (values.yaml's header).
var combos = map[string][]string{
	"default": nil,
	"external etcd with TLS and auth": {
		"etcd.deploy=false", "etcd.endpoints={https://etcd-0.etcd:2379,https://etcd-1.etcd:2379}",
		"etcd.tls.secretName=etcd-client-tls", "etcd.auth.username=tokenwarden", "etcd.auth.passwordSecretName=etcd-tokenwarden",
	},
	"kernel side":           {"kernel.enabled=true", "kernel.interfaces={eth0,eth1}"},
	"tls from cert-manager": {"tls.certManager.enabled=true", "tls.certManager.issuerRef.name=mesh-ca", "monitoring.serviceMonitor.enabled=true"},
	"tls from a Secret, admin on the pod's address": {"tls.secretName=tokenwarden-tls", "listeners.admin=pod", "kernel.enabled=true"},
	"monitoring": {
		"monitoring.serviceMonitor.enabled=true", "monitoring.prometheusRule.enabled=true",
		"monitoring.grafanaDashboard.enabled=true", "monitoring.job=kubernetes-pods",
		"metrics.bearerSecretName=tokenwarden-metrics", "metrics.tokenLabels=id",
	},
}

// object is one rendered object, decoded into its Go type.
type object struct {
	kind string
	name string
	obj  any
	raw  []byte
}

// render runs helm template with the given --set values.
func render(t *testing.T, sets ...string) []object {
	t.Helper()
	args := []string{"template", "tw", chartDir, "--namespace", "tokenwarden"}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	cmd := exec.Command(helmBin(t), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return decodeAll(t, out)
}

// decodeAll strictly decodes each document of a multi-document YAML
// stream into its Go type: an unknown field or kind fails the test.
func decodeAll(t *testing.T, stream []byte) []object {
	t.Helper()
	var objs []object
	for _, doc := range bytes.Split(stream, []byte("\n---")) {
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatalf("%v in\n%s", err, doc)
		}
		var obj any
		switch tm.APIVersion + "/" + tm.Kind {
		case "v1/ConfigMap":
			obj = &corev1.ConfigMap{}
		case "v1/Secret":
			obj = &corev1.Secret{}
		case "v1/Service":
			obj = &corev1.Service{}
		case "v1/ServiceAccount":
			obj = &corev1.ServiceAccount{}
		case "v1/Namespace":
			obj = &corev1.Namespace{}
		case "apps/v1/DaemonSet":
			obj = &appsv1.DaemonSet{}
		case "apps/v1/StatefulSet":
			obj = &appsv1.StatefulSet{}
		case "networking.k8s.io/v1/NetworkPolicy":
			obj = &networkingv1.NetworkPolicy{}
		case "monitoring.coreos.com/v1/ServiceMonitor":
			obj = &monitoringv1.ServiceMonitor{}
		case "monitoring.coreos.com/v1/PrometheusRule":
			obj = &monitoringv1.PrometheusRule{}
		case "cert-manager.io/v1/Certificate":
			obj = &certificate{}
		default:
			t.Fatalf("unexpected object %s %s in\n%s", tm.APIVersion, tm.Kind, doc)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			t.Fatalf("%s does not decode strictly: %v\n%s", tm.Kind, err, doc)
		}
		name := ""
		if m, ok := obj.(metav1.Object); ok {
			name = m.GetName()
		}
		objs = append(objs, object{kind: tm.Kind, name: name, obj: obj, raw: doc})
	}
	return objs
}

func stripComments(doc []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func find[T any](t *testing.T, objs []object) []*T {
	t.Helper()
	var found []*T
	for _, o := range objs {
		if v, ok := o.obj.(*T); ok {
			found = append(found, v)
		}
	}
	return found
}

func one[T any](t *testing.T, objs []object) *T {
	t.Helper()
	f := find[T](t, objs)
	if len(f) != 1 {
		t.Fatalf("want one %T, got %d", *new(T), len(f))
	}
	return f[0]
}

func TestLint(t *testing.T) {
	for name, sets := range combos {
		t.Run(name, func(t *testing.T) {
			args := []string{"lint", "--strict", chartDir}
			for _, s := range sets {
				args = append(args, "--set", s)
			}
			if out, err := exec.Command(helmBin(t), args...).CombinedOutput(); err != nil {
				t.Fatalf("helm lint: %v\n%s", err, out)
			}
		})
	}
}

// Every documented combination renders, decodes strictly, and runs the
// agent with least privilege.
func TestRenderedObjects(t *testing.T) {
	for name, sets := range combos {
		t.Run(name, func(t *testing.T) {
			objs := render(t, sets...)
			kernel := slices.Contains(sets, "kernel.enabled=true")
			ds := one[appsv1.DaemonSet](t, objs)
			checkAgentPod(t, ds, kernel)

			svc := find[corev1.Service](t, objs)
			var authz *corev1.Service
			for _, s := range svc {
				if s.Name == "tw" {
					authz = s
				}
			}
			if authz == nil || authz.Spec.InternalTrafficPolicy == nil || *authz.Spec.InternalTrafficPolicy != corev1.ServiceInternalTrafficPolicyLocal {
				t.Error("the ext_authz Service is missing or not node-local (internalTrafficPolicy: Local)")
			}
			sa := one[corev1.ServiceAccount](t, objs)
			if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
				t.Error("the ServiceAccount mounts its token; the agent calls no Kubernetes API")
			}
			cm := find[corev1.ConfigMap](t, objs)
			if len(cm) == 0 || !strings.Contains(cm[0].Data["policy.yaml"], "environments:") {
				t.Error("no policy ConfigMap")
			}
			if len(find[corev1.Secret](t, objs)) != 0 {
				t.Error("the chart renders a Secret: the KEK (and etcd credentials) must come from Secrets the operator creates")
			}
			etcdDeployed := !slices.Contains(sets, "etcd.deploy=false")
			if got := len(find[appsv1.StatefulSet](t, objs)); got != map[bool]int{true: 1, false: 0}[etcdDeployed] {
				t.Errorf("%d etcd StatefulSets with deploy=%v", got, etcdDeployed)
			}
			if etcdDeployed {
				np := one[networkingv1.NetworkPolicy](t, objs)
				if len(np.Spec.Ingress) != 1 || len(np.Spec.Ingress[0].From) != 1 || np.Spec.Ingress[0].From[0].PodSelector == nil {
					t.Error("etcd's NetworkPolicy does not admit the agents alone")
				}
				sts := one[appsv1.StatefulSet](t, objs)
				sc := sts.Spec.Template.Spec.Containers[0].SecurityContext
				if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
					t.Error("the etcd StatefulSet does not run as non-root with a read-only root")
				}
			}
		})
	}
}

func env(c corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

func checkAgentPod(t *testing.T, ds *appsv1.DaemonSet, kernel bool) {
	t.Helper()
	pod := ds.Spec.Template.Spec
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the agent pod mounts a service-account token it does not need")
	}
	if pod.SecurityContext == nil || pod.SecurityContext.SeccompProfile == nil || pod.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("seccomp is not RuntimeDefault")
	}
	if pod.HostNetwork != kernel {
		t.Errorf("hostNetwork = %v with kernel side %v", pod.HostNetwork, kernel)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("privilege escalation is allowed")
	}
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("root filesystem is writable")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("privileged container")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Error("capabilities are not all dropped")
	}
	if kernel {
		if got := sc.Capabilities.Add; !slices.Equal(got, []corev1.Capability{"BPF", "PERFMON", "NET_ADMIN"}) {
			t.Errorf("kernel side adds capabilities %v, want exactly BPF, PERFMON, NET_ADMIN", got)
		}
		if v, _ := env(c, "TOKENWARDEN_BPF"); v != "required" {
			t.Errorf("kernel side on but TOKENWARDEN_BPF=%q", v)
		}
	} else {
		if len(sc.Capabilities.Add) != 0 {
			t.Errorf("kernel side off but capabilities %v added", sc.Capabilities.Add)
		}
		if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot {
			t.Error("kernel side off but runAsNonRoot is not set")
		}
		if v, _ := env(c, "TOKENWARDEN_BPF"); v != "off" {
			t.Errorf("kernel side off but TOKENWARDEN_BPF=%q", v)
		}
		// Secret volumes are root-owned and mounted 0400: without fsGroup
		// the non-root agent could not read its KEK or TLS key.
		if uid, fs := pod.SecurityContext.RunAsUser, pod.SecurityContext.FSGroup; uid == nil || fs == nil || *fs != *uid {
			t.Errorf("kernel side off: fsGroup %v must be the agent's uid %v, or its 0400 secrets are unreadable", fs, uid)
		}
		for _, v := range pod.Volumes {
			if v.HostPath != nil {
				t.Errorf("kernel side off but hostPath volume %s", v.Name)
			}
		}
	}
	if c.StartupProbe == nil || c.LivenessProbe == nil || c.ReadinessProbe == nil {
		t.Error("startup, liveness and readiness probes are not all set")
	}
	// The admin API binds the pod's loopback: the probes run in the
	// container.
	if c.ReadinessProbe != nil && (c.ReadinessProbe.Exec == nil || !slices.Equal(c.ReadinessProbe.Exec.Command, []string{"/tokenwarden", "health", "--ready"})) {
		t.Error("readiness is not `tokenwarden health --ready`")
	}
	if c.LivenessProbe != nil && (c.LivenessProbe.Exec == nil || !slices.Equal(c.LivenessProbe.Exec.Command, []string{"/tokenwarden", "health"})) {
		t.Error("liveness is not `tokenwarden health`")
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := c.Resources.Requests[r]; !ok {
			t.Errorf("no %s request", r)
		}
		if _, ok := c.Resources.Limits[r]; !ok {
			t.Errorf("no %s limit", r)
		}
	}
	if v, _ := env(c, "TOKENWARDEN_STORE"); v != "etcd" {
		t.Errorf("TOKENWARDEN_STORE = %q: the agents must share state", v)
	}
	if v, _ := env(c, "TOKENWARDEN_KEK_FILE"); v == "" {
		t.Error("no TOKENWARDEN_KEK_FILE: the KEK must come from the shared Secret")
	}
	for _, v := range pod.Volumes {
		if v.Secret != nil && (v.Secret.DefaultMode == nil || *v.Secret.DefaultMode&0o077 != 0) {
			t.Errorf("Secret volume %s is readable by group or others", v.Name)
		}
	}
	if len(c.Args) != 1 || c.Args[0] != "serve" {
		t.Errorf("args %v: configuration belongs in TOKENWARDEN_ variables", c.Args)
	}
}

// The monitoring objects carry the repository's rules and dashboard, with
// the job label the operator's scrape uses.
func TestMonitoring(t *testing.T) {
	for _, f := range [][2]string{
		{"../prometheus/rules.yaml", "tokenwarden/files/rules.yaml"},
		{"../grafana/tokenwarden-dashboard.json", "tokenwarden/files/tokenwarden-dashboard.json"},
	} {
		a, err := os.ReadFile(f[0])
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(f[1])
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs from %s: cp %s %s", f[1], f[0], f[0], "deploy/helm/"+f[1])
		}
	}
	objs := render(t, combos["monitoring"]...)
	rule := one[monitoringv1.PrometheusRule](t, objs)
	var exprs int
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			e := r.Expr.String()
			exprs++
			if strings.Contains(e, `job="tokenwarden"`) {
				t.Errorf("rule %s still matches job=\"tokenwarden\": %s", r.Alert, e)
			}
		}
	}
	if exprs == 0 || !strings.Contains(fmt.Sprint(rule.Spec.Groups), `job="kubernetes-pods"`) {
		t.Errorf("PrometheusRule has %d rules, none with the configured job", exprs)
	}
	sm := one[monitoringv1.ServiceMonitor](t, objs)
	if len(sm.Spec.Endpoints) != 1 || len(sm.Spec.Endpoints[0].RelabelConfigs) != 1 || *sm.Spec.Endpoints[0].RelabelConfigs[0].Replacement != "kubernetes-pods" {
		t.Fatal("ServiceMonitor does not set the configured job label")
	}
	// /metrics behind a bearer token: the agents read it from the Secret,
	// the ServiceMonitor sends it.
	if a := sm.Spec.Endpoints[0].Authorization; a == nil || a.Type != "Bearer" || a.Credentials == nil || a.Credentials.Name != "tokenwarden-metrics" || a.Credentials.Key != "token" {
		t.Errorf("ServiceMonitor authorization %+v, want the Bearer token of Secret tokenwarden-metrics", a)
	}
	ds := one[appsv1.DaemonSet](t, objs)
	env := map[string]string{}
	for _, e := range ds.Spec.Template.Spec.Containers[0].Env {
		env[e.Name] = e.Value
	}
	if env["TOKENWARDEN_METRICS_BEARER_FILE"] != "/etc/tokenwarden/metrics-bearer/token" || env["TOKENWARDEN_METRICS_TOKEN_LABELS"] != "id" {
		t.Errorf("agent env %v: want the bearer file and token labels id", env)
	}
	mounted := false
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "tokenwarden-metrics" && *v.Secret.DefaultMode == 0o400 {
			mounted = true
		}
	}
	if !mounted {
		t.Error("the metrics bearer Secret is not mounted (mode 0400)")
	}
	var dash *corev1.ConfigMap
	for _, cm := range find[corev1.ConfigMap](t, objs) {
		if cm.Labels["grafana_dashboard"] == "1" {
			dash = cm
		}
	}
	if dash == nil || !strings.Contains(dash.Data["tokenwarden-dashboard.json"], "tokenwarden_authz_checks_total") {
		t.Error("no Grafana dashboard ConfigMap")
	}
}

// Values that cannot work are refused at render time, naming the value.
func TestRenderRefusesBadValues(t *testing.T) {
	for _, tc := range []struct {
		sets []string
		want string
	}{
		{[]string{"etcd.deploy=false"}, "etcd.endpoints"},
		{[]string{"kek.secretName="}, "kek.secretName"},
		{[]string{"etcd.auth.username=tw"}, "etcd.auth.passwordSecretName"},
		{[]string{"listeners.admin=pod"}, "listeners.admin=pod needs tls"},
		{[]string{"listeners.metrics=node"}, "listeners.metrics"},
		{[]string{"listeners.metrics=loopback", "monitoring.serviceMonitor.enabled=true"}, "listeners.metrics=pod"},
		{[]string{"tls.certManager.enabled=true"}, "tls.certManager.issuerRef.name"},
	} {
		args := []string{"template", "tw", chartDir}
		for _, s := range tc.sets {
			args = append(args, "--set", s)
		}
		out, err := exec.Command(helmBin(t), args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("helm template --set %v: err %v, output %s; want an error naming %s", tc.sets, err, out, tc.want)
		}
	}
}

// deploy/kubernetes/tokenwarden.yaml is the chart rendered with default
// values, for kubectl apply without helm; it must not drift from the chart.
func TestCommittedManifest(t *testing.T) {
	committed, err := os.ReadFile("../kubernetes/tokenwarden.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(helmBin(t), "template", "tokenwarden", chartDir, "--namespace", "tokenwarden").Output()
	if err != nil {
		t.Fatal(err)
	}
	_, body, ok := bytes.Cut(committed, []byte("\n---\n"))
	if !ok || !bytes.Equal(append([]byte("---\n"), body...), out) {
		t.Fatal("deploy/kubernetes/tokenwarden.yaml differs from the rendered chart: regenerate it with the command in its header")
	}
	decodeAll(t, committed)
}
