package agent

import (
	"strings"
	"testing"
)

// FuzzParsePassword: whatever a password file holds, a password taken from
// it is one non-empty line within the bound, never carrying a line break
// (which etcd's gRPC metadata would refuse or split).
func FuzzParsePassword(f *testing.F) {
	for _, seed := range []string{"secret\n", "secret\r\n", "secret", "", "\n", "a\nb\n", "a\rb", "x\x00y", strings.Repeat("p", maxPasswordBytes+1)} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		pw, err := parsePassword(b)
		if err != nil {
			if strings.Contains(err.Error(), string(b)) && len(b) > 0 {
				t.Fatalf("the error repeats the file's content: %v", err)
			}
			return
		}
		if pw == "" || len(pw) > maxPasswordBytes || strings.ContainsAny(pw, "\r\n\x00") {
			t.Fatalf("accepted %q", pw)
		}
		if !strings.HasPrefix(string(b), pw) {
			t.Fatalf("password %q is not the start of the file %q", pw, b)
		}
	})
}
