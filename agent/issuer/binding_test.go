package issuer_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/policy"
)

const deployerID = "spiffe://cluster.local/ns/ci/sa/deployer"

// boundPolicy is the example policy plus a workload-bound class.
func boundPolicy(t *testing.T) *policy.Policy {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "policy.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	doc := strings.Replace(string(data), "\nclasses:", `
classes:
  deployer:
    scopes: [deploy:write]
    default_ttl: 1h
    max_ttl: 12h
    rotate_after: 6h
    environments: [staging]
    binding: workload
    workloads: ["spiffe://cluster.local/ns/ci/sa/*"]`, 1)
	p, err := policy.Load("bound.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A bound token is stored, audited and rotated with its binding: a
// successor that dropped it would be a bearer token anyone could use.
func TestIssueAndRotateKeepWorkloadBinding(t *testing.T) {
	f := newFixture(t, boundPolicy(t))
	pred := f.issue(policy.IssueRequest{Subject: "ci", Class: "deployer", BindWorkload: deployerID})
	if pred.Record.Workload != deployerID {
		t.Fatalf("record workload %q", pred.Record.Workload)
	}
	if tok := f.verify(pred.Token); tok.Cnf == nil || tok.Cnf.SPIFFEID != deployerID {
		t.Fatalf("token cnf %+v", tok.Cnf)
	}
	stored, err := f.st.Token(context.Background(), pred.Record.ID)
	if err != nil || stored.Workload != deployerID {
		t.Fatalf("stored %+v, %v", stored, err)
	}
	recs := f.audited(audit.Filter{Action: "token.issue"})
	var d map[string]any
	if len(recs) != 1 || json.Unmarshal(recs[0].Details, &d) != nil || d["workload"] != deployerID {
		t.Fatalf("audit %+v", recs)
	}
	succ, err := f.iss.Rotate(context.Background(), pred.Record.ID, actor)
	if err != nil {
		t.Fatal(err)
	}
	if tok := f.verify(succ.Token); succ.Record.Workload != deployerID || tok.Cnf == nil || tok.Cnf.SPIFFEID != deployerID {
		t.Fatalf("successor record %q, cnf %+v", succ.Record.Workload, tok.Cnf)
	}
	if _, err := f.iss.Issue(context.Background(), policy.IssueRequest{Subject: "ci", Class: "deployer"}, actor); err == nil {
		t.Fatal("a bound class issued an unbound token")
	}
}

// A DPoP-bound token keeps its key binding through rotation.
func TestRotateKeepsDPoPBinding(t *testing.T) {
	f := newFixture(t, examplePolicy(t))
	jkt := strings.Repeat("A", 43)
	pred := f.issue(policy.IssueRequest{Subject: "partner", Class: "partner", BindJKT: jkt})
	if pred.Record.JKT != jkt {
		t.Fatalf("record jkt %q", pred.Record.JKT)
	}
	succ, err := f.iss.Rotate(context.Background(), pred.Record.ID, actor)
	if err != nil {
		t.Fatal(err)
	}
	if tok := f.verify(succ.Token); succ.Record.JKT != jkt || tok.Cnf == nil || tok.Cnf.JKT != jkt {
		t.Fatalf("successor record %q, cnf %+v", succ.Record.JKT, tok.Cnf)
	}
}
