package bolt

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.etcd.io/bbolt"

	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// ctxCheckEvery is how many records a scan reads between looks at its
// context: often enough to stop a long scan promptly, rarely enough to cost
// nothing.
const ctxCheckEvery = 1024

// PutKey stores k, replacing any key with the same ID.
func (s *Store) PutKeys(ctx context.Context, keys ...store.Key) error {
	enc, err := store.EncodeKeys(keys)
	if err != nil {
		return err
	}
	err = s.commitAll(ctx, func(tx *bbolt.Tx) ([]store.Event, error) {
		evs := make([]store.Event, 0, len(keys))
		for n, k := range keys {
			if err := tx.Bucket(bucketKeys).Put([]byte(k.ID), enc[n]); err != nil {
				return nil, err
			}
			stored, err := store.DecodeRecord[store.Key](enc[n])
			if err != nil {
				return nil, err
			}
			evs = append(evs, store.Event{Kind: store.EventKey, Key: &stored})
		}
		return evs, nil
	})
	if err != nil {
		return fmt.Errorf("put keys: %w", err)
	}
	return nil
}

// Keys returns every key, ordered by ID.
func (s *Store) Keys(ctx context.Context) ([]store.Key, error) {
	var keys []store.Key
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		var err error
		keys, err = scan(ctx, tx.Bucket(bucketKeys), func(*store.Key) bool { return true })
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	return keys, nil
}

// PutToken stores t, replacing any record with the same ID, and indexes it
// by its leak hash (a zero hash is not indexed).
func (s *Store) PutToken(ctx context.Context, t store.TokenRecord) error {
	if t.ID == "" {
		return errors.New("put token: empty id")
	}
	v, err := store.EncodeRecord(t)
	if err != nil {
		return fmt.Errorf("put token %s: %w", t.ID, err)
	}
	err = s.commit(ctx, func(tx *bbolt.Tx) (store.Event, error) {
		tokens, byLeak := tx.Bucket(bucketTokens), tx.Bucket(bucketTokensByLeak)
		id := []byte(t.ID)
		var prevp *store.TokenRecord
		if old := tokens.Get(id); old != nil {
			prev, err := store.DecodeRecord[store.TokenRecord](old)
			if err != nil {
				return store.Event{}, err
			}
			if prev.LeakHash != t.LeakHash {
				if err := unindexLeak(byLeak, &prev); err != nil {
					return store.Event{}, err
				}
			}
			prevp = &prev
		}
		if err := reindex(tx, prevp, &t); err != nil {
			return store.Event{}, err
		}
		if t.LeakHash != ([32]byte{}) {
			// The leak hash covers the whole token, jti included, so two
			// records sharing one is a caller's mistake, not a collision.
			if owner := byLeak.Get(t.LeakHash[:]); owner != nil && string(owner) != t.ID {
				return store.Event{}, fmt.Errorf("leak hash already belongs to token %s", owner)
			}
			if err := byLeak.Put(t.LeakHash[:], id); err != nil {
				return store.Event{}, err
			}
		}
		if err := tokens.Put(id, v); err != nil {
			return store.Event{}, err
		}
		return tokenEvent(v, false)
	})
	if err != nil {
		return fmt.Errorf("put token %s: %w", t.ID, err)
	}
	return nil
}

// Token returns the record of token id.
func (s *Store) Token(ctx context.Context, id string) (store.TokenRecord, error) {
	var t store.TokenRecord
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		var err error
		t, err = get[store.TokenRecord](tx.Bucket(bucketTokens), id)
		return err
	})
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
	var t store.TokenRecord
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		id := tx.Bucket(bucketTokensByLeak).Get(h[:])
		if id == nil {
			return store.ErrNotFound
		}
		var err error
		t, err = get[store.TokenRecord](tx.Bucket(bucketTokens), string(id))
		if errors.Is(err, store.ErrNotFound) {
			// Index and record change in one transaction, so this is damage.
			return fmt.Errorf("leak index names token %s, which is not stored: the database may be corrupt", id)
		}
		return err
	})
	if err != nil {
		return store.TokenRecord{}, fmt.Errorf("token with leak hash %x: %w", h[:8], err)
	}
	return t, nil
}

// Tokens returns the records that match f, ordered by ID. A filter by
// subject, tenant or key id reads that index (subject first): its cost is
// the target's records, not every stored one. Other filters scan.
func (s *Store) Tokens(ctx context.Context, f store.TokenFilter) ([]store.TokenRecord, error) {
	var tokens []store.TokenRecord
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		var err error
		var ok bool
		if tokens, ok, err = indexed(ctx, tx, f); ok {
			slices.SortFunc(tokens, func(a, b store.TokenRecord) int { return strings.Compare(a.ID, b.ID) })
			return err
		}
		tokens, err = scan(ctx, tx.Bucket(bucketTokens), f.Match)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	return tokens, nil
}

