package bolt

import (
	"bytes"
	"context"
	"fmt"
	"slices"

	"go.etcd.io/bbolt"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

// indexes are the token indexes, each with the field it is keyed by.
var indexes = []struct {
	bucket []byte
	field  func(*store.TokenRecord) string
}{
	{bucketBySubject, func(t *store.TokenRecord) string { return t.Subject }},
	{bucketByTenant, func(t *store.TokenRecord) string { return t.Tenant }},
	{bucketByKey, func(t *store.TokenRecord) string { return t.KeyID }},
}

func indexKey(value, id string) []byte {
	k := make([]byte, 0, len(value)+1+len(id))
	return append(append(append(k, value...), 0), id...)
}

// buildIndexes creates the token indexes missing from a store written
// before they existed, from every record, in Open's transaction.
func buildIndexes(tx *bbolt.Tx) error {
	tokens := tx.Bucket(bucketTokens)
	for _, ix := range indexes {
		if tx.Bucket(ix.bucket) != nil {
			continue
		}
		b, err := tx.CreateBucket(ix.bucket)
		if err != nil {
			return fmt.Errorf("create bucket %s: %w", ix.bucket, err)
		}
		var keys [][]byte
		err = tokens.ForEach(func(k, v []byte) error {
			t, err := store.DecodeRecord[store.TokenRecord](v)
			if err != nil {
				return fmt.Errorf("index token %s: %w", k, err)
			}
			if f := ix.field(&t); f != "" {
				keys = append(keys, indexKey(f, t.ID))
			}
			return nil
		})
		if err != nil {
			return err
		}
		// In key order: bbolt splits nodes only at commit, and inserting
		// out of order into one large node is quadratic.
		slices.SortFunc(keys, bytes.Compare)
		b.FillPercent = 1
		for _, k := range keys {
			if err := b.Put(k, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// reindex moves t's index entries from prev's values (nil: none) to t's
// (nil: none).
func reindex(tx *bbolt.Tx, prev, t *store.TokenRecord) error {
	for _, ix := range indexes {
		b := tx.Bucket(ix.bucket)
		var was, is string
		if prev != nil {
			was = ix.field(prev)
		}
		if t != nil {
			is = ix.field(t)
		}
		if prev != nil && t != nil && was == is {
			continue
		}
		if was != "" {
			if err := b.Delete(indexKey(was, prev.ID)); err != nil {
				return err
			}
		}
		if is != "" {
			if err := b.Put(indexKey(is, t.ID), nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// indexed returns the records f selects through the most selective index
// it names (subject, then key id, then tenant), or ok false when f names
// none.
func indexed(ctx context.Context, tx *bbolt.Tx, f store.TokenFilter) (out []store.TokenRecord, ok bool, err error) {
	var bucket []byte
	var value string
	switch {
	case f.Subject != "":
		bucket, value = bucketBySubject, f.Subject
	case f.KeyID != "":
		bucket, value = bucketByKey, f.KeyID
	case f.Tenant != "":
		bucket, value = bucketByTenant, f.Tenant
	default:
		return nil, false, nil
	}
	prefix := indexKey(value, "")
	tokens := tx.Bucket(bucketTokens)
	c := tx.Bucket(bucket).Cursor()
	n := 0
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if n++; n%ctxCheckEvery == 0 {
			if err := ctx.Err(); err != nil {
				return nil, true, err
			}
		}
		id := string(k[len(prefix):])
		rec, err := get[store.TokenRecord](tokens, id)
		if err != nil {
			return nil, true, fmt.Errorf("index names token %s: %w", id, err)
		}
		if f.Match(&rec) {
			out = append(out, rec)
		}
	}
	return out, true, nil
}
