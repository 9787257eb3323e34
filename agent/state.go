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

	"github.com/tokenwarden/tokenwarden/agent/snapshot"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/store/bolt"
	etcdstore "github.com/tokenwarden/tokenwarden/agent/store/etcd"
)

// EtcdAccess is how the agent reaches an etcd cluster operators run: client
// TLS, credentials and timeouts. Files are read at start.
type EtcdAccess struct {
	CAFile   string // PEM CA bundle that signs the servers' certificates
	CertFile string // client certificate (with KeyFile)
	KeyFile  string
	Username string
	// PasswordFile holds the password (one line; a Kubernetes Secret).
	PasswordFile string
	// DialTimeout bounds the first round trip, RequestTimeout each request.
	DialTimeout    time.Duration
	RequestTimeout time.Duration
}

// maxPasswordBytes bounds the etcd password file.
const maxPasswordBytes = 1024

// openState loads the key-encryption key and opens the configured backend.
// With etcd, the KEK must be given (never generated on one node) and must
// be the one the other agents on the prefix use.
func openState(ctx context.Context, cfg Config) ([]byte, store.Store, error) {
	kek, st, _, err := openStateOrSnapshot(ctx, cfg)
	return kek, st, err
}

// openStateOrSnapshot is openState that, with etcd unreachable and a
// local snapshot this KEK wrote, opens the store anyway and returns the
// snapshot to start from.
func openStateOrSnapshot(ctx context.Context, cfg Config) ([]byte, store.Store, *snapshot.Snapshot, error) {
	switch cfg.StoreBackend {
	case "", StoreBolt:
		var kek []byte
		var err error
		if cfg.KEKFile != "" {
			kek, err = store.LoadKEK(cfg.KEKFile)
		} else {
			kek, err = store.LoadOrCreateKEK(filepath.Join(cfg.DataDir, kekFile))
		}
		if err != nil {
			return nil, nil, nil, kekError(err)
		}
		st, err := bolt.Open(filepath.Join(cfg.DataDir, storeFile))
		return kek, st, nil, err
	case StoreEtcd:
		if len(cfg.EtcdEndpoints) == 0 {
			return nil, nil, nil, fieldErr("EtcdEndpoints", "", "the etcd store needs at least one endpoint (e.g. https://etcd-0.etcd:2379)")
		}
		if cfg.KEKFile == "" {
			return nil, nil, nil, fieldErr("KEKFile", "", "the etcd store needs the key-encryption key every agent of the mesh shares, from a Kubernetes Secret (32 random bytes: head -c 32 /dev/urandom); it is never generated on one node")
		}
		kek, err := store.LoadKEK(cfg.KEKFile)
		if err != nil {
			return nil, nil, nil, kekError(err)
		}
		ecfg, err := etcdConfig(cfg)
		if err != nil {
			return nil, nil, nil, err
		}
		snapPath := filepath.Join(cfg.DataDir, snapshot.FileName)
		snap, serr := snapshot.Load(snapPath, kek)
		if serr == nil && snap.Prefix != etcdstore.NormalPrefix(ecfg.Prefix) {
			serr = fmt.Errorf("it holds etcd prefix %q, not %q", snap.Prefix, etcdstore.NormalPrefix(ecfg.Prefix))
		}
		ecfg.AllowUnreachable = serr == nil
		st, err := etcdstore.Open(ctx, ecfg)
		switch {
		case errors.Is(err, etcdstore.ErrTLS):
			return nil, nil, nil, fmt.Errorf("%w (check Etcd.CAFile, Etcd.CertFile and Etcd.KeyFile)", err)
		case errors.Is(err, etcdstore.ErrAuth):
			return nil, nil, nil, fmt.Errorf("%w (check Etcd.Username and Etcd.PasswordFile)", err)
		case err != nil && errors.Is(serr, fs.ErrNotExist):
			return nil, nil, nil, fmt.Errorf("%w (check EtcdEndpoints and Etcd.DialTimeout); no local snapshot to start from (%s)", err, snapPath)
		case err != nil && serr != nil:
			return nil, nil, nil, fmt.Errorf("%w (check EtcdEndpoints and Etcd.DialTimeout); the local snapshot %s cannot be used: %v", err, snapPath, serr)
		case err != nil:
			return nil, nil, nil, fmt.Errorf("%w (check EtcdEndpoints and Etcd.DialTimeout)", err)
		}
		if st.Unreached() != nil {
			// The snapshot's MAC proves the KEK is the one that wrote it,
			// which was checked against the store then.
			return kek, st, snap, nil
		}
		if err := store.VerifyKEK(ctx, st, kek, "etcd prefix "+ecfg.Prefix); err != nil {
			st.Close()
			return nil, nil, nil, fmt.Errorf("KEKFile %s: %w", cfg.KEKFile, err)
		}
		return kek, st, nil, nil
	}
	return nil, nil, nil, fieldErr("StoreBackend", cfg.StoreBackend, "want %s or %s", StoreBolt, StoreEtcd)
}

func kekError(err error) error { return fmt.Errorf("KEKFile: %w", err) }

func etcdConfig(cfg Config) (etcdstore.Config, error) {
	e := cfg.Etcd
	ecfg := etcdstore.Config{
		Endpoints: cfg.EtcdEndpoints, Prefix: cfg.EtcdPrefix, Username: e.Username,
		DialTimeout: e.DialTimeout, RequestTimeout: e.RequestTimeout,
	}
	if e.CAFile != "" || e.CertFile != "" || e.KeyFile != "" {
		t, err := etcdstore.ClientTLS(e.CAFile, e.CertFile, e.KeyFile)
		if err != nil {
			return ecfg, fmt.Errorf("Etcd.CAFile/Etcd.CertFile/Etcd.KeyFile: %w", err)
		}
		ecfg.TLS = t
	}
	if (e.Username == "") != (e.PasswordFile == "") {
		return ecfg, errors.New("Etcd.Username and Etcd.PasswordFile go together")
	}
	if e.PasswordFile != "" {
		pw, err := readPassword(e.PasswordFile)
		if err != nil {
			return ecfg, fmt.Errorf("Etcd.PasswordFile: %w", err)
		}
		ecfg.Password = pw
	}
	return ecfg, nil
}

// readPassword reads a one-line password from a file group and others
// cannot read; one trailing newline is dropped.
func readPassword(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	if err := store.SecretMode(st); err != nil {
		return "", fmt.Errorf("%s %w: run chmod 600 %s (in a Secret volume, defaultMode: 0400)", path, err, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxPasswordBytes+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	pw, err := parsePassword(b)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return pw, nil
}

// parsePassword takes the one line of a password file: at most
// maxPasswordBytes, not empty, one trailing newline (LF or CRLF) dropped.
func parsePassword(b []byte) (string, error) {
	if len(b) > maxPasswordBytes {
		return "", fmt.Errorf("longer than %d bytes", maxPasswordBytes)
	}
	pw := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if pw == "" || strings.ContainsAny(pw, "\r\n\x00") {
		return "", errors.New("must hold one non-empty line")
	}
	return pw, nil
}
