package cli

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// sample is a valid value, from the environment, for each flag type serve
// uses, and how the flag then prints it.
var sample = map[string][2]string{
	"string":      {"from-env", "from-env"},
	"bool":        {"true", "true"},
	"int":         {"7", "7"},
	"int64":       {"7", "7"},
	"duration":    {"7s", "7s"},
	"stringSlice": {"a,b", "[a,b]"},
	"stringArray": {"a,b", "[a,b]"},
}

// Every serve flag can be set from its TOKENWARDEN_ variable, and says so
// in --help.
func TestEveryServeFlagFromEnv(t *testing.T) {
	cmd := newServeCommand()
	fs := cmd.Flags()
	env := map[string]string{}
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" {
			return
		}
		s, ok := sample[f.Value.Type()]
		if !ok {
			t.Fatalf("--%s has type %s: add a sample value", f.Name, f.Value.Type())
		}
		env[envName(f.Name)] = s[0]
		if !strings.Contains(f.Usage, "(env "+envName(f.Name)+")") {
			t.Errorf("--%s help does not name %s: %q", f.Name, envName(f.Name), f.Usage)
		}
	})
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	if err := flagsFromEnv(fs, lookup); err != nil {
		t.Fatal(err)
	}
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" {
			return
		}
		if want := sample[f.Value.Type()][1]; f.Value.String() != want {
			t.Errorf("--%s from %s = %q, want %q", f.Name, envName(f.Name), f.Value.String(), want)
		}
	})
	if names := []string{envName("etcd-ca"), envName("bpf-iface")}; names[0] != "TOKENWARDEN_ETCD_CA" || names[1] != "TOKENWARDEN_BPF_IFACE" {
		t.Errorf("variable names = %v", names)
	}
}

func TestFlagWinsOverEnv(t *testing.T) {
	cmd := newServeCommand()
	if err := cmd.ParseFlags([]string{"--admin", "127.0.0.1:1", "--bpf-iface", "eth0"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"TOKENWARDEN_ADMIN": "0.0.0.0:9", "TOKENWARDEN_BPF_IFACE": "veth0,veth1", "TOKENWARDEN_CACHE_SIZE": "9", "TOKENWARDEN_METRICS": ""}
	if err := flagsFromEnv(cmd.Flags(), func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	for flag, want := range map[string]string{"admin": "127.0.0.1:1", "bpf-iface": "[eth0]", "cache-size": "9", "metrics": ""} {
		if got := cmd.Flags().Lookup(flag).Value.String(); got != want {
			t.Errorf("--%s = %q, want %q", flag, got, want)
		}
	}
}

// A bad value from the environment is a usage error that names the
// variable and the flag, never a silent default.
func TestBadEnvValueNamesVariableAndFlag(t *testing.T) {
	for _, tc := range []struct{ name, value string }{
		{"TOKENWARDEN_CACHE_SIZE", "many"},
		{"TOKENWARDEN_ETCD_DIAL_TIMEOUT", "5"},
		{"TOKENWARDEN_STRIP_AUTHORIZATION", "perhaps"},
		{"TOKENWARDEN_POLICY", strings.Repeat("x", maxEnvValueBytes+1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := newServeCommand()
			err := flagsFromEnv(cmd.Flags(), func(k string) (string, bool) {
				if k == tc.name {
					return tc.value, true
				}
				return "", false
			})
			if err == nil || !strings.Contains(err.Error(), tc.name) {
				t.Fatalf("err = %v, want one naming %s", err, tc.name)
			}
		})
	}
}

// Required flags may come from the environment alone.
func TestRequiredFlagsFromEnv(t *testing.T) {
	t.Setenv("TOKENWARDEN_POLICY", "/nonexistent/policy.yaml")
	t.Setenv("TOKENWARDEN_ENV", "prod")
	t.Setenv("TOKENWARDEN_DATA_DIR", t.TempDir())
	cmd := newServeCommand()
	cmd.SetArgs([]string{})
	err := cmd.Execute()
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/policy.yaml") {
		t.Fatalf("err = %v, want the policy from TOKENWARDEN_POLICY read (and missing)", err)
	}
}
