package cli

import (
	"bytes"
	"runtime"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		root := newRootCommand()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(args)
		if err := root.Execute(); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		got := out.String()
		if !strings.HasPrefix(got, "tokenwarden ") || !strings.Contains(got, "commit ") || !strings.Contains(got, runtime.Version()) {
			t.Errorf("%v printed %q, want version, commit and Go version", args, got)
		}
	}
}

func TestVersionJSON(t *testing.T) {
	out, errOut, code := run(t, "version", "-o", "json")
	if code != 0 || !strings.Contains(out, `"go_version": "`+runtime.Version()+`"`) || !strings.Contains(out, `"commit": "`) {
		t.Fatalf("exit %d: %s%s", code, out, errOut)
	}
}
