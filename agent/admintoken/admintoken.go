// Package admintoken keeps <data-dir>/admin.token, the bootstrap admin token
// the CLI on the node uses, valid and short-lived: it lives at most
// BootstrapTTL, is issued within policy on first start and issued again
// whenever the one there no longer verifies, is revoked, is past half its
// life, or may have been read by others. The token it replaces is revoked:
// after Overlap when it was merely due, at once when it was exposed, so a
// copy of the file is worth nothing for long.
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
const Subject = admin.BootstrapSubject

// BootstrapTTL bounds the life of the admin token the agent writes (the
// admin class's max_ttl bounds it too). It is replaced past half its life.
const BootstrapTTL = time.Hour

// Overlap is how long the admin token the file held keeps working once the
// file holds its successor: a CLI command that read the file just before
// finishes. Then it is revoked.
const Overlap = time.Minute

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
// within policy and written with mode 0600; the one it replaces is revoked
// from Overlap later. A file that group or others may read is replaced
// too, and the token it held revoked at once.
func (k *Keeper) Ensure(ctx context.Context) error {
	path := k.cfg.Path
	now := k.cfg.Now()
	b, exposed, err := atomicfile.Read(path, maxSecretBytes)
	// The admin token the file holds, if it still works: revoked once its
	// successor is written, at once if exposed, else after Overlap.
	retire, retireAt, why := "", now.Add(Overlap), "admin token re-issued"
	switch {
	case err == nil:
		t, verr := k.cfg.Decider.Verify(strings.TrimSpace(string(b)), now)
		works := verr == nil && !k.cfg.Revocations.Revoked(t, now)
		fresh := works && t.HasScope(admin.AdminScope) && now.Unix() < t.IssuedAt+(t.Expires-t.IssuedAt)/2
		if fresh && !exposed {
			return nil
		}
		if works && (exposed || t.Subject == Subject) {
			retire = t.ID
		}
		if exposed {
			// Anyone on the node may have read it: replace it, then
			// retire it at once.
			k.cfg.Logger.Warn("admin token file is readable by group or others; writing a new one (mode 0600) and revoking the old one", "path", path)
			retireAt, why = now, "admin token file was readable by group or others"
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
		TTL: min(BootstrapTTL, p.Lifetime(k.cfg.Env, class).Truncate(time.Second)),
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
			Kind: policy.RevokeToken, Target: retire, Reason: why, EffectiveAt: retireAt, Actor: audit.ActorSystem,
		}); err != nil {
			k.cfg.Logger.Error("revoke the previous admin token", "token_id", retire, "err", err)
		}
	}
	return nil
}

// Class is the class the admin token is issued in: the first, by name,
// that grants the admin scope in env (admin.AdminClass). A policy without
// one is an error: the agent refuses to start with it, or to reload it,
// since the CLI on the node would have no admin token.
func Class(p *policy.Policy, env string) (string, error) {
	if class := admin.AdminClass(p, env); class != "" {
		return class, nil
	}
	return "", fmt.Errorf("the policy has no class granting %s in environment %s: add one (see the admin class in deploy/policy.example.yaml)", admin.AdminScope, env)
}

// maxSecretBytes bounds what is read of the admin token file: a token is at
// most policy.MaxTokenBytes.
const maxSecretBytes = 16 << 10
