package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

// token is shaped like a tokenwarden token; no record may hold it.
const token = "tw_eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0.eyJqdGkiOiJ4In0.c2lnbmF0dXJl"

// maxLine bounds a bounded record's line: every field at its bound, with
// markers, JSON escaping of the worst kind (\u00XX) aside.
const maxLine = 5*MaxIDBytes + MaxSourceBytes + MaxRouteBytes + MaxReasonBytes + MaxDetailsBytes + 1024

func openKeyed(t testing.TB, dir string, cfg Config) *Log {
	t.Helper()
	cfg.Dir = dir
	if cfg.Now == nil {
		cfg.Now = testClock()
	}
	l, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func testKey(id string) *Key { return &Key{ID: id, Secret: bytes.Repeat([]byte(id[:1]), KeySize)} }

// TestAppendBoundsHostileFields is the amplification and evasion attack:
// a client controls the source (gRPC peer, X-Forwarded-For), the route and
// an admin's reason. Every hostile record is written, bounded, with token
// text redacted, and the chain verifies.
func TestAppendBoundsHostileFields(t *testing.T) {
	huge := strings.Repeat("A", 10<<20)
	tests := map[string]struct {
		record Record
		want   []string // in the written line
	}{
		"10 MiB source":              {Record{Action: ActionAuthzDeny, Actor: ActorSystem, Source: huge}, []string{"[truncated 10485504 bytes]"}},
		"10 MiB route and reason":    {Record{Action: ActionAuthzDeny, Actor: ActorSystem, Route: huge, Reason: huge}, []string{"…[truncated"}},
		"token in the source":        {Record{Action: ActionAuthzDeny, Actor: ActorSystem, Source: "10.0.0.1, " + token + ", 10.0.0.2"}, []string{`"source":"10.0.0.1, [redacted token], 10.0.0.2"`}},
		"token in a revoke reason":   {Record{Action: ActionTokenRevoke, Actor: "jti-admin", Reason: "leaked: " + token}, []string{`"reason":"leaked: [redacted token]"`}},
		"token in details":           {Record{Action: ActionAnomaly, Actor: ActorSystem, Details: json.RawMessage(`{"t":"` + token + `"}`)}, []string{`{"t":"[redacted token]"}`}},
		"token after a huge source":  {Record{Action: ActionAuthzDeny, Actor: ActorSystem, Source: huge + token}, []string{"truncated"}},
		"tokens, many":               {Record{Action: ActionAuthzDeny, Actor: ActorSystem, Source: strings.Repeat(token+",", 1000)}, []string{"[redacted token],[redacted token]"}},
		"details that are not JSON":  {Record{Action: ActionAnomaly, Actor: ActorSystem, Details: json.RawMessage(`{oops ` + token)}, []string{`"details_not_json_bytes"`}},
		"details over their bound":   {Record{Action: ActionAnomaly, Actor: ActorSystem, Details: json.RawMessage(`"` + strings.Repeat("x", 1<<20) + `"`)}, []string{`"details_truncated_bytes":1048578`}},
		"invalid UTF-8 in the route": {Record{Action: ActionAuthzDeny, Actor: ActorSystem, Route: "a\xffb"}, []string{"\"route\":\"a\uFFFDb\""}},
		"multi-byte text cut":        {Record{Action: ActionAuthzDeny, Actor: ActorSystem, Source: strings.Repeat("é", MaxSourceBytes)}, []string{"é…[truncated"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			l := openKeyed(t, dir, Config{Key: testKey("k")})
			if _, err := l.Append(tc.record); err != nil {
				t.Fatalf("Append refused a hostile record (evasion): %v", err)
			}
			data, err := os.ReadFile(filepath.Join(dir, activeName))
			if err != nil {
				t.Fatal(err)
			}
			if len(data) > maxLine {
				t.Errorf("record is %d bytes, want at most %d (amplification)", len(data), maxLine)
			}
			if bytes.Contains(data, tokenMarker) {
				t.Errorf("a token reached the log: %.300s", data)
			}
			for _, w := range tc.want {
				if !bytes.Contains(data, []byte(w)) {
					t.Errorf("line lacks %q: %.600s", w, data)
				}
			}
			if _, err := Verify(dir, VerifyOptions{Key: testKey("k")}); err != nil {
				t.Error(err)
			}
			if s := l.Stats(); s.FieldsTruncated+s.FieldsRedacted == 0 && name != "invalid UTF-8 in the route" {
				t.Errorf("nothing counted as rewritten: %+v", s)
			}
		})
	}
}

// TestReadBoundsLegacyRecords reads back a log written before fields were
// bounded: a record with a 900 KiB source costs a reader a bounded record.
func TestReadBoundsLegacyRecords(t *testing.T) {
	dir := t.TempDir()
	r := Record{Seq: 1, Time: testClock()(), Action: ActionAuthzDeny, Actor: ActorSystem, Source: strings.Repeat("S", 900<<10)}
	writeLines(t, filepath.Join(dir, activeName), [][]byte{encodeLine(t, r)})
	recs, err := Tail(dir, 10, Filter{})
	if err != nil || len(recs) != 1 {
		t.Fatalf("Tail = %d records, %v", len(recs), err)
	}
	if n := len(recs[0].Source); n > MaxSourceBytes+64 {
		t.Errorf("Tail returned a %d-byte source", n)
	}
	if _, err := Verify(dir, VerifyOptions{}); err != nil {
		t.Errorf("the legacy record no longer verifies: %v", err)
	}
}

// TestTailIsBoundedInBytes asks for the most records the API allows, of
// the largest size: what Tail holds stays within MaxTailBytes.
func TestTailIsBoundedInBytes(t *testing.T) {
	dir := t.TempDir()
	// Records at every field's bound, written as Append would (but without
	// a sync each).
	big := Record{Action: ActionAuthzDeny, Actor: ActorSystem, Source: strings.Repeat("s", 1<<20),
		Reason: strings.Repeat("r", 1<<20), Route: strings.Repeat("p", 1<<20), Details: json.RawMessage(`"` + strings.Repeat("d", 1<<20) + `"`)}
	bound(&big)
	const n = 4000
	var lines [][]byte
	prev, clock := "", testClock()
	for i := range n {
		r := big
		r.Seq, r.Time, r.Prev = uint64(i+1), clock(), prev
		line, err := encode(&r, nil)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, append(line, '\n'))
		prev = r.Hash
	}
	writeLines(t, filepath.Join(dir, activeName), lines)
	recs, err := Tail(dir, 10000, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for i := range recs {
		total += recordSize(&recs[i])
	}
	if total > MaxTailBytes || len(recs) == 0 || len(recs) == n {
		t.Errorf("Tail returned %d records, %d bytes; want some, within %d bytes", len(recs), total, MaxTailBytes)
	}
	if last := recs[len(recs)-1].Seq; last != n {
		t.Errorf("Tail's last record is #%d, want the newest (#%d)", last, n)
	}
	for i := 1; i < len(recs); i++ {
		if recs[i].Seq != recs[i-1].Seq+1 {
			t.Fatalf("Tail has a hole: #%d then #%d", recs[i-1].Seq, recs[i].Seq)
		}
	}
}

func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	for _, p := range files(t, dir) {
		info, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		total += info.Size()
	}
	return total
}

