package admin

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/issuer"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// DryRunResponse is the answer to a mutation asked with ?dry_run=true
// (issue, rotate, keys rotate): what it would do; nothing is signed,
// stored or audited.
type DryRunResponse struct {
	DryRun bool   `json:"dry_run"`
	Would  string `json:"would"`
	// Claims are the claims an issuance or rotation would sign (no jti).
	Claims *policy.Claims `json:"claims,omitempty"`
}

// issueDryRun checks req against the policy in force, as an issuance
// would, and answers the claims it would sign.
func (a *API) issueDryRun(w http.ResponseWriter, req policy.IssueRequest) error {
	claims, err := a.cfg.Decider.Policy().Issue(req, a.cfg.Now())
	if err != nil {
		return err
	}
	claims.ID = ""
	writeJSON(w, http.StatusOK, DryRunResponse{DryRun: true, Claims: &claims,
		Would: fmt.Sprintf("issue a %s token to %s, expiring %s", claims.Class, claims.Subject, time.Unix(claims.Expires, 0).UTC().Format(time.RFC3339))})
	return nil
}

// rotateDryRun checks that token id can be rotated and says when the
// predecessor would be retired.
func (a *API) rotateDryRun(w http.ResponseWriter, r *http.Request, id string) error {
	rec, err := a.cfg.Store.Token(r.Context(), id)
	if err != nil {
		return err // the store names the token
	}
	now := a.cfg.Now()
	switch v := a.view(rec, now); {
	case v.State != string(store.TokenActive):
		return &policy.Refusal{Msg: fmt.Sprintf("token %s is %s; only live tokens can be rotated", id, v.State)}
	case rec.Successor != "":
		return &policy.Refusal{Msg: fmt.Sprintf("token %s was already rotated to %s", id, rec.Successor)}
	}
	var grace time.Duration
	if c, ok := a.cfg.Decider.Policy().Class(rec.Class); ok {
		grace = c.RotationGrace.D()
	}
	writeJSON(w, http.StatusOK, DryRunResponse{DryRun: true,
		Would: fmt.Sprintf("issue a successor of %s (subject %s, class %s, scopes %s) and retire %s at %s", id, rec.Subject, rec.Class, strings.Join(rec.Scopes, " "), id, now.Add(grace).UTC().Format(time.RFC3339))})
	return nil
}

// rotateKeysDryRun says what a key rotation would do.
func (a *API) rotateKeysDryRun(w http.ResponseWriter, now bool) error {
	at := a.cfg.Now().Add(issuer.KeyLead)
	if now {
		at = a.cfg.Now()
	}
	active := ""
	for _, k := range a.cfg.Issuer.Keys() {
		switch k.State {
		case store.KeyPending:
			if !now {
				return &policy.Refusal{Msg: fmt.Sprintf("key %s is already pending (signs from %s): it is the next key", k.ID, k.SignsFrom().UTC().Format(time.RFC3339))}
			}
		case store.KeyActive:
			active = k.ID
		}
	}
	writeJSON(w, http.StatusOK, DryRunResponse{DryRun: true,
		Would: fmt.Sprintf("make a new signing key, published now, signing from %s; %s keeps verifying its tokens", at.UTC().Format(time.RFC3339), active)})
	return nil
}
