package agent

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

// TestDependenciesPointOneWay: cli -> agent -> parts -> policy. The agent
// root is imported by the CLI (and main) only; no part imports the root or
// the CLI; policy imports no other package of the module.
func TestDependenciesPointOneWay(t *testing.T) {
	const mod = "github.com/tokenwarden/tokenwarden"
	cmd := exec.Command("go", "list", "-json", "./...")
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, mod), "/")
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, mod) {
				continue
			}
			dep := strings.TrimPrefix(strings.TrimPrefix(imp, mod), "/")
			switch {
			case dep == "agent" && rel != "cli" && rel != "":
				t.Errorf("%s imports the agent root: only the CLI wires the agent", rel)
			case dep == "cli" && rel != "":
				t.Errorf("%s imports the CLI", rel)
			case rel == "policy":
				t.Errorf("policy imports %s: the rules depend on nothing else in the module", dep)
			}
		}
	}
}
