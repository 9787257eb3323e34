package etcd

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

// Audit records live under audit/: audit/key (store.AuditKey) and
// audit/heads/<node> (store.AuditHead). Watch ignores them.
const (
	nsAudit       = "audit/"
	auditKeyID    = "key"
	auditHeadsDir = "heads/"
)

// AuditKey returns the audit chain's key.
func (s *Store) AuditKey(ctx context.Context) (store.AuditKey, error) {
	k, err := get[store.AuditKey](ctx, s, s.key(nsAudit, auditKeyID))
	if err != nil {
		return store.AuditKey{}, fmt.Errorf("audit key: %w", err)
	}
	return k, nil
}

// CreateAuditKey stores k unless a key exists, in one transaction, and
// returns the key in force.
func (s *Store) CreateAuditKey(ctx context.Context, k store.AuditKey) (store.AuditKey, error) {
	v, err := store.EncodeAuditKey(k)
	if err != nil {
		return store.AuditKey{}, err
	}
	if err := s.usable(ctx); err != nil {
		return store.AuditKey{}, err
	}
	key := s.key(nsAudit, auditKeyID)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(v))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return store.AuditKey{}, fmt.Errorf("create audit key: %w", s.fail(ctx, err))
	}
	if resp.Succeeded {
		return k, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return store.AuditKey{}, errors.New("create audit key: the key exists but could not be read")
	}
	return store.DecodeRecord[store.AuditKey](kvs[0].Value)
}

// PutAuditHead records a node's chain head.
func (s *Store) PutAuditHead(ctx context.Context, h store.AuditHead) error {
	if h.Node == "" {
		return errors.New("put audit head: empty node")
	}
	if err := s.put(ctx, s.key(nsAudit, auditHeadsDir+h.Node), h); err != nil {
		return fmt.Errorf("put audit head of %s: %w", h.Node, err)
	}
	return nil
}

// AuditHead returns the head node recorded.
func (s *Store) AuditHead(ctx context.Context, node string) (store.AuditHead, error) {
	h, err := get[store.AuditHead](ctx, s, s.key(nsAudit, auditHeadsDir+node))
	if err != nil {
		return store.AuditHead{}, fmt.Errorf("audit head of %s: %w", node, err)
	}
	return h, nil
}
