package helm_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// certificate is the part of cert-manager's Certificate (cert-manager.io/v1)
// the chart renders; strict decoding refuses any other field.
type certificate struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		SecretName  string `json:"secretName"`
		Duration    string `json:"duration"`
		RenewBefore string `json:"renewBefore"`
		PrivateKey  struct {
			Algorithm      string `json:"algorithm"`
			Size           int    `json:"size"`
			RotationPolicy string `json:"rotationPolicy"`
		} `json:"privateKey"`
		Usages      []string `json:"usages"`
		DNSNames    []string `json:"dnsNames"`
		IPAddresses []string `json:"ipAddresses"`
		IssuerRef   struct {
			Name  string `json:"name"`
			Kind  string `json:"kind"`
			Group string `json:"group"`
		} `json:"issuerRef"`
	} `json:"spec"`
}

// listenerEnv names each listener's address variable.
var listenerEnv = map[string]string{
	"admin": "TOKENWARDEN_ADMIN", "metrics": "TOKENWARDEN_METRICS",
	"authz-grpc": "TOKENWARDEN_AUTHZ_GRPC", "authz-http": "TOKENWARDEN_AUTHZ_HTTP", "xds": "TOKENWARDEN_XDS",
}

// plainOnPodAddress are the listeners the chart's defaults leave plain on
// the pod's address (the node's with kernel.enabled), each justified in
// docs/security.md ("Who can reach which listener"): the mesh's sidecars
// reach ext_authz through the node-local Service, and Prometheus scrapes
// metrics. Anything else there must be TLS.
var plainOnPodAddress = []string{"authz-grpc", "authz-http", "metrics"}

// TestListenerExposure: under every documented combination, no listener
// binds the pod's (or node's) address in plain text except the documented
// ones; with tls set, every one there serves TLS and ext_authz requires
// client certificates; the admin API stays on loopback unless TLS guards
// it.
func TestListenerExposure(t *testing.T) {
	doc, err := os.ReadFile("../../docs/security.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range plainOnPodAddress {
		if !strings.Contains(string(doc), "| "+name+" ") {
			t.Errorf("docs/security.md has no row for %s in its reachability table", name)
		}
	}
	for name, sets := range combos {
		t.Run(name, func(t *testing.T) {
			objs := render(t, sets...)
			c := one[appsv1.DaemonSet](t, objs).Spec.Template.Spec.Containers[0]
			cert, tlsOn := env(c, "TOKENWARDEN_TLS_CERT_FILE")
			if tlsOn != slices.ContainsFunc(sets, func(s string) bool { return strings.HasPrefix(s, "tls.") }) {
				t.Errorf("TLS on = %v with values %v", tlsOn, sets)
			}
			for l, variable := range listenerEnv {
				addr, ok := env(c, variable)
				if !ok && l != "xds" {
					t.Errorf("%s: %s not set: the agent's own default would apply", l, variable)
				}
				switch {
				case addr == "":
					continue // off
				case strings.HasPrefix(addr, "127.0.0.1:"), strings.HasPrefix(addr, "unix:"), strings.HasPrefix(addr, "/"):
					continue // the pod's own (or, on the host network, the node's local) reach
				case !strings.HasPrefix(addr, "$(POD_IP):"):
					t.Errorf("%s binds %s: want loopback, a socket or $(POD_IP)", l, addr)
				}
				if !tlsOn && !slices.Contains(plainOnPodAddress, l) {
					t.Errorf("%s binds the pod's address %s in plain text", l, addr)
				}
			}
			if admin, _ := env(c, "TOKENWARDEN_ADMIN"); !strings.HasPrefix(admin, "127.0.0.1:") && !tlsOn {
				t.Errorf("admin API on %s without TLS", admin)
			}
			server, _ := env(c, "TOKENWARDEN_SERVER")
			if tlsOn {
				if !strings.HasPrefix(server, "https://") {
					t.Errorf("TLS on but the CLI and probes use %s", server)
				}
				for _, v := range []string{"TOKENWARDEN_TLS_KEY_FILE", "TOKENWARDEN_SERVER_CA", "TOKENWARDEN_AUTHZ_GRPC_CLIENT_CA", "TOKENWARDEN_AUTHZ_HTTP_CLIENT_CA"} {
					if p, ok := env(c, v); !ok || !strings.HasPrefix(p, "/etc/tokenwarden/tls/") {
						t.Errorf("TLS on but %s = %q", v, p)
					}
				}
				if !mountsSecret(one[appsv1.DaemonSet](t, objs).Spec.Template.Spec, c, cert) {
					t.Errorf("%s is not on a Secret volume mounted without subPath (renewals would not reach the agent)", cert)
				}
			}
			if slices.Contains(sets, "tls.certManager.enabled=true") {
				crt := one[certificate](t, objs)
				if !slices.Contains(crt.Spec.IPAddresses, "127.0.0.1") || !slices.Contains(crt.Spec.DNSNames, "tw.tokenwarden.svc") {
					t.Errorf("Certificate SANs %v %v lack loopback or the ext_authz Service", crt.Spec.DNSNames, crt.Spec.IPAddresses)
				}
			}
			// A port the pod declares is one its address answers on.
			for _, p := range c.Ports {
				if p.Name == "admin" && !tlsOn {
					t.Errorf("admin port declared on the pod's address without TLS")
				}
			}
		})
	}
}

// mountsSecret reports whether file lies on a Secret volume of pod
// mounted by c as a directory.
func mountsSecret(pod corev1.PodSpec, c corev1.Container, file string) bool {
	for _, m := range c.VolumeMounts {
		if !strings.HasPrefix(file, m.MountPath+"/") || m.SubPath != "" {
			continue
		}
		for _, v := range pod.Volumes {
			if v.Name == m.Name && v.Secret != nil {
				return true
			}
		}
	}
	return false
}
