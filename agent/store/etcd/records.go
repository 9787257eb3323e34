package etcd

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

const (
	// pageSize is how many records one range read returns; a listing reads
	// page after page at one revision, so it is a consistent snapshot
	// however large.
	pageSize = 1000

	// maxTxnAttempts bounds the read-check-write retries of a write that
	// keeps the leak index consistent when other writers touch the same
	// keys. Contention on one token is rare; this many losses in a row
	// means something is wrong.
	maxTxnAttempts = 32
)

// errConflict makes a transaction that lost a race run again.
var errConflict = errors.New("conflicting write")

// PutKey stores k, replacing any key with the same ID.
func (s *Store) PutKeys(ctx context.Context, keys ...store.Key) error {
	enc, err := store.EncodeKeys(keys)
	if err != nil {
		return err
	}
	ops := make([]clientv3.Op, len(keys))
	for n, k := range keys {
		ops[n] = clientv3.OpPut(s.key(nsKeys, k.ID), string(enc[n]))
	}
	if err := s.usable(ctx); err != nil {
		return err
	}
	if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
		return fmt.Errorf("put keys: %w", s.fail(ctx, err))
	}
	return nil
}

// Keys returns every key, ordered by ID.
func (s *Store) Keys(ctx context.Context) ([]store.Key, error) {
	keys, err := scan(ctx, s, nsKeys, func(*store.Key) bool { return true })
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	return keys, nil
}

// PutToken stores t, replacing any record with the same ID, and indexes it
// by its leak hash (a zero hash is not indexed) in the same transaction: an
// index entry that another token owns is refused, and the entry of the
// record's previous hash is removed.
func (s *Store) PutToken(ctx context.Context, t store.TokenRecord) error {
	if t.ID == "" {
		return errors.New("put token: empty id")
	}
	v, err := store.EncodeRecord(t)
	if err != nil {
		return fmt.Errorf("put token %s: %w", t.ID, err)
	}
	tokKey := s.key(nsTokens, t.ID)
	leakKey := ""
	if t.LeakHash != ([32]byte{}) {
		leakKey = s.leakKey(t.LeakHash)
	}
	err = s.retry(ctx, func() error {
		// Read the record and the index entry it will take, at one revision.
		reads := []clientv3.Op{clientv3.OpGet(tokKey)}
		if leakKey != "" {
			reads = append(reads, clientv3.OpGet(leakKey))
		}
		rresp, err := s.cli.Txn(ctx).Then(reads...).Commit()
		if err != nil {
			return err
		}
		tokKVs := rresp.Responses[0].GetResponseRange().Kvs

		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(tokKey), "=", modRevision(tokKVs))}
		writes := []clientv3.Op{clientv3.OpPut(tokKey, string(v))}
		if leakKey != "" {
			leakKVs := rresp.Responses[1].GetResponseRange().Kvs
			// The leak hash covers the whole token, jti included, so two
			// records sharing one is a caller's mistake, not a collision.
			if len(leakKVs) > 0 && string(leakKVs[0].Value) != t.ID {
				return fmt.Errorf("leak hash already belongs to token %s", leakKVs[0].Value)
			}
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(leakKey), "=", modRevision(leakKVs)))
			writes = append(writes, clientv3.OpPut(leakKey, t.ID))
		}
		var prevp *store.TokenRecord
		if len(tokKVs) > 0 {
			prev, err := store.DecodeRecord[store.TokenRecord](tokKVs[0].Value)
			if err != nil {
				return fmt.Errorf("stored record: %w", err)
			}
			if prev.LeakHash != t.LeakHash && prev.LeakHash != ([32]byte{}) {
				writes = append(writes, s.unindexLeak(&prev))
			}
			prevp = &prev
		}
		writes = append(writes, s.reindexOps(prevp, &t)...)
		wresp, err := s.cli.Txn(ctx).If(cmps...).Then(writes...).Commit()
		if err != nil {
			return err
		}
		if !wresp.Succeeded {
			return errConflict
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("put token %s: %w", t.ID, err)
	}
	return nil
}

