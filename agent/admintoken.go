package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
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
// new one is issued within policy and written with mode 0600. A file that
// group or others may read is replaced too, and the token it held revoked.
func (a *Agent) ensureAdminToken(ctx context.Context) (string, error) {
	path := filepath.Join(a.cfg.DataDir, AdminTokenFile)
	now := a.cfg.Now()
	b, exposed, err := readSecret(path)
	retire := "" // the jti of an exposed admin token that still works
	switch {
	case err == nil:
		v := policy.Verifier{Keys: a.decider.Keys(), Policy: a.decider.Policy(), Env: a.cfg.Env}
		t, verr := v.Verify(strings.TrimSpace(string(b)), now)
		fresh := verr == nil && !a.revoked.Revoked(t, now) &&
			t.HasScope(admin.AdminScope) && now.Unix() < t.IssuedAt+(t.Expires-t.IssuedAt)/2
		if fresh && !exposed {
			return path, nil
		}
		if exposed {
			// Anyone on the node may have read it: replace it, then
			// retire it if it still works.
			a.log.Warn("admin token file is readable by group or others; writing a new one (mode 0600) and revoking the old one", "path", path)
			if verr == nil && !a.revoked.Revoked(t, now) {
				retire = t.ID
			}
		}
	case errors.Is(err, fs.ErrNotExist):
	default:
		return "", fmt.Errorf("read %s: %w (remove it and the agent writes a new one)", path, err)
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
	if retire != "" {
		if _, _, err := a.issuer.Revoke(ctx, policy.Revocation{
			Kind: policy.RevokeToken, Target: retire, Reason: "admin token file was readable by group or others",
			Actor: issuer.ActorSystem,
		}); err != nil {
			a.log.Error("revoke the exposed admin token", "token_id", retire, "err", err)
		}
	}
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

// maxSecretBytes bounds what is read of the admin token file: a token is at
// most policy.MaxTokenBytes.
const maxSecretBytes = 16 << 10

// readSecret reads the admin token file, refusing anything but a regular
// file of bounded size, and reports whether group or others may read it.
func readSecret(path string) (data []byte, exposed bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, false, err
	}
	if !st.Mode().IsRegular() {
		return nil, false, fmt.Errorf("not a regular file (%s)", st.Mode().Type())
	}
	if st.Size() > maxSecretBytes {
		return nil, false, fmt.Errorf("%d bytes: an admin token file holds one token (at most %d bytes)", st.Size(), maxSecretBytes)
	}
	data, err = io.ReadAll(io.LimitReader(f, maxSecretBytes))
	return data, st.Mode().Perm()&0o077 != 0, err
}

// writeSecret replaces path atomically with data, mode 0600, and makes the
// rename durable.
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
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
