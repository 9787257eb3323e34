package xds

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseCredentials(t *testing.T) {
	good := digest(ordersCredential)
	for _, tt := range []struct {
		name, file, err string
	}{
		{"one", "credentials:\n  - {service: orders, sha256: " + good + "}\n", ""},
		{"upper-case hex", "credentials:\n  - {service: orders, sha256: " + strings.ToUpper(good) + "}\n", ""},
		{"empty", "", "no credentials"},
		{"no entries", "credentials: []\n", "no credentials"},
		{"unknown field", "credentials:\n  - {service: orders, sha256: " + good + ", token: x}\n", "not found"},
		{"plain credential", "credentials:\n  - {service: orders, sha256: " + ordersCredential + "}\n", "hex digits"},
		{"short digest", "credentials:\n  - {service: orders, sha256: abcd}\n", "hex digits"},
		{"not hex", "credentials:\n  - {service: orders, sha256: " + strings.Repeat("zz", 32) + "}\n", "invalid byte"},
		{"bad service", "credentials:\n  - {service: Orders/../x, sha256: " + good + "}\n", "not a service name"},
		{"no service", "credentials:\n  - {sha256: " + good + "}\n", "not a service name"},
		{"duplicate digest", "credentials:\n  - {service: orders, sha256: " + good + "}\n  - {service: files, sha256: " + good + "}\n", "twice"},
		{"too large", "credentials: []\n" + strings.Repeat("#", maxCredentialsFile), "larger than"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseCredentials([]byte(tt.file))
			if tt.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if svc, ok := c.service(ordersCredential); !ok || svc != "orders" {
					t.Errorf("service(orders credential) = %q, %v", svc, ok)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("err = %v, want %q", err, tt.err)
			}
			if strings.Contains(err.Error(), ordersCredential) {
				t.Error("the error repeats a credential")
			}
		})
	}
}

func TestCredentialsService(t *testing.T) {
	c := testCredentials(t)
	for _, tt := range []struct {
		presented, want string
		ok              bool
	}{
		{ordersCredential, "orders", true},
		{filesCredential, "files", true},
		{"", "", false},
		{ordersCredential[:len(ordersCredential)-1], "", false},
		{digest(ordersCredential), "", false},
		{strings.Repeat("x", maxCredentialLen+1), "", false},
	} {
		if got, ok := c.service(tt.presented); got != tt.want || ok != tt.ok {
			t.Errorf("service(%.20q) = %q, %v; want %q, %v", tt.presented, got, ok, tt.want, tt.ok)
		}
	}
	var none *Credentials
	if _, ok := none.service(ordersCredential); ok {
		t.Error("nil credentials admitted a credential")
	}
}

func TestLoadCredentials(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.yaml")
	if err := os.WriteFile(path, []byte("credentials:\n  - {service: orders, sha256: "+digest(ordersCredential)+"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadCredentials(path)
	if err != nil || c.Len() != 1 {
		t.Fatalf("LoadCredentials = %v, %v", c, err)
	}
	if _, err := LoadCredentials(path + ".missing"); err == nil {
		t.Error("a missing file loaded")
	}
}

// FuzzParseCredentials: any file either fails or yields entries whose
// services are service names; nothing panics.
func FuzzParseCredentials(f *testing.F) {
	f.Add([]byte("credentials:\n  - {service: orders, sha256: " + digest(ordersCredential) + "}\n"))
	f.Add([]byte("credentials:\n  - service: a\n    sha256: " + strings.Repeat("0", 64) + "\n  - service: b\n    sha256: " + strings.Repeat("f", 64) + "\n"))
	f.Add([]byte("credentials: [{service: x, sha256: 00}]"))
	f.Add([]byte("{credentials: &a [*a]}"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseCredentials(data)
		if err != nil {
			return
		}
		if c.Len() == 0 || c.Len() > maxCredentials {
			t.Fatalf("%d credentials accepted", c.Len())
		}
		for _, e := range c.entries {
			if !serviceName.MatchString(e.service) {
				t.Fatalf("service %q accepted", e.service)
			}
		}
	})
}

// FuzzCheckNodeID: an accepted node id is bounded printable ASCII, so it
// can be logged as is.
func FuzzCheckNodeID(f *testing.F) {
	f.Add(ordersNode)
	f.Add("")
	f.Add("a\nb")
	f.Add(strings.Repeat("x", maxNodeIDLen+1))
	f.Add("é")
	f.Fuzz(func(t *testing.T, id string) {
		if checkNodeID(id) != nil {
			return
		}
		if id == "" || len(id) > maxNodeIDLen {
			t.Fatalf("length %d accepted", len(id))
		}
		for i := 0; i < len(id); i++ {
			if id[i] < 0x21 || id[i] > 0x7e {
				t.Fatalf("byte 0x%02x accepted", id[i])
			}
		}
	})
}
