package audit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

// DefaultHeadInterval is how often RecordHeads records the chain's head in
// the store. Records written since the last recording (at most this long
// ago, plus whatever was written while the store could not be reached) are
// the ones whose removal from the end of the log cannot be detected.
const DefaultHeadInterval = 10 * time.Second

// KeyStore holds the audit key; store.Store implements it.
type KeyStore interface {
	AuditKey(ctx context.Context) (store.AuditKey, error)
	CreateAuditKey(ctx context.Context, k store.AuditKey) (store.AuditKey, error)
}

// HeadStore holds each node's recorded chain head; store.Store implements
// it.
type HeadStore interface {
	PutAuditHead(ctx context.Context, h store.AuditHead) error
	AuditHead(ctx context.Context, node string) (store.AuditHead, error)
}

// LoadKey returns the store's audit key, unsealed with kek, creating and
// storing one (sealed) when the store has none. Agents sharing a store race
// safely: all end up with the one stored first.
func LoadKey(ctx context.Context, ks KeyStore, kek []byte, now time.Time) (*Key, error) {
	sk, err := ks.AuditKey(ctx)
	if errors.Is(err, store.ErrNotFound) {
		secret := make([]byte, KeySize)
		id := make([]byte, 8)
		if _, err := rand.Read(secret); err != nil {
			return nil, err
		}
		if _, err := rand.Read(id); err != nil {
			return nil, err
		}
		k := store.AuditKey{ID: "ak-" + hex.EncodeToString(id), CreatedAt: now.UTC()}
		if k.Sealed, err = store.SealAuditSecret(kek, k.ID, secret); err != nil {
			return nil, err
		}
		sk, err = ks.CreateAuditKey(ctx, k)
	}
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	secret, err := store.UnsealAuditSecret(kek, sk)
	if err != nil {
		return nil, err
	}
	if len(secret) != KeySize {
		return nil, fmt.Errorf("audit key %s: secret is %d bytes, want %d", sk.ID, len(secret), KeySize)
	}
	return &Key{ID: sk.ID, Secret: secret}, nil
}

// Head returns the last durable record's place in the chain (Node unset);
// Seq is 0 for an empty log.
func (l *Log) Head() store.AuditHead {
	l.syncMu.Lock()
	seq, hash := l.durable, l.durableHash
	l.syncMu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	file := activeName
	if l.firstSeq == 0 || seq < l.firstSeq {
		for _, h := range l.history {
			if h.firstSeq <= seq {
				file = filepath.Base(h.path)
			}
		}
	}
	return store.AuditHead{Seq: seq, Hash: hash, File: file}
}

// CheckHead compares the log with the head node last recorded in hs. A log
// that ends before that head, or holds another record at its seq, lost
// records (a cut tail, a deleted or replaced log): CheckHead appends an
// audit.gap record that says so, keyed like every other, and returns an
// error describing it. A head older than the oldest record kept proves
// nothing and passes.
func (l *Log) CheckHead(ctx context.Context, hs HeadStore, node string) error {
	h, err := hs.AuditHead(ctx, node)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("audit: read the recorded head: %w", err)
	}
	cur := l.Head()
	problem := ""
	switch {
	case h.Seq > cur.Seq:
		problem = fmt.Sprintf("the log ends at seq %d, but seq %d was recorded as its head at %s: records were cut or the log was replaced", cur.Seq, h.Seq, h.Time.Format(time.RFC3339))
	case h.Seq == cur.Seq && h.Hash != cur.Hash:
		problem = fmt.Sprintf("seq %d is not the record recorded as the head at %s: the log was replaced", h.Seq, h.Time.Format(time.RFC3339))
	case h.Seq < cur.Seq:
		hash, found, err := findHash(l.dir, h.Seq)
		if err != nil {
			return fmt.Errorf("audit: find the recorded head: %w", err)
		}
		if found && hash != h.Hash {
			problem = fmt.Sprintf("seq %d is not the record recorded as the head at %s: records were replaced", h.Seq, h.Time.Format(time.RFC3339))
		}
	}
	if problem == "" {
		return nil
	}
	l.gaps.Add(1)
	_, aerr := l.Append(Record{Action: ActionAuditGap, Actor: ActorSystem, Reason: problem, Details: Details(map[string]any{
		"recorded_seq": h.Seq, "recorded_hash": h.Hash, "recorded_file": h.File, "recorded_at": h.Time, "log_seq": cur.Seq, "node": node,
	})})
	return errors.Join(fmt.Errorf("audit: %s", problem), aerr)
}

// findHash returns the hash of the record with seq, if the log holds it.
func findHash(dir string, seq uint64) (string, bool, error) {
	files, err := chainFiles(dir)
	if err != nil {
		return "", false, err
	}
	errFound := errors.New("found")
	var hash string
	for i, cf := range files {
		if !cf.active() && cf.firstSeq > seq {
			break
		}
		if i+1 < len(files) && !files[i+1].active() && files[i+1].firstSeq <= seq {
			continue
		}
		err := readFile(cf, func(r Record) error {
			if r.Seq == seq {
				hash = r.Hash
				return errFound
			}
			return nil
		})
		if errors.Is(err, errFound) {
			return hash, true, nil
		}
		if err != nil {
			return "", false, err
		}
	}
	return "", false, nil
}

// RecordHeads records the chain's head for node in hs every interval (when
// it moved) until ctx ends, and once more then. A failed recording is
// counted and retried at the next tick.
func (l *Log) RecordHeads(ctx context.Context, hs HeadStore, node string, interval time.Duration) {
	var last uint64
	record := func(ctx context.Context) {
		h := l.Head()
		if h.Seq == 0 || h.Seq == last {
			return
		}
		h.Node, h.Time = node, l.now().UTC()
		if err := hs.PutAuditHead(ctx, h); err != nil {
			if l.headErrors.Add(1) == 1 || ctx.Err() == nil {
				l.logger.Warn("audit: could not record the chain head in the store; a cut tail after the last recorded head cannot be detected", "seq", h.Seq, "err", err)
			}
			return
		}
		last = h.Seq
		l.headSeq.Store(h.Seq)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			final, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			record(final)
			cancel()
			return
		case <-t.C:
			record(ctx)
		}
	}
}

// VerifyAgainst verifies the log in place with the log's own key and the
// head node last recorded in hs: what `tokenwarden audit verify` does
// offline, for a running agent whose store file it holds.
func (l *Log) VerifyAgainst(ctx context.Context, hs HeadStore, node string) (Report, error) {
	opts := VerifyOptions{Key: l.key}
	h, err := hs.AuditHead(ctx, node)
	switch {
	case err == nil:
		opts.Head = &h
	case !errors.Is(err, store.ErrNotFound):
		return Report{}, fmt.Errorf("audit: read the recorded head: %w", err)
	}
	return Verify(l.dir, opts)
}
