package etcd

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

// kekCheckKey holds the check value of the key-encryption key that seals the
// signing keys under the prefix (see store.KEKCheck).
const kekCheckKey = "kek-check"

// ClaimKEKCheck stores check under the prefix unless a check value is
// stored already, and returns the one stored (check itself for the first
// agent of a mesh).
func (s *Store) ClaimKEKCheck(ctx context.Context, check []byte) ([]byte, error) {
	if err := s.usable(ctx); err != nil {
		return nil, err
	}
	key := s.prefix + kekCheckKey
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(check))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return nil, s.fail(ctx, fmt.Errorf("claim the KEK check value: %w", err))
	}
	if resp.Succeeded {
		return check, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return nil, fmt.Errorf("claim the KEK check value: %s vanished while read", key)
	}
	return kvs[0].Value, nil
}

var _ store.KEKGuard = (*Store)(nil)