// TestSizeBudget floods the log: it stays within its budget, the pruned
// start verifies (an audit.prune record accounts for it), and deleting a
// file beyond what was pruned does not.
func TestSizeBudget(t *testing.T) {
	dir := t.TempDir()
	const budget = 16 << 10
	l := openKeyed(t, dir, Config{MaxTotalBytes: budget, Key: testKey("k"), Logger: slog.New(slog.DiscardHandler)})
	for i := range 400 {
		if _, err := l.Append(sampleRecord(i)); err != nil {
			t.Fatal(err)
		}
		if got := dirBytes(t, dir); got > budget {
			t.Fatalf("after %d records the log is %d bytes, over its %d-byte budget", i+1, got, budget)
		}
	}
	if s := l.Stats(); s.FilesRemoved == 0 {
		t.Fatalf("no file removed: %+v", s)
	}
	rep, err := Verify(dir, VerifyOptions{Key: testKey("k")})
	if err != nil {
		t.Fatal(err)
	}
	if rep.PrunedBefore <= 1 || rep.PrunedBefore != rep.FirstSeq || !strings.Contains(rep.Summary(), "removed by the size budget") {
		t.Errorf("report = %+v\n%s", rep, rep.Summary())
	}
	// The attacker removes the oldest file the budget kept.
	if err := os.Remove(files(t, dir)[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(dir, VerifyOptions{Key: testKey("k")}); err == nil || !strings.Contains(err.Error(), "no audit.prune record accounts for them") {
		t.Errorf("Verify after deleting a kept file = %v", err)
	}
}

// rechain rewrites lines from index from on as an attacker without the key
// would: each record re-encoded (its hash recomputed, keyed with key when
// the attacker has one) onto the line before.
func rechain(t *testing.T, lines [][]byte, from int, key *Key, edit func(*Record)) [][]byte {
	t.Helper()
	prev := ""
	if from > 0 {
		r, _, err := parseLine(bytes.TrimSuffix(lines[from-1], []byte("\n")))
		if err != nil {
			t.Fatal(err)
		}
		prev = r.Hash
	}
	out := append([][]byte(nil), lines[:from]...)
	for i, line := range lines[from:] {
		r, _, err := parseLine(bytes.TrimSuffix(line, []byte("\n")))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 && edit != nil {
			edit(&r)
		}
		r.Seq, r.Prev = uint64(from+i+1), prev
		if key == nil {
			r.ChainKey = ""
		}
		b, err := encode(&r, key)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, append(b, '\n'))
		prev = r.Hash
	}
	return out
}

// TestKeyedChainAttacks: with the chain keyed and its head recorded in the
// store, rewriting and re-chaining, dropping records, cutting the tail and
// deleting the log are all found; without the key, Verify says what it
// could not check.
func TestKeyedChainAttacks(t *testing.T) {
	key := testKey("k")
	wrongKey := testKey("x")
	wrongKey.ID = key.ID // an attacker's guess at the key, under its id
	tests := map[string]struct {
		tamper  func(t *testing.T, path string, lines [][]byte) [][]byte
		head    bool
		problem string
	}{
		"rewrite a record and re-chain unkeyed": {
			tamper: func(t *testing.T, _ string, lines [][]byte) [][]byte {
				return rechain(t, lines, 3, nil, func(r *Record) { r.Reason = "nothing_to_see" })
			},
			problem: "unkeyed record after keyed ones",
		},
		"rewrite a record and re-chain with a guessed key": {
			tamper: func(t *testing.T, _ string, lines [][]byte) [][]byte {
				return rechain(t, lines, 3, wrongKey, func(r *Record) { r.Reason = "nothing_to_see" })
			},
			problem: "its HMAC does not match",
		},
		"drop a record and re-chain": {
			tamper: func(t *testing.T, _ string, lines [][]byte) [][]byte {
				return rechain(t, append(lines[:3:3], lines[4:]...), 3, wrongKey, nil)
			},
			problem: "its HMAC does not match",
		},
		"cut the tail": {
			tamper: func(t *testing.T, _ string, lines [][]byte) [][]byte { return lines[:5] },
			head:   true, problem: "the log ends at seq 5: records 6..8 are missing",
		},
		"delete the whole log": {
			tamper: func(t *testing.T, path string, _ [][]byte) [][]byte { return nil },
			head:   true, problem: "the log ends at seq 0",
		},
		"replace the whole log by a fresh keyless one": {
			tamper: func(t *testing.T, _ string, lines [][]byte) [][]byte { return rechain(t, lines, 0, nil, nil) },
			head:   true, problem: "has hash",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			l := openKeyed(t, dir, Config{Key: key})
			appendN(t, l, 10)
			hs := &memHeads{}
			ctx := t.Context()
			recordHeadNow(t, l, hs)
			head, _ := hs.AuditHead(ctx, "n1")
			l.Close()
			path := filepath.Join(dir, activeName)
			lines := readLines(t, path)
			if tc.head {
				// The head was recorded at seq 8; the last two records
				// came after it.
				lines = lines[:8]
				head = headOf(t, lines[7])
			}
			writeLines(t, path, tc.tamper(t, path, lines))
			opts := VerifyOptions{Key: key}
			if tc.head {
				opts.Head = &head
			}
			_, err := Verify(dir, opts)
			if err == nil || !strings.Contains(err.Error(), tc.problem) {
				t.Errorf("Verify = %v, want %q", err, tc.problem)
			}
		})
	}
}

