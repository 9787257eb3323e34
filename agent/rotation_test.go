package agent

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/policy"
)

// TestManualRotateCannotOutliveARevocation is the attack through the admin
// API: a token with a revocation scheduled a few seconds ahead is rotated
// by hand (`token rotate`), and a subject revocation is scheduled on
// another holder before its token is rotated. Each successor works until
// the revocation's effective_at and is refused as revoked after it.
func TestManualRotateCannotOutliveARevocation(t *testing.T) {
	r := startAgentWith(t, Config{})
	admin := readToken(t, r.AdminTokenFile)
	effective := time.Now().Add(3 * time.Second).UTC()
	at, _ := json.Marshal(effective)

	_, byID := issue(t, r, `{"subject":"leaver","class":"service","scopes":["orders:read"]}`)
	if st, out := call(t, "POST", "http://"+r.AdminAddr+"/v1/tokens/"+byID+"/revoke", admin, `{"reason":"offboarding","effective_at":`+string(at)+`}`); st != http.StatusCreated {
		t.Fatalf("revoke: %d %v", st, out)
	}
	_, bySubject := issue(t, r, `{"subject":"mover","class":"service","scopes":["orders:read"]}`)
	if st, out := call(t, "POST", "http://"+r.AdminAddr+"/v1/revocations", admin, `{"kind":"subject","target":"mover","reason":"role change","effective_at":`+string(at)+`}`); st != http.StatusCreated {
		t.Fatalf("revoke subject: %d %v", st, out)
	}

	var successors []string
	for _, id := range []string{byID, bySubject} {
		st, out := call(t, "POST", "http://"+r.AdminAddr+"/v1/tokens/"+id+"/rotate", admin, `{}`)
		if st != http.StatusOK && st != http.StatusCreated {
			t.Fatalf("rotate %s: %d %v", id, st, out)
		}
		successors = append(successors, out["token"].(string))
	}
	decide := func(token string) policy.Reason {
		return r.agent.Decider().Decide(policy.Request{Token: token, Method: "GET", Host: "orders", Path: "/orders/1"}, time.Now()).Reason
	}
	for i, tok := range successors {
		if got := decide(tok); got != policy.ReasonAllowed && time.Now().Before(effective) {
			t.Fatalf("successor %d before effective_at: %s", i, got)
		}
	}
	for i, tok := range successors {
		for deadline := effective.Add(10 * time.Second); decide(tok) != policy.ReasonRevoked; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("successor %d still %s 10s after its predecessor's revocation took effect", i, decide(tok))
			}
		}
	}
}
