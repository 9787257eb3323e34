// Package admintoken keeps <data-dir>/admin.token, the token the CLI on the
// node uses, valid: it is issued within policy on first start and issued
// again whenever the one there no longer verifies, is revoked, is past half
// its life, or may have been read by others (then it is also revoked).
package admintoken

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/admin"
	"github.com/tokenwarden/tokenwarden/agent/atomicfile"
	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/issuer"
	"github.com/tokenwarden/tokenwarden/policy"
)

// FileName is the admin token file's name in the data directory.
const FileName = "admin.token"

// Subject is the subject of the admin token the agent writes itself.
const Subject = "tokenwarden-admin"

// Issuer issues the admin token (*issuer.Issuer).
type Issuer interface {
	Issue(ctx context.Context, req policy.IssueRequest, actor string) (issuer.Issued, error)
}

// Revoker retires an exposed admin token (*revoke.Revoker).
type Revoker interface {
	Revoke(ctx context.Context, r policy.Revocation) (policy.Revocation, int, error)
}

// Config configures a Keeper; every field is required.
type Config struct {
	Path        string
	Env         string
	Issuer      Issuer
	Revoker     Revoker
	Decider     *policy.Decider          // policy and keys in force
	Revocations policy.RevocationChecker // the live revocation set
	Now         func() time.Time
	Logger      *slog.Logger
}

// Keeper keeps the admin token file valid.
type Keeper struct{ cfg Config }

// New returns a Keeper.
func New(cfg Config) (*Keeper, error) {
	if cfg.Path == "" || cfg.Env == "" || cfg.Issuer == nil || cfg.Revoker == nil || cfg.Decider == nil || cfg.Revocations == nil || cfg.Now == nil || cfg.Logger == nil {
		return nil, errors.New("admintoken: every Config field is required")
	}
	return &Keeper{cfg: cfg}, nil
}

// Path is where the admin token is.
func (k *Keeper) Path() string { return k.cfg.Path }

// Ensure keeps the file valid: on first start, and whenever the token
// there no longer verifies or is past half its life, a new one is issued
// within policy and written with mode 0600. A file that group or others
// may read is replaced too, and the token it held revoked.
func (k *Keeper) Ensure(ctx context.Context) error {
	path := k.cfg.Path
	now := k.cfg.Now()
	b, exposed, err := atomicfile.Read(path, maxSecretBytes)
	retire := "" // the jti of an exposed admin token that still works
	switch {
	case err == nil:
		t, verr := k.cfg.Decider.Verify(strings.TrimSpace(string(b)), now)
		fresh := verr == nil && !k.cfg.Revocations.Revoked(t, now) &&
			t.HasScope(admin.AdminScope) && now.Unix() < t.IssuedAt+(t.Expires-t.IssuedAt)/2
		if fresh && !exposed {
			return nil
		}
		if exposed {
			// Anyone on the node may have read it: replace it, then
			// retire it if it still works.
			k.cfg.Logger.Warn("admin token file is readable by group or others; writing a new one (mode 0600) and revoking the old one", "path", path)
			if verr == nil && !k.cfg.Revocations.Revoked(t, now) {
				retire = t.ID
			}
		}
	case errors.Is(err, os.ErrNotExist):
	default:
		return fmt.Errorf("read %s: %w (remove it and the agent writes a new one)", path, err)
	}
	p := k.cfg.Decider.Policy()
	class, err := Class(p, k.cfg.Env)
	if err != nil {
		return err
	}
	issued, err := k.cfg.Issuer.Issue(ctx, policy.IssueRequest{
		Subject: Subject, Class: class, Env: k.cfg.Env, Scopes: []string{admin.AdminScope},
		TTL: p.Lifetime(k.cfg.Env, class).Truncate(time.Second),
	}, audit.ActorSystem)
	if err != nil {
		return fmt.Errorf("issue admin token: %w", err)
	}
	if err := atomicfile.Write(path, []byte(issued.Token+"\n")); err != nil {
		return err
	}
	k.cfg.Logger.Info("wrote admin token", "path", path, "token_id", issued.Record.ID, "expires_at", issued.Record.ExpiresAt)
	if retire != "" {
		if _, _, err := k.cfg.Revoker.Revoke(ctx, policy.Revocation{
			Kind: policy.RevokeToken, Target: retire, Reason: "admin token file was readable by group or others",
			Actor: audit.ActorSystem,
		}); err != nil {
			k.cfg.Logger.Error("revoke the exposed admin token", "token_id", retire, "err", err)
		}
	}
	return nil
}

// Class is the class the admin token is issued in: the first, by name,
// that grants the admin scope in env. A policy without one is an error:
// the agent refuses to start with it, or to reload it, since the CLI on the
// node would have no admin token.
func Class(p *policy.Policy, env string) (string, error) {
	for _, name := range p.ClassNames() {
		if c, _ := p.Class(name); c.AllowsScope(admin.AdminScope) && c.AllowsEnvironment(env) {
			return name, nil
		}
	}
	return "", fmt.Errorf("the policy has no class granting %s in environment %s: add one (see the admin class in deploy/policy.example.yaml)", admin.AdminScope, env)
}

// maxSecretBytes bounds what is read of the admin token file: a token is at
// most policy.MaxTokenBytes.
const maxSecretBytes = 16 << 10
