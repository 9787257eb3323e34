package etcd

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

// The token indexes live under index/<subject|tenant|kid>/<escaped
// value>/<jti> (empty values), written in the same transaction as the
// record. A revocation by subject, tenant or key counts its tokens from
// them, at a cost independent of how many other records are stored.
// index/v1 marks a store whose indexes are complete.
const (
	nsIndex     = "index/"
	indexMarker = nsIndex + "v1"
	// txnOps stays under etcd's default --max-txn-ops (128).
	txnOps = 100
)

var indexFields = []struct {
	name  string
	field func(*store.TokenRecord) string
}{
	{"subject", func(t *store.TokenRecord) string { return t.Subject }},
	{"tenant", func(t *store.TokenRecord) string { return t.Tenant }},
	{"kid", func(t *store.TokenRecord) string { return t.KeyID }},
}

func (s *Store) indexPrefix(name, value string) string {
	return s.prefix + nsIndex + name + "/" + url.PathEscape(value) + "/"
}

// reindexOps moves t's index entries from prev's values (nil: none) to
// t's (nil: none).
func (s *Store) reindexOps(prev, t *store.TokenRecord) []clientv3.Op {
	var ops []clientv3.Op
	for _, ix := range indexFields {
		var was, is string
		if prev != nil {
			was = ix.field(prev)
		}
		if t != nil {
			is = ix.field(t)
		}
		if was != "" && (t == nil || was != is) {
			ops = append(ops, clientv3.OpDelete(s.indexPrefix(ix.name, was)+prev.ID))
		}
		if is != "" {
			ops = append(ops, clientv3.OpPut(s.indexPrefix(ix.name, is)+t.ID, ""))
		}
	}
	return ops
}

// buildIndexes writes the index entries of every record once, for a store
// written before the indexes existed, then the marker. Agents racing here
// write the same entries.
func (s *Store) buildIndexes(ctx context.Context) error {
	resp, err := s.cli.Get(ctx, s.prefix+indexMarker, clientv3.WithCountOnly())
	if err != nil {
		return err
	}
	if resp.Count > 0 {
		return nil
	}
	recs, err := scan(ctx, s, nsTokens, func(*store.TokenRecord) bool { return true })
	if err != nil {
		return err
	}
	var ops []clientv3.Op
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		_, err := s.cli.Txn(ctx).Then(ops...).Commit()
		ops = ops[:0]
		return err
	}
	for i := range recs {
		for _, op := range s.reindexOps(nil, &recs[i]) {
			ops = append(ops, op)
			if len(ops) == txnOps {
				if err := flush(); err != nil {
					return err
				}
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	_, err = s.cli.Put(ctx, s.prefix+indexMarker, "")
	return err
}

// indexed returns the records f selects through the most selective index
// it names (subject, then key id, then tenant), read at one revision; ok
// is false when f names none.
func (s *Store) indexed(ctx context.Context, f store.TokenFilter) (out []store.TokenRecord, ok bool, err error) {
	var start string
	switch {
	case f.Subject != "":
		start = s.indexPrefix("subject", f.Subject)
	case f.KeyID != "":
		start = s.indexPrefix("kid", f.KeyID)
	case f.Tenant != "":
		start = s.indexPrefix("tenant", f.Tenant)
	default:
		return nil, false, nil
	}
	if err := s.usable(ctx); err != nil {
		return nil, true, err
	}
	prefix := start
	end := clientv3.GetPrefixRangeEnd(prefix)
	var rev int64
	var ids []string
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pageSize), clientv3.WithKeysOnly()}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, start, opts...)
		if err != nil {
			return nil, true, s.fail(ctx, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			ids = append(ids, strings.TrimPrefix(string(kv.Key), prefix))
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	for len(ids) > 0 {
		batch := ids[:min(len(ids), txnOps)]
		ids = ids[len(batch):]
		ops := make([]clientv3.Op, len(batch))
		for n, id := range batch {
			ops[n] = clientv3.OpGet(s.key(nsTokens, id), clientv3.WithRev(rev))
		}
		resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, true, s.fail(ctx, err)
		}
		for n, r := range resp.Responses {
			kvs := r.GetResponseRange().Kvs
			if len(kvs) == 0 {
				return nil, true, fmt.Errorf("index names token %s, which is not stored: something other than tokenwarden changed the keys under %s", batch[n], s.prefix)
			}
			rec, err := store.DecodeRecord[store.TokenRecord](kvs[0].Value)
			if err != nil {
				return nil, true, fmt.Errorf("record %s: %w", kvs[0].Key, err)
			}
			if f.Match(&rec) {
				out = append(out, rec)
			}
		}
	}
	return out, true, nil
}