// DeleteToken removes the record of token id and its leak hash index entry.
func (s *Store) DeleteToken(ctx context.Context, id string) error {
	err := s.commit(ctx, func(tx *bbolt.Tx) (store.Event, error) {
		tokens := tx.Bucket(bucketTokens)
		v := tokens.Get([]byte(id))
		if v == nil {
			return store.Event{}, store.ErrNotFound
		}
		// Decode before deleting: bbolt may reuse v's memory once the bucket
		// changes.
		ev, err := tokenEvent(v, true)
		if err != nil {
			return store.Event{}, err
		}
		if err := unindexLeak(tx.Bucket(bucketTokensByLeak), ev.Token); err != nil {
			return store.Event{}, err
		}
		if err := reindex(tx, ev.Token, nil); err != nil {
			return store.Event{}, err
		}
		return ev, tokens.Delete([]byte(id))
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
	err := put(ctx, s, bucketRevocations, r.ID, r, func(r *policy.Revocation) store.Event {
		return store.Event{Kind: store.EventRevocation, Revocation: r}
	})
	if err != nil {
		return fmt.Errorf("put revocation %s: %w", r.ID, err)
	}
	return nil
}

// DeleteRevocation removes rule id.
func (s *Store) DeleteRevocation(ctx context.Context, id string) error {
	err := s.commit(ctx, func(tx *bbolt.Tx) (store.Event, error) {
		b := tx.Bucket(bucketRevocations)
		r, err := get[policy.Revocation](b, id)
		if err != nil {
			return store.Event{}, err
		}
		return store.Event{Kind: store.EventRevocation, Deleted: true, Revocation: &r}, b.Delete([]byte(id))
	})
	if err != nil {
		return fmt.Errorf("delete revocation %s: %w", id, err)
	}
	return nil
}

// Revocations returns every rule, ordered by ID.
func (s *Store) Revocations(ctx context.Context) ([]policy.Revocation, error) {
	var rules []policy.Revocation
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		var err error
		rules, err = scan(ctx, tx.Bucket(bucketRevocations), func(*policy.Revocation) bool { return true })
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list revocations: %w", err)
	}
	return rules, nil
}

// put stores v under id in bucket and publishes the event built from the
// stored bytes decoded afresh, so watchers get exactly what a reload would
// and share no memory with the caller.
func put[T any](ctx context.Context, s *Store, bucket []byte, id string, v T, event func(*T) store.Event) error {
	b, err := store.EncodeRecord(v)
	if err != nil {
		return err
	}
	return s.commit(ctx, func(tx *bbolt.Tx) (store.Event, error) {
		if err := tx.Bucket(bucket).Put([]byte(id), b); err != nil {
			return store.Event{}, err
		}
		stored, err := store.DecodeRecord[T](b)
		if err != nil {
			return store.Event{}, err
		}
		return event(&stored), nil
	})
}

func tokenEvent(v []byte, deleted bool) (store.Event, error) {
	t, err := store.DecodeRecord[store.TokenRecord](v)
	if err != nil {
		return store.Event{}, err
	}
	return store.Event{Kind: store.EventToken, Deleted: deleted, Token: &t}, nil
}

// unindexLeak removes t's leak hash entry if it still names t.
func unindexLeak(byLeak *bbolt.Bucket, t *store.TokenRecord) error {
	if owner := byLeak.Get(t.LeakHash[:]); owner != nil && string(owner) == t.ID {
		return byLeak.Delete(t.LeakHash[:])
	}
	return nil
}

func get[T any](b *bbolt.Bucket, id string) (T, error) {
	v := b.Get([]byte(id))
	if v == nil {
		var zero T
		return zero, store.ErrNotFound
	}
	return store.DecodeRecord[T](v)
}

// scan decodes every value in b, in key order, keeping those keep accepts.
func scan[T any](ctx context.Context, b *bbolt.Bucket, keep func(*T) bool) ([]T, error) {
	var out []T
	n := 0
	err := b.ForEach(func(k, v []byte) error {
		if n++; n%ctxCheckEvery == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		rec, err := store.DecodeRecord[T](v)
		if err != nil {
			return fmt.Errorf("record %s: %w", k, err)
		}
		if keep(&rec) {
			out = append(out, rec)
		}
		return nil
	})
	return out, err
}
