package issuer_test

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/policy"
)

// TestRevocationSurvivesAFullAuditDisk is the disk-full attack on
// revocation: the audit log's filesystem is full (a flood filled it), and
// an operator revokes a leaked token. The rule is stored and enforced and
// the call succeeds; the record that could not be written is counted.
func TestRevocationSurvivesAFullAuditDisk(t *testing.T) {
	f := newFixture(t, examplePolicy(t))
	fs := t.TempDir()
	if err := syscall.Mount("tmpfs", fs, "tmpfs", 0, "size=256k,mode=0700"); err != nil {
		if os.Getenv("TOKENWARDEN_REQUIRE_BPF") == "1" {
			t.Fatalf("mount a small tmpfs: %v (CI runs as root)", err)
		}
		t.Skipf("mount a small tmpfs: %v (needs root)", err)
	}
	t.Cleanup(func() { syscall.Unmount(fs, syscall.MNT_DETACH) })
	f.log.Close()
	var err error
	if f.log, err = audit.Open(audit.Config{Dir: filepath.Join(fs, "audit"), Now: f.clock.Now, ReserveBytes: -1}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.log.Close() })
	f.iss = f.newIssuer(f.kek)
	victim := f.issue(policy.IssueRequest{Subject: "orders-api", Class: "service"})

	// Fill the filesystem, then the active file's last page.
	filler, err := os.Create(filepath.Join(fs, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	for buf := make([]byte, 512); ; {
		if _, err := filler.Write(buf); err != nil {
			break
		}
	}
	filler.Close()
	for i := 0; ; i++ {
		if _, err := f.log.Append(audit.Record{Action: audit.ActionAuthzDeny, Actor: audit.ActorSystem, Source: "10.0.0.1"}); err != nil {
			break
		}
		if i > 100 {
			t.Fatal("the audit filesystem does not fill")
		}
	}
	failed := f.log.Stats().AppendsFailed

	rule, covered, err := f.iss.Revoke(context.Background(), policy.Revocation{
		Kind: policy.RevokeToken, Target: victim.Record.ID, Reason: "leaked", Actor: actor,
	})
	if err != nil {
		t.Fatalf("Revoke failed because the audit log is full: %v", err)
	}
	if covered != 1 {
		t.Errorf("covered %d, want 1", covered)
	}
	f.sync()
	if !f.set.Revoked(f.verify(victim.Token), f.clock.Now()) {
		t.Error("the revocation is not enforced")
	}
	if rules := f.rules(); len(rules) != 1 || rules[0].ID != rule.ID {
		t.Errorf("stored rules %+v, want %s", rules, rule.ID)
	}
	if got := f.log.Stats().AppendsFailed; got != failed+1 {
		t.Errorf("failed appends %d, want %d: the unaudited revocation must be counted", got, failed+1)
	}
	// Issuance, unlike revocation, fails closed: no unaudited token.
	if _, err := f.iss.Issue(context.Background(), policy.IssueRequest{Subject: "orders-api", Class: "service"}, actor); err == nil {
		t.Error("a token was issued while its issuance could not be audited")
	}
}