// Token returns the record of token id.
func (s *Store) Token(ctx context.Context, id string) (store.TokenRecord, error) {
	t, err := get[store.TokenRecord](ctx, s, s.key(nsTokens, id))
	if errors.Is(err, store.ErrNotFound) {
		return store.TokenRecord{}, &store.NotFoundError{Kind: "token", ID: id}
	}
	if err != nil {
		return store.TokenRecord{}, fmt.Errorf("token %s: %w", id, err)
	}
	return t, nil
}

// TokenByLeakHash returns the record of the token whose string hashes
// (sha256) to h: the look-up behind a leaked-token report.
func (s *Store) TokenByLeakHash(ctx context.Context, h [32]byte) (store.TokenRecord, error) {
	t, err := s.tokenByLeakHash(ctx, h)
	if err != nil {
		return store.TokenRecord{}, fmt.Errorf("token with leak hash %x: %w", h[:8], err)
	}
	return t, nil
}

func (s *Store) tokenByLeakHash(ctx context.Context, h [32]byte) (store.TokenRecord, error) {
	if err := s.usable(ctx); err != nil {
		return store.TokenRecord{}, err
	}
	resp, err := s.cli.Get(ctx, s.leakKey(h))
	if err != nil {
		return store.TokenRecord{}, s.fail(ctx, err)
	}
	if len(resp.Kvs) == 0 {
		return store.TokenRecord{}, store.ErrNotFound
	}
	id := string(resp.Kvs[0].Value)
	// Read the record at the index's revision: index and record change in
	// one transaction, so there they agree.
	tresp, err := s.cli.Get(ctx, s.key(nsTokens, id), clientv3.WithRev(resp.Header.Revision))
	if err != nil {
		return store.TokenRecord{}, s.fail(ctx, err)
	}
	if len(tresp.Kvs) == 0 {
		return store.TokenRecord{}, fmt.Errorf("leak index names token %s, which is not stored: something other than tokenwarden changed the keys under %s", id, s.prefix)
	}
	return store.DecodeRecord[store.TokenRecord](tresp.Kvs[0].Value)
}

// Tokens returns the records that match f, ordered by ID. A filter by
// subject, tenant or key id reads that index (subject first): its cost is
// the target's records, not every stored one. Other filters read every
// record, page by page at one revision.
func (s *Store) Tokens(ctx context.Context, f store.TokenFilter) ([]store.TokenRecord, error) {
	tokens, ok, err := s.indexed(ctx, f)
	if !ok {
		tokens, err = scan(ctx, s, nsTokens, f.Match)
	}
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	return tokens, nil
}

// DeleteToken removes the record of token id and its leak hash index entry
// in one transaction.
func (s *Store) DeleteToken(ctx context.Context, id string) error {
	tokKey := s.key(nsTokens, id)
	err := s.retry(ctx, func() error {
		resp, err := s.cli.Get(ctx, tokKey)
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			return store.ErrNotFound
		}
		prev, err := store.DecodeRecord[store.TokenRecord](resp.Kvs[0].Value)
		if err != nil {
			return fmt.Errorf("stored record: %w", err)
		}
		writes := []clientv3.Op{clientv3.OpDelete(tokKey)}
		if prev.LeakHash != ([32]byte{}) {
			writes = append(writes, s.unindexLeak(&prev))
		}
		writes = append(writes, s.reindexOps(&prev, nil)...)
		wresp, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(tokKey), "=", resp.Kvs[0].ModRevision)).
			Then(writes...).
			Commit()
		if err != nil {
			return err
		}
		if !wresp.Succeeded {
			return errConflict
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete token %s: %w", id, err)
	}
	return nil
}

