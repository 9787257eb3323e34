package admin

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/store"
	"github.com/tokenwarden/tokenwarden/policy"
)

// Every list endpoint answers one page, {"items": [...], "next_page_token":
// "..."}, of at most limit items (default DefaultPageLimit, at most
// MaxPageLimit); next_page_token is empty on the last page. A page token is
// opaque to clients: it holds where the next page starts and is bound by an
// HMAC under a key of this API instance to the endpoint and the query it
// was issued for, so a token altered, made up, or replayed with another
// filter is refused (400) rather than followed. Filters are applied on
// every page, so no page token can widen what a query selects.
const (
	DefaultPageLimit = 100
	MaxPageLimit     = 1000
	// maxPageTokenBytes bounds a page token as received.
	maxPageTokenBytes = 512
	// maxCursorBytes bounds the position a page token carries.
	maxCursorBytes = 256
	pageMACBytes   = 16
	pageVersion    = 1
)

// Page is the shape of every list answer.
type Page[T any] struct {
	Items         []T    `json:"items"`
	NextPageToken string `json:"next_page_token"`
}

// pageRequest is a validated limit and position.
type pageRequest struct {
	limit int
	// after is the sort key of the last item of the previous page; "" for
	// the first page.
	after string
}

// pager issues and checks the page tokens of one API instance.
type pager struct{ key [32]byte }

func newPager() *pager {
	p := &pager{}
	if _, err := rand.Read(p.key[:]); err != nil {
		panic("admin: no randomness for the page token key: " + err.Error())
	}
	return p
}

// scope is what a page token is bound to: the endpoint and its query
// without limit and page_token, in canonical order.
func pageScope(r *http.Request) string {
	q := url.Values{}
	for k, v := range r.URL.Query() {
		if k != "limit" && k != "page_token" {
			q[k] = v
		}
	}
	return r.URL.Path + "?" + q.Encode()
}

// parse reads limit and page_token from r's query.
func (p *pager) parse(r *http.Request) (pageRequest, error) {
	q := r.URL.Query()
	pr := pageRequest{limit: DefaultPageLimit}
	if s := q.Get("limit"); s != "" || q.Has("limit") {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxPageLimit {
			return pageRequest{}, badRequest("limit: want a number from 1 to %d", MaxPageLimit)
		}
		pr.limit = n
	}
	if len(q["limit"]) > 1 || len(q["page_token"]) > 1 {
		return pageRequest{}, badRequest("limit and page_token may each be given once")
	}
	if tok := q.Get("page_token"); tok != "" {
		after, ok := p.open(pageScope(r), tok)
		if !ok {
			return pageRequest{}, badRequest("page_token is not one this agent issued for this query (altered, from another query, or from before the agent restarted): list again from the first page")
		}
		pr.after = after
	}
	return pr, nil
}

// seal makes the page token that resumes scope after the sort key after.
func (p *pager) seal(scope, after string) string {
	body := append([]byte{pageVersion}, after...)
	return base64.RawURLEncoding.EncodeToString(append(body, p.mac(scope, body)...))
}

// open checks a page token for scope and returns its position.
func (p *pager) open(scope, tok string) (string, bool) {
	if len(tok) > maxPageTokenBytes {
		return "", false
	}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(raw) < 1+pageMACBytes || len(raw) > 1+maxCursorBytes+pageMACBytes {
		return "", false
	}
	body, mac := raw[:len(raw)-pageMACBytes], raw[len(raw)-pageMACBytes:]
	if !hmac.Equal(mac, p.mac(scope, body)) || body[0] != pageVersion || len(body) == 1 {
		return "", false
	}
	return string(body[1:]), true
}

func (p *pager) mac(scope string, body []byte) []byte {
	m := hmac.New(sha256.New, p.key[:])
	m.Write([]byte(strconv.Itoa(len(scope))))
	m.Write([]byte{0})
	m.Write([]byte(scope))
	m.Write(body)
	return m.Sum(nil)[:pageMACBytes]
}

// paginate sorts items by key and answers the page pr asks for. Keys must
// be unique and at most maxCursorBytes long.
func paginate[T any](p *pager, r *http.Request, pr pageRequest, items []T, key func(T) string) Page[T] {
	sort.SliceStable(items, func(i, j int) bool { return key(items[i]) < key(items[j]) })
	start := 0
	if pr.after != "" {
		start = sort.Search(len(items), func(i int) bool { return key(items[i]) > pr.after })
	}
	rest := items[start:]
	out := Page[T]{Items: make([]T, 0, min(len(rest), pr.limit))}
	out.Items = append(out.Items, rest[:min(len(rest), pr.limit)]...)
	if len(rest) > pr.limit {
		out.NextPageToken = p.seal(pageScope(r), key(out.Items[len(out.Items)-1]))
	}
	return out
}

// sortKey orders list items by creation time, then id: a page token resumes
// after the last item of its page, so items created meanwhile come in at
// their place and none is repeated or skipped.
func sortKey(t time.Time, id string) string {
	return t.UTC().Format("2006-01-02T15:04:05.000000000Z") + "/" + id
}

// utcRevocation and utcKey show a rule's and a key's times in UTC, as every
// answer of the API does.
func utcRevocation(r policy.Revocation) policy.Revocation {
	r.EffectiveAt, r.IssuedBefore, r.Expires, r.CreatedAt = utc(r.EffectiveAt), utc(r.IssuedBefore), utc(r.Expires), utc(r.CreatedAt)
	return r
}

func utcKey(k store.Key) store.Key {
	k.CreatedAt, k.RetiredAt, k.ActivateAt = utc(k.CreatedAt), utc(k.RetiredAt), utc(k.ActivateAt)
	return k
}

// utc keeps the zero time zero (an omitzero field stays omitted).
func utc(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC()
}
