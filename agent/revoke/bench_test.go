package revoke_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokenwarden/tokenwarden/agent/audit"
	"github.com/tokenwarden/tokenwarden/agent/issuer"
	"github.com/tokenwarden/tokenwarden/agent/replica"
	"github.com/tokenwarden/tokenwarden/agent/revoke"
	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/agent/store/bolt"
	"github.com/tokenwarden/tokenwarden/agent/store/etcd"
	"github.com/tokenwarden/tokenwarden/agent/store/etcd/etcdtest"
	"github.com/tokenwarden/tokenwarden/policy"
)

// benchKEK seals the keys of every benchmark store: a sub-benchmark runs
// more than once over the same store.
var benchKEK = func() []byte {
	k := make([]byte, store.KEKSize)
	rand.Read(k)
	return k
}()

// benchRecords are the stored-record counts revocation latency is measured
// against: it must not grow with them.
var benchRecords = []int{0, 20000, 200000}

// filler is the i-th token record of other subjects.
func filler(i int, now time.Time) store.TokenRecord {
	return store.TokenRecord{
		ID: fmt.Sprintf("filler%020d", i), Subject: fmt.Sprintf("other-%d", i%5000), Class: "service", Env: "staging",
		Tenant: fmt.Sprintf("t-%d", i%100), Scopes: []string{"read"}, KeyID: "k_filler", IssuedAt: now,
		ExpiresAt: now.Add(time.Hour), Status: store.TokenActive, Actor: "system",
	}
}

// BenchmarkRevokeBySubject is one revocation by subject, end to end on the
// agent's path (enforce, journal, store, count coverage, audit), with 0,
// 20,000 and 200,000 other token records stored, in bolt and in a real
// etcd.
func BenchmarkRevokeBySubject(b *testing.B) {
	// Each store is filled once, outside the sub-benchmark, which Go runs
	// more than once.
	for _, n := range benchRecords {
		func() {
			path := filepath.Join(b.TempDir(), bolt.FileName)
			// Written raw, without the indexes: Open builds them.
			db, err := bbolt.Open(path, 0o600, nil)
			if err != nil {
				b.Fatal(err)
			}
			now := time.Now()
			for lo := 0; lo < n; lo += 10000 {
				err := db.Update(func(tx *bbolt.Tx) error {
					bk, err := tx.CreateBucketIfNotExists([]byte("tokens"))
					if err != nil {
						return err
					}
					for i := lo; i < min(n, lo+10000); i++ {
						v, err := store.EncodeRecord(filler(i, now))
						if err != nil {
							return err
						}
						if err := bk.Put([]byte(filler(i, now).ID), v); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			db.Close()
			st, err := bolt.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			b.Run(fmt.Sprintf("bolt/records=%d", n), func(b *testing.B) { benchRevoke(b, st) })
		}()
	}
	e, endpoints, err := etcdtest.Start(b.TempDir())
	if err != nil {
		b.Fatalf("start etcd: %v", err)
	}
	defer e.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	for _, n := range benchRecords {
		func() {
			prefix := fmt.Sprintf("/bench-%d-%d/", n, time.Now().UnixNano())
			now := time.Now()
			ctx := context.Background()
			var ops []clientv3.Op
			for i := range n {
				v, err := store.EncodeRecord(filler(i, now))
				if err != nil {
					b.Fatal(err)
				}
				ops = append(ops, clientv3.OpPut(prefix+"tokens/"+filler(i, now).ID, string(v)))
				if len(ops) == 100 || i == n-1 {
					if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
						b.Fatal(err)
					}
					ops = ops[:0]
				}
			}
			st, err := etcd.Open(ctx, etcd.Config{Endpoints: endpoints, Prefix: prefix, DialTimeout: 30 * time.Second})
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			b.Run(fmt.Sprintf("etcd/records=%d", n), func(b *testing.B) { benchRevoke(b, st) })
		}()
	}
}

func benchRevoke(b *testing.B, st store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pol := loadPolicy(b)
	log, err := audit.Open(audit.Config{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer log.Close()
	rep := replica.New(replica.Config{Logger: quiet})
	iss, err := issuer.New(ctx, issuer.Config{Store: rep.Writer(st), KEK: benchKEK, Env: "staging", Audit: log, Logger: quiet, Policy: func() *policy.Policy { return pol }})
	if err != nil {
		b.Fatal(err)
	}
	journal, err := revoke.OpenJournal(filepath.Join(b.TempDir(), revoke.JournalFile))
	if err != nil {
		b.Fatal(err)
	}
	defer journal.Close()
	rev, err := revoke.New(revoke.Config{Store: iss, Enforce: rep, Revocations: rep.Revocations(), Journal: journal, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		res, err := rev.Submit(ctx, policy.Revocation{Kind: policy.RevokeSubject, Target: fmt.Sprintf("gone-%d", i), Reason: "bench", Actor: "system"}, revoke.Options{AllowEmpty: true})
		if err != nil || !res.Stored {
			b.Fatalf("revoke: %v (stored %v)", err, res.Stored)
		}
	}
}