func headOf(t *testing.T, line []byte) store.AuditHead {
	t.Helper()
	r, _, err := parseLine(bytes.TrimSuffix(line, []byte("\n")))
	if err != nil {
		t.Fatal(err)
	}
	return store.AuditHead{Node: "n1", Seq: r.Seq, Hash: r.Hash, File: activeName}
}

// memHeads is a HeadStore in memory.
type memHeads struct{ heads map[string]store.AuditHead }

func (m *memHeads) PutAuditHead(_ context.Context, h store.AuditHead) error {
	if m.heads == nil {
		m.heads = map[string]store.AuditHead{}
	}
	m.heads[h.Node] = h
	return nil
}

func (m *memHeads) AuditHead(_ context.Context, node string) (store.AuditHead, error) {
	h, ok := m.heads[node]
	if !ok {
		return store.AuditHead{}, store.ErrNotFound
	}
	return h, nil
}

// recordHeadNow runs RecordHeads just long enough to record the head once
// (it records once more when its context ends).
func recordHeadNow(t *testing.T, l *Log, hs HeadStore) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	l.RecordHeads(ctx, hs, "n1", time.Hour)
}

// TestVerifyReportsWhatItCannotProve: legacy records, keyed records
// without the key, and records after the recorded head are named.
func TestVerifyReportsWhatItCannotProve(t *testing.T) {
	dir := t.TempDir()
	l := openKeyed(t, dir, Config{})
	appendN(t, l, 3) // written before keying
	l.Close()
	key := testKey("k")
	l = openKeyed(t, dir, Config{Key: key})
	appendN(t, l, 4)
	hs := &memHeads{}
	recordHeadNow(t, l, hs)
	appendN(t, l, 2)
	l.Close()
	head, _ := hs.AuditHead(t.Context(), "n1")

	for name, tc := range map[string]struct {
		opts VerifyOptions
		want []string
	}{
		"key and head": {VerifyOptions{Key: key, Head: &head}, []string{
			"records #1 to #3 are unkeyed legacy records",
			"keyed (audit key k) and authenticated up to #9",
			"head recorded in the store at #7 matches: the 2 record(s) after it cannot be proven complete",
		}},
		"no key, no head": {VerifyOptions{}, []string{
			"6 keyed records (audit key k) were NOT authenticated",
			"no head recorded in the store was checked",
		}},
	} {
		t.Run(name, func(t *testing.T) {
			rep, err := Verify(dir, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(rep.Summary(), w) {
					t.Errorf("summary lacks %q:\n%s", w, rep.Summary())
				}
			}
		})
	}
	if _, err := Verify(dir, VerifyOptions{Key: testKey("q")}); err == nil || !strings.Contains(err.Error(), "not the store's") {
		t.Errorf("Verify with another store's key = %v", err)
	}
}

