package revocation

import (
	"hash/maphash"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/tokenwarden/tokenwarden/policy"
)

// DefaultCacheSize is the number of verified tokens remembered by default.
const DefaultCacheSize = 100_000

// cacheKey is 128 bits of two independently seeded hashes of the token
// string: the string itself is never kept, and the seeds are per process,
// so a collision cannot be aimed at.
type cacheKey struct{ a, b uint64 }

// cacheShards splits a large LRU so that concurrent checks on many cores do
// not all queue on one lock (an LRU hit moves the entry, so it takes the
// exclusive lock). Each shard is an exact LRU of size/cacheShards; caches
// smaller than shardedFrom stay one exact LRU.
const (
	cacheShards = 16
	shardedFrom = 4096
)

// Cache is the bounded LRU of verified tokens, keyed by a hash of the token
// string. A token is never returned past its exp.
type Cache struct {
	seedA, seedB maphash.Seed
	shards       []*lru.Cache[cacheKey, *policy.Token]
}

// NewCache returns a cache holding at most size tokens.
func NewCache(size int) (*Cache, error) {
	if size <= 0 {
		size = DefaultCacheSize
	}
	n := 1
	if size >= shardedFrom {
		n = cacheShards
	}
	c := &Cache{seedA: maphash.MakeSeed(), seedB: maphash.MakeSeed(), shards: make([]*lru.Cache[cacheKey, *policy.Token], n)}
	per := size / n
	for i := range c.shards {
		l, err := lru.New[cacheKey, *policy.Token](per)
		if err != nil {
			return nil, err
		}
		c.shards[i] = l
	}
	return c, nil
}

func (c *Cache) key(token string) cacheKey {
	return cacheKey{maphash.String(c.seedA, token), maphash.String(c.seedB, token)}
}

func (c *Cache) shard(k cacheKey) *lru.Cache[cacheKey, *policy.Token] {
	return c.shards[k.a%uint64(len(c.shards))]
}

// Get implements policy.TokenCache.
func (c *Cache) Get(token string, now time.Time) (*policy.Token, bool) {
	k := c.key(token)
	l := c.shard(k)
	t, ok := l.Get(k)
	if !ok {
		return nil, false
	}
	if now.Unix() >= t.Expires+int64(policy.MaxClockSkew/time.Second) {
		l.Remove(k)
		return nil, false
	}
	return t, true
}

// Add implements policy.TokenCache.
func (c *Cache) Add(token string, t *policy.Token) {
	k := c.key(token)
	c.shard(k).Add(k, t)
}

// Purge forgets every token (policy or key change).
func (c *Cache) Purge() {
	for _, l := range c.shards {
		l.Purge()
	}
}

// Prune removes tokens past their exp and returns how many.
func (c *Cache) Prune(now time.Time) int {
	limit := now.Unix() - int64(policy.MaxClockSkew/time.Second)
	n := 0
	for _, l := range c.shards {
		for _, k := range l.Keys() {
			if t, ok := l.Peek(k); ok && t.Expires <= limit {
				l.Remove(k)
				n++
			}
		}
	}
	return n
}

// Len is the number of tokens held.
func (c *Cache) Len() int {
	n := 0
	for _, l := range c.shards {
		n += l.Len()
	}
	return n
}

var _ policy.TokenCache = (*Cache)(nil)
