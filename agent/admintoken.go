package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/admin"
	"github.com/tokenwarden/tokenwarden/agent/issuer"
	"github.com/tokenwarden/tokenwarden/policy"
)

// adminSubject is the subject of the admin token the agent writes itself.
const adminSubject = "tokenwarden-admin"

// ensureAdminToken keeps <data-dir>/admin.token valid: on first start, and
// whenever the token there no longer verifies or is past half its life, a
// new one is issued within policy and written with mode 0600.
func (a *Agent) ensureAdminToken(ctx context.Context) (string, error) {
	path := filepath.Join(a.cfg.DataDir, AdminTokenFile)
	now := a.cfg.Now()
	if b, err := os.ReadFile(path); err == nil {
		v := policy.Verifier{Keys: a.decider.Keys(), Policy: a.decider.Policy(), Env: a.cfg.Env}
		if t, verr := v.Verify(strings.TrimSpace(string(b)), now); verr == nil && !a.revoked.Revoked(t, now) &&
			t.HasScope(admin.AdminScope) && now.Unix() < t.IssuedAt+(t.Expires-t.IssuedAt)/2 {
			return path, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	p := a.policy.Load()
	class := adminClass(p, a.cfg.Env)
	if class == "" {
		return "", fmt.Errorf("policy %s has no class granting %s in %s: add one (see the admin class in deploy/policy.example.yaml)", a.cfg.PolicyPath, admin.AdminScope, a.cfg.Env)
	}
	issued, err := a.issuer.Issue(ctx, policy.IssueRequest{
		Subject: adminSubject, Class: class, Env: a.cfg.Env, Scopes: []string{admin.AdminScope},
		TTL: p.Lifetime(a.cfg.Env, class).Truncate(time.Second),
	}, issuer.ActorSystem)
	if err != nil {
		return "", fmt.Errorf("issue admin token: %w", err)
	}
	if err := writeSecret(path, []byte(issued.Token+"\n")); err != nil {
		return "", err
	}
	a.log.Info("wrote admin token", "path", path, "token_id", issued.Record.ID, "expires_at", issued.Record.ExpiresAt)
	return path, nil
}

func adminClass(p *policy.Policy, env string) string {
	for _, name := range p.ClassNames() {
		if c, _ := p.Class(name); c.AllowsScope(admin.AdminScope) && c.AllowsEnvironment(env) {
			return name
		}
	}
	return ""
}

// writeSecret replaces path atomically with data, mode 0600.
func writeSecret(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