// PutRevocation validates r and stores it, replacing any rule with the same
// ID.
func (s *Store) PutRevocation(ctx context.Context, r policy.Revocation) error {
	if r.ID == "" {
		return errors.New("put revocation: empty id")
	}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("put revocation %s: %w", r.ID, err)
	}
	if err := s.put(ctx, s.key(nsRevocations, r.ID), r); err != nil {
		return fmt.Errorf("put revocation %s: %w", r.ID, err)
	}
	return nil
}

// DeleteRevocation removes rule id.
func (s *Store) DeleteRevocation(ctx context.Context, id string) error {
	err := s.deleteRevocation(ctx, id)
	if err != nil {
		return fmt.Errorf("delete revocation %s: %w", id, err)
	}
	return nil
}

func (s *Store) deleteRevocation(ctx context.Context, id string) error {
	if err := s.usable(ctx); err != nil {
		return err
	}
	resp, err := s.cli.Delete(ctx, s.key(nsRevocations, id))
	if err != nil {
		return s.fail(ctx, err)
	}
	if resp.Deleted == 0 {
		return store.ErrNotFound
	}
	return nil
}

// Revocations returns every rule, ordered by ID.
func (s *Store) Revocations(ctx context.Context) ([]policy.Revocation, error) {
	rules, err := scan(ctx, s, nsRevocations, func(*policy.Revocation) bool { return true })
	if err != nil {
		return nil, fmt.Errorf("list revocations: %w", err)
	}
	return rules, nil
}

// put stores v's encoding under key.
func (s *Store) put(ctx context.Context, key string, v any) error {
	b, err := store.EncodeRecord(v)
	if err != nil {
		return err
	}
	if err := s.usable(ctx); err != nil {
		return err
	}
	if _, err := s.cli.Put(ctx, key, string(b)); err != nil {
		return s.fail(ctx, err)
	}
	return nil
}

// retry runs a read-check-write attempt until it does not lose a race.
func (s *Store) retry(ctx context.Context, attempt func() error) error {
	for range maxTxnAttempts {
		if err := s.usable(ctx); err != nil {
			return err
		}
		err := attempt()
		if !errors.Is(err, errConflict) {
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return s.fail(ctx, err)
			}
			return err
		}
	}
	return fmt.Errorf("lost %d races in a row with other writers of the same keys", maxTxnAttempts)
}

// unindexLeak is the transaction step that removes t's leak hash entry if
// it still names t.
func (s *Store) unindexLeak(t *store.TokenRecord) clientv3.Op {
	k := s.leakKey(t.LeakHash)
	return clientv3.OpTxn(
		[]clientv3.Cmp{clientv3.Compare(clientv3.Value(k), "=", t.ID)},
		[]clientv3.Op{clientv3.OpDelete(k)},
		nil)
}

// modRevision is the revision to compare a key against: 0 when it is absent.
func modRevision(kvs []*mvccpb.KeyValue) int64 {
	if len(kvs) == 0 {
		return 0
	}
	return kvs[0].ModRevision
}

func get[T any](ctx context.Context, s *Store, key string) (T, error) {
	var zero T
	if err := s.usable(ctx); err != nil {
		return zero, err
	}
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return zero, s.fail(ctx, err)
	}
	if len(resp.Kvs) == 0 {
		return zero, store.ErrNotFound
	}
	return store.DecodeRecord[T](resp.Kvs[0].Value)
}

// scan decodes every value in namespace ns, in key order, keeping those keep
// accepts. Pages after the first are read at the first one's revision.
func scan[T any](ctx context.Context, s *Store, ns string, keep func(*T) bool) ([]T, error) {
	if err := s.usable(ctx); err != nil {
		return nil, err
	}
	start := s.prefix + ns
	end := clientv3.GetPrefixRangeEnd(start)
	var (
		out []T
		rev int64
	)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pageSize)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, start, opts...)
		if err != nil {
			return nil, s.fail(ctx, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			rec, err := store.DecodeRecord[T](kv.Value)
			if err != nil {
				return nil, fmt.Errorf("record %s: %w", kv.Key, err)
			}
			if keep(&rec) {
				out = append(out, rec)
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}