// TestCheckHeadRecordsAGap: the tail is cut (or the log deleted) while the
// agent is down; at start it finds the log behind the recorded head, says
// so in an audit.gap record, and Verify reports it.
func TestCheckHeadRecordsAGap(t *testing.T) {
	for name, cut := range map[string]func(t *testing.T, dir string){
		"tail cut": func(t *testing.T, dir string) {
			path := filepath.Join(dir, activeName)
			writeLines(t, path, readLines(t, path)[:3])
		},
		"log deleted": func(t *testing.T, dir string) {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "audit")
			key := testKey("k")
			l := openKeyed(t, dir, Config{Key: key})
			appendN(t, l, 6)
			hs := &memHeads{}
			recordHeadNow(t, l, hs)
			l.Close()
			cut(t, dir)

			l = openKeyed(t, dir, Config{Key: key})
			err := l.CheckHead(t.Context(), hs, "n1")
			if err == nil || !strings.Contains(err.Error(), "seq 6 was recorded as its head") {
				t.Fatalf("CheckHead = %v", err)
			}
			if l.Stats().Gaps != 1 {
				t.Errorf("gaps = %d", l.Stats().Gaps)
			}
			recordHeadNow(t, l, hs)
			l.Close()
			head, _ := hs.AuditHead(t.Context(), "n1")
			rep, err := Verify(dir, VerifyOptions{Key: key, Head: &head})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Gaps != 1 || !strings.Contains(rep.Summary(), "WARNING: 1 audit.gap") {
				t.Errorf("report = %+v\n%s", rep, rep.Summary())
			}
		})
	}
}

