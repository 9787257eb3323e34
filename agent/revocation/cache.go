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

// Cache is the bounded LRU of verified tokens, keyed by a hash of the token
// string. A token is never returned past its exp.
type Cache struct {
	seedA, seedB maphash.Seed
	lru          *lru.Cache[cacheKey, *policy.Token]
}

// NewCache returns a cache holding at most size tokens.
func NewCache(size int) (*Cache, error) {
	if size <= 0 {
		size = DefaultCacheSize
	}
	l, err := lru.New[cacheKey, *policy.Token](size)
	if err != nil {
		return nil, err
	}
	return &Cache{seedA: maphash.MakeSeed(), seedB: maphash.MakeSeed(), lru: l}, nil
}

func (c *Cache) key(token string) cacheKey {
	return cacheKey{maphash.String(c.seedA, token), maphash.String(c.seedB, token)}
}

// Get implements policy.TokenCache.
func (c *Cache) Get(token string, now time.Time) (*policy.Token, bool) {
	k := c.key(token)
	t, ok := c.lru.Get(k)
	if !ok {
		return nil, false
	}
	if now.Unix() >= t.Expires+int64(policy.ClockSkew/time.Second) {
		c.lru.Remove(k)
		return nil, false
	}
	return t, true
}

// Add implements policy.TokenCache.
func (c *Cache) Add(token string, t *policy.Token) { c.lru.Add(c.key(token), t) }

// Purge forgets every token (policy or key change).
func (c *Cache) Purge() { c.lru.Purge() }

// Prune removes tokens past their exp and returns how many.
func (c *Cache) Prune(now time.Time) int {
	limit := now.Unix() - int64(policy.ClockSkew/time.Second)
	n := 0
	for _, k := range c.lru.Keys() {
		if t, ok := c.lru.Peek(k); ok && t.Expires <= limit {
			c.lru.Remove(k)
			n++
		}
	}
	return n
}

// Len is the number of tokens held.
func (c *Cache) Len() int { return c.lru.Len() }

var _ policy.TokenCache = (*Cache)(nil)
