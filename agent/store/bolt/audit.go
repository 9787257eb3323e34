package bolt

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/bbolt"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

const (
	auditKeyName    = "key"
	auditHeadPrefix = "head/"
)

// AuditKey returns the audit chain's key.
func (s *Store) AuditKey(ctx context.Context) (store.AuditKey, error) {
	var k store.AuditKey
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		var err error
		k, err = get[store.AuditKey](tx.Bucket(bucketAudit), auditKeyName)
		return err
	})
	if err != nil {
		return store.AuditKey{}, fmt.Errorf("audit key: %w", err)
	}
	return k, nil
}

// CreateAuditKey stores k unless a key exists, and returns the key in force.
func (s *Store) CreateAuditKey(ctx context.Context, k store.AuditKey) (store.AuditKey, error) {
	v, err := store.EncodeAuditKey(k)
	if err != nil {
		return store.AuditKey{}, err
	}
	var inForce store.AuditKey
	err = s.commit(ctx, func(tx *bbolt.Tx) (store.Event, error) {
		b := tx.Bucket(bucketAudit)
		old, err := get[store.AuditKey](b, auditKeyName)
		switch {
		case err == nil:
			inForce = old
			return store.Event{}, nil
		case !errors.Is(err, store.ErrNotFound):
			return store.Event{}, err
		}
		inForce = k
		return store.Event{}, b.Put([]byte(auditKeyName), v)
	})
	if err != nil {
		return store.AuditKey{}, fmt.Errorf("create audit key: %w", err)
	}
	return inForce, nil
}

// PutAuditHead records a node's chain head.
func (s *Store) PutAuditHead(ctx context.Context, h store.AuditHead) error {
	if h.Node == "" {
		return errors.New("put audit head: empty node")
	}
	v, err := store.EncodeRecord(h)
	if err != nil {
		return fmt.Errorf("put audit head of %s: %w", h.Node, err)
	}
	err = s.commit(ctx, func(tx *bbolt.Tx) (store.Event, error) {
		return store.Event{}, tx.Bucket(bucketAudit).Put([]byte(auditHeadPrefix+h.Node), v)
	})
	if err != nil {
		return fmt.Errorf("put audit head of %s: %w", h.Node, err)
	}
	return nil
}

// AuditHead returns the head node recorded.
func (s *Store) AuditHead(ctx context.Context, node string) (store.AuditHead, error) {
	var h store.AuditHead
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		var err error
		h, err = get[store.AuditHead](tx.Bucket(bucketAudit), auditHeadPrefix+node)
		return err
	})
	if err != nil {
		return store.AuditHead{}, fmt.Errorf("audit head of %s: %w", node, err)
	}
	return h, nil
}