// TestCheckHeadPassesAnIntactLog: no gap record for a log that holds its
// recorded head, or a head that predates the oldest record kept.
func TestCheckHeadPassesAnIntactLog(t *testing.T) {
	dir := t.TempDir()
	l := openKeyed(t, dir, Config{Key: testKey("k")})
	appendN(t, l, 3)
	hs := &memHeads{}
	recordHeadNow(t, l, hs)
	appendN(t, l, 3)
	if err := l.CheckHead(t.Context(), hs, "n1"); err != nil {
		t.Fatal(err)
	}
	if err := l.CheckHead(t.Context(), hs, "another-node"); err != nil {
		t.Fatal(err)
	}
	if s := l.Stats(); s.Gaps != 0 || s.HeadSeq != 3 {
		t.Errorf("stats = %+v", s)
	}
}

func TestOpenRefusesAnotherStoresKey(t *testing.T) {
	dir := t.TempDir()
	l := openKeyed(t, dir, Config{Key: testKey("k")})
	appendN(t, l, 2)
	l.Close()
	if l, err := Open(Config{Dir: dir, Key: testKey("z")}); err == nil {
		l.Close()
		t.Fatal("Open chained onto a record keyed with another key")
	} else if !strings.Contains(err.Error(), "not this store's") {
		t.Errorf("Open = %v", err)
	}
}

// FuzzBound feeds hostile text to every client-reachable field: whatever
// comes in, Append's encoding holds no token text, stays within a fixed
// size, and reads back intact.
func FuzzBound(f *testing.F) {
	f.Add("10.0.0.1:443", "orders#0", "leaked", []byte(`{"a":1}`))
	f.Add(token, token, "x "+token+" y", []byte(`{"t":"`+token+`"}`))
	f.Add(strings.Repeat("\x00", 300), strings.Repeat("é", 400), strings.Repeat("tw_eyJ", 200), []byte(`tw_eyJ{`))
	f.Add("tw_tw_eyJeyJ", "\xff\xfetw_eyJ\xff", "tw_eyJ.", []byte(`["tw_eyJ\"]`))
	// Every field at its bound, each byte escaped six-fold (\u00XX), plus
	// the markers and the record's fixed parts.
	const worst = 6*(5*MaxIDBytes+MaxSourceBytes+MaxRouteBytes+MaxReasonBytes+8*64) + 6*MaxDetailsBytes + 512
	f.Fuzz(func(t *testing.T, source, route, reason string, details []byte) {
		r := Record{Seq: 1, Time: time.Unix(1, 0).UTC(), Action: ActionAuthzDeny, Actor: ActorSystem,
			Source: source, Route: route, Reason: reason, Subject: source, Tenant: route, Details: details, ChainKey: "k"}
		bound(&r)
		line, err := encode(&r, testKey("k"))
		if err != nil {
			t.Fatalf("a bounded record does not encode: %v", err)
		}
		if bytes.Contains(line, tokenMarker) {
			t.Fatalf("token text survived: %q", line)
		}
		if len(line) > worst {
			t.Fatalf("line of %d bytes, over %d", len(line), worst)
		}
		got, body, err := parseLine(line)
		if err != nil {
			t.Fatal(err)
		}
		if intact, checked := checkHash(got, body, testKey("k")); !intact || !checked {
			t.Fatalf("bounded record does not read back intact: %q", line)
		}
	})
}
