package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testClock returns a Now that starts at a fixed instant and moves 1ms per
// call, so records are deterministic but distinct.
func testClock() func() time.Time {
	start := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	var ticks atomic.Int64
	return func() time.Time { return start.Add(time.Duration(ticks.Add(1)) * time.Millisecond) }
}

func openLog(t testing.TB, dir string, maxFileBytes int64) *Log {
	t.Helper()
	l, err := Open(Config{Dir: dir, MaxFileBytes: maxFileBytes, Now: testClock()})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// sampleRecord varies action and subject with i so filters have something to select.
func sampleRecord(i int) Record {
	actions := []string{ActionTokenIssue, ActionAuthzDeny, ActionTokenRevoke}
	return Record{
		Action:  actions[i%len(actions)],
		Actor:   ActorSystem,
		TokenID: fmt.Sprintf("jti-%03d", i%5),
		Subject: []string{"alice", "bob"}[i%2],
		Reason:  "insufficient_scope",
		Source:  "10.0.0.7:41234",
		Details: json.RawMessage(`{"scopes": ["orders:read"]}`),
	}
}

func appendN(t testing.TB, l *Log, n int) []Record {
	t.Helper()
	var out []Record
	for i := range n {
		r, err := l.Append(sampleRecord(i))
		if err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
		out = append(out, r)
	}
	return out
}

func readLines(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.SplitAfter(b, []byte("\n"))[:bytes.Count(b, []byte("\n"))]
}

func writeLines(t *testing.T, path string, lines [][]byte) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Join(lines, nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

func files(t *testing.T, dir string) []string {
	t.Helper()
	cfs, err := chainFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, cf := range cfs {
		paths = append(paths, cf.path)
	}
	return paths
}

func readAll(t *testing.T, dir string, f Filter) []Record {
	t.Helper()
	var out []Record
	if err := Read(dir, f, func(r Record) error { out = append(out, r); return nil }); err != nil {
		t.Fatalf("Read: %v", err)
	}
	return out
}

func seqs(rs []Record) []uint64 {
	var out []uint64
	for _, r := range rs {
		out = append(out, r.Seq)
	}
	return out
}

func mustVerify(t *testing.T, dir string) Report {
	t.Helper()
	rep, err := Verify(dir, VerifyOptions{})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return rep
}

func TestAppendAndReopenContinueChain(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, 0)
	first := appendN(t, l, 3)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = openLog(t, dir, 0)
	next, err := l.Append(sampleRecord(3))
	if err != nil {
		t.Fatal(err)
	}
	if next.Seq != 4 || next.Prev != first[2].Hash {
		t.Errorf("after reopen got seq %d prev %.8s, want seq 4 prev %.8s", next.Seq, next.Prev, first[2].Hash)
	}
	if first[0].Prev != "" || first[1].Prev != first[0].Hash {
		t.Errorf("chain links wrong: %+v", first)
	}

	got := readAll(t, dir, Filter{})
	if len(got) != 4 {
		t.Fatalf("read %d records, want 4", len(got))
	}
	if got[0].Time.Location() != time.UTC || !got[0].Time.Equal(first[0].Time) || got[0].Hash != first[0].Hash {
		t.Errorf("read back %+v, want %+v", got[0], first[0])
	}
	if string(got[0].Details) != `{"scopes":["orders:read"]}` {
		t.Errorf("details = %s", got[0].Details)
	}
	rep := mustVerify(t, dir)
	want := Report{Files: 1, Records: 4, FirstSeq: 1, LastSeq: 4, LastHash: next.Hash, Unkeyed: 4, LastUnkeyedSeq: 4}
	if rep != want {
		t.Errorf("Verify = %+v, want %+v", rep, want)
	}
}

func TestRecordLineFormat(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, 0)
	r, err := l.Append(Record{Action: ActionKeyRotate, Actor: "jti-admin"})
	if err != nil {
		t.Fatal(err)
	}
	line := readLines(t, filepath.Join(dir, activeName))[0]
	want := fmt.Sprintf(`{"seq":1,"time":"2025-03-01T12:00:00.001Z","action":"key.rotate","actor":"jti-admin","hash":"%s"}`+"\n", r.Hash)
	if string(line) != want {
		t.Errorf("line =\n%s\nwant\n%s", line, want)
	}
	// The line is exactly the record's JSON, so any JSON reader can use it.
	full, _ := json.Marshal(r)
	if string(full)+"\n" != string(line) {
		t.Errorf("line differs from json.Marshal of the record:\n%s", full)
	}
}

func TestRotation(t *testing.T) {
	dir := t.TempDir()
	const maxFileBytes = 1000
	l := openLog(t, dir, maxFileBytes)
	appended := appendN(t, l, 20)

	paths := files(t, dir)
	if len(paths) < 4 {
		t.Fatalf("got %d files, want rotation into at least 4: %v", len(paths), paths)
	}
	for i, p := range paths {
		info, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if info.Size() > maxFileBytes {
			t.Errorf("%s is %d bytes, over %d", p, info.Size(), maxFileBytes)
		}
		if info.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", p, info.Mode().Perm())
		}
		if i < len(paths)-1 {
			first, err := firstRecord(mustOpen(t, p), p)
			if err != nil {
				t.Fatal(err)
			}
			if filepath.Base(p) != rotatedName(first.Seq) {
				t.Errorf("%s starts at seq %d", p, first.Seq)
			}
		}
	}
	if filepath.Base(paths[0]) != "audit-00000000000000000001.log" {
		t.Errorf("first file is %s", paths[0])
	}

	rep := mustVerify(t, dir)
	want := Report{Files: len(paths), Records: 20, FirstSeq: 1, LastSeq: 20, LastHash: appended[19].Hash, Unkeyed: 20, LastUnkeyedSeq: 20}
	if rep != want {
		t.Errorf("Verify = %+v, want %+v", rep, want)
	}
	if got := seqs(readAll(t, dir, Filter{})); len(got) != 20 || got[0] != 1 || got[19] != 20 {
		t.Errorf("Read seqs = %v", got)
	}

	// A reopened log keeps rotating where it left off.
	l.Close()
	l = openLog(t, dir, maxFileBytes)
	appendN(t, l, 10)
	if rep := mustVerify(t, dir); rep.Records != 30 {
		t.Errorf("after reopen Verify = %+v", rep)
	}
}

func mustOpen(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestVerifyFindsTampering(t *testing.T) {
	// Each case damages a log of 4+ files; file indexes refer to the files
	// as they were before the damage.
	tests := map[string]struct {
		tamper  func(t *testing.T, paths []string)
		file    int // -1: the active file
		line    int
		problem string
	}{
		"edit a field": {
			tamper: func(t *testing.T, paths []string) {
				lines := readLines(t, paths[1])
				lines[1] = bytes.Replace(lines[1], []byte(`"subject":"`), []byte(`"subject":"x`), 1)
				writeLines(t, paths[1], lines)
			},
			file: 1, line: 2, problem: "hash does not match",
		},
		"edit a field and recompute its hash": {
			tamper: func(t *testing.T, paths []string) {
				lines := readLines(t, paths[1])
				r, _, err := parseLine(bytes.TrimSuffix(lines[1], []byte("\n")))
				if err != nil {
					t.Fatal(err)
				}
				r.Reason = "nothing_to_see"
				lines[1] = encodeLine(t, r)
				writeLines(t, paths[1], lines)
			},
			file: 1, line: 3, problem: "prev does not match",
		},
		"insert a copied line": {
			tamper: func(t *testing.T, paths []string) {
				lines := readLines(t, paths[0])
				lines = insert(lines, 2, lines[0])
				writeLines(t, paths[0], lines)
			},
			file: 0, line: 3, problem: "seq 1 follows seq 2: out of order",
		},
		"insert a forged record": {
			tamper: func(t *testing.T, paths []string) {
				lines := readLines(t, paths[0])
				prev, _, _ := parseLine(bytes.TrimSuffix(lines[1], []byte("\n")))
				forged := Record{Seq: prev.Seq + 1, Time: prev.Time, Action: ActionTokenIssue, Actor: "jti-evil", Prev: prev.Hash}
				writeLines(t, paths[0], insert(lines, 2, encodeLine(t, forged)))
			},
			file: 0, line: 4, problem: "seq 3 follows seq 3: out of order",
		},
		"delete a line": {
			tamper: func(t *testing.T, paths []string) {
				lines := readLines(t, paths[0])
				writeLines(t, paths[0], append(lines[:1:1], lines[2:]...))
			},
			file: 0, line: 2, problem: "seq 3 follows seq 1: record 2 is missing",
		},
		"swap two lines": {
			tamper: func(t *testing.T, paths []string) {
				active := paths[len(paths)-1]
				lines := readLines(t, active)
				lines[1], lines[2] = lines[2], lines[1]
				writeLines(t, active, lines)
			},
			file: -1, line: 2, problem: "seq 15 follows seq 13: record 14 is missing here",
		},
		"delete a rotated file": {
			tamper: func(t *testing.T, paths []string) {
				if err := os.Remove(paths[1]); err != nil {
					t.Fatal(err)
				}
			},
			file: 2, line: 1, problem: "records 5..8 are missing (a deleted file",
		},
		"delete the first file": {
			tamper: func(t *testing.T, paths []string) {
				if err := os.Remove(paths[0]); err != nil {
					t.Fatal(err)
				}
			},
			file: 1, line: 1, problem: "the chain starts at seq",
		},
		"rename a rotated file": {
			tamper: func(t *testing.T, paths []string) {
				if err := os.Rename(paths[1], strings.Replace(paths[1], "audit-000", "audit-001", 1)); err != nil {
					t.Fatal(err)
				}
			},
			file: 2, line: 1, problem: "records 5..8 are missing",
		},
		"truncate the tail": {
			tamper: func(t *testing.T, paths []string) {
				active := paths[len(paths)-1]
				info, _ := os.Stat(active)
				if err := os.Truncate(active, info.Size()-10); err != nil {
					t.Fatal(err)
				}
			},
			file: -1, line: 3, problem: "final line is incomplete",
		},
		"empty a rotated file": {
			tamper: func(t *testing.T, paths []string) {
				if err := os.Truncate(paths[1], 0); err != nil {
					t.Fatal(err)
				}
			},
			file: 1, line: 0, problem: "rotated file is empty",
		},
		"garbage line": {
			tamper: func(t *testing.T, paths []string) {
				lines := readLines(t, paths[2])
				writeLines(t, paths[2], insert(lines, 1, []byte("not json at all\n")))
			},
			file: 2, line: 2, problem: "malformed record",
		},
		"line over 1 MiB": {
			tamper: func(t *testing.T, paths []string) {
				active := paths[len(paths)-1]
				lines := readLines(t, active)
				huge := append(bytes.Repeat([]byte("a"), MaxRecordBytes+1), '\n')
				writeLines(t, active, insert(lines, 1, huge))
			},
			file: -1, line: 2, problem: "longer than",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			l := openLog(t, dir, 1500) // 4 records of ~350 bytes a file
			appendN(t, l, 15)          // 3 rotated files and 3 records in the active one
			l.Close()
			paths := files(t, dir)
			if len(paths) != 4 {
				t.Fatalf("setup made %d files, want 4", len(paths))
			}
			mustVerify(t, dir)

			tc.tamper(t, paths)
			_, err := Verify(dir, VerifyOptions{})
			var ve *VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("Verify = %v, want a *VerifyError", err)
			}
			wantFile := paths[(tc.file+len(paths))%len(paths)]
			if ve.File != wantFile || ve.Line != tc.line || !strings.Contains(ve.Problem, tc.problem) {
				t.Errorf("Verify error:\n  %v\nwant %s:%d with %q", err, filepath.Base(wantFile), tc.line, tc.problem)
			}
		})
	}
}

func encodeLine(t *testing.T, r Record) []byte {
	t.Helper()
	line, err := encode(&r, nil)
	if err != nil {
		t.Fatal(err)
	}
	return append(line, '\n')
}

func insert(lines [][]byte, at int, line []byte) [][]byte {
	out := append([][]byte{}, lines[:at]...)
	out = append(out, line)
	return append(out, lines[at:]...)
}

func TestVerifyErrorMessage(t *testing.T) {
	err := &VerifyError{File: "/var/lib/tokenwarden/audit/audit.log", Line: 7, Seq: 42, Problem: "record was altered"}
	want := "audit chain broken at /var/lib/tokenwarden/audit/audit.log:7 (seq 42): record was altered"
	if err.Error() != want {
		t.Errorf("Error() = %q, want %q", err.Error(), want)
	}
}

func TestOpenRemovesTornTail(t *testing.T) {
	tests := map[string]struct {
		records int // complete records before the crash
		torn    string
	}{
		"half a record after complete ones": {records: 3, torn: `{"seq":4,"time":"2025-03-01T12:00:00.004Z","act`},
		"half of the first record":          {records: 0, torn: `{"seq":1,"ti`},
		"zeros from a crash":                {records: 2, torn: "\x00\x00\x00\x00"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			l := openLog(t, dir, 0)
			before := appendN(t, l, tc.records)
			l.Close()
			active := filepath.Join(dir, activeName)
			f, err := os.OpenFile(active, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString(tc.torn)
			f.Close()

			// Before recovery the tear shows; Read skips it.
			if _, err := Verify(dir, VerifyOptions{}); err == nil || !strings.Contains(err.Error(), "incomplete") {
				t.Errorf("Verify before recovery = %v, want incomplete final line", err)
			}
			if got := readAll(t, dir, Filter{}); len(got) != tc.records {
				t.Errorf("Read before recovery got %d records, want %d", len(got), tc.records)
			}

			var logged bytes.Buffer
			l, err = Open(Config{Dir: dir, Logger: slog.New(slog.NewTextHandler(&logged, nil))})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if want := fmt.Sprintf("bytes=%d", len(tc.torn)); !strings.Contains(logged.String(), want) {
				t.Errorf("recovery logged %q, want a warning with %s", logged.String(), want)
			}
			r, err := l.Append(sampleRecord(9))
			if err != nil {
				t.Fatal(err)
			}
			wantPrev := ""
			if tc.records > 0 {
				wantPrev = before[tc.records-1].Hash
			}
			if r.Seq != uint64(tc.records+1) || r.Prev != wantPrev {
				t.Errorf("after recovery seq %d prev %.8s, want %d %.8s", r.Seq, r.Prev, tc.records+1, wantPrev)
			}
			if rep := mustVerify(t, dir); rep.Records != uint64(tc.records+1) {
				t.Errorf("Verify = %+v", rep)
			}
		})
	}
}

func TestOpenAfterCrashDuringRotation(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, 0)
	before := appendN(t, l, 5)
	l.Close()
	// Rotation renamed the active file, then the process died before
	// creating the next one.
	if err := os.Rename(filepath.Join(dir, activeName), filepath.Join(dir, rotatedName(1))); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, dir, 0)
	r, err := l.Append(sampleRecord(5))
	if err != nil {
		t.Fatal(err)
	}
	if r.Seq != 6 || r.Prev != before[4].Hash {
		t.Errorf("got seq %d prev %.8s, want 6 %.8s", r.Seq, r.Prev, before[4].Hash)
	}
	if rep := mustVerify(t, dir); rep.Files != 2 || rep.Records != 6 {
		t.Errorf("Verify = %+v", rep)
	}
}

func TestOpenRefusesDamagedLastRecord(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, 0)
	appendN(t, l, 3)
	l.Close()
	active := filepath.Join(dir, activeName)
	lines := readLines(t, active)
	lines[2] = bytes.Replace(lines[2], []byte(ActorSystem), []byte("jti-admin"), 1)
	writeLines(t, active, lines)

	_, err := Open(Config{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("Open = %v, want a damaged-record error", err)
	}
}

func TestOpenLocksDirectory(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, 0)
	if _, err := Open(Config{Dir: dir}); err == nil {
		t.Fatal("second Open of the same directory succeeded")
	}
	l.Close()
	again, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	again.Close()
}

func TestOpenRejectsBadConfig(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no dir":        {},
		"negative size": {Dir: t.TempDir(), MaxFileBytes: -1},
	} {
		t.Run(name, func(t *testing.T) {
			if l, err := Open(cfg); err == nil {
				l.Close()
				t.Fatal("Open succeeded")
			}
		})
	}
}

func TestAppendRejects(t *testing.T) {
	tests := map[string]struct {
		record Record
		want   error // nil: any error
	}{
		"no action": {record: Record{Actor: ActorSystem}},
		"no actor":  {record: Record{Action: ActionTokenIssue}},
	}
	dir := t.TempDir()
	l := openLog(t, dir, 0)
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := l.Append(tc.record)
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Errorf("Append = %v, want %v", err, tc.want)
			}
		})
	}
	// Refused records leave no trace and no gap.
	r, err := l.Append(sampleRecord(0))
	if err != nil || r.Seq != 1 {
		t.Fatalf("Append after refusals = seq %d, %v", r.Seq, err)
	}
	mustVerify(t, dir)

	l.Close()
	if _, err := l.Append(sampleRecord(1)); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close = %v, want ErrClosed", err)
	}
}

func TestConcurrentAppend(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, 4000)
	const writers, each = 8, 25
	stream := l.Subscribe(t.Context(), Filter{})
	var wg sync.WaitGroup
	seen := make(chan uint64, writers*each)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				r, err := l.Append(sampleRecord(w*each + i))
				if err != nil {
					t.Error(err)
					return
				}
				seen <- r.Seq
			}
		})
	}
	wg.Wait()
	close(seen)
	unique := map[uint64]bool{}
	for s := range seen {
		unique[s] = true
	}
	if len(unique) != writers*each {
		t.Errorf("got %d distinct seqs, want %d", len(unique), writers*each)
	}
	if rep := mustVerify(t, dir); rep.Records != writers*each || rep.Files < 2 {
		t.Errorf("Verify = %+v", rep)
	}
	// Records reach subscribers in seq order even when their fsyncs are shared.
	for want := uint64(1); want <= writers*each; want++ {
		if r := <-stream; r.Seq != want {
			t.Fatalf("stream gave seq %d, want %d", r.Seq, want)
		}
	}
}

func TestSubscribe(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, 0)
	ctx, cancel := context.WithCancel(t.Context())
	all := l.Subscribe(t.Context(), Filter{})
	denies := l.Subscribe(ctx, Filter{Action: ActionAuthzDeny})
	appended := appendN(t, l, 9)

	for _, want := range appended {
		if got := <-all; got.Seq != want.Seq || got.Hash != want.Hash {
			t.Fatalf("all: got seq %d, want %d", got.Seq, want.Seq)
		}
	}
	for _, want := range []uint64{2, 5, 8} {
		if got := <-denies; got.Seq != want || got.Action != ActionAuthzDeny {
			t.Fatalf("denies: got seq %d %s, want %d", got.Seq, got.Action, want)
		}
	}

	cancel()
	if _, ok := <-denies; ok {
		t.Error("channel still open after its context ended")
	}
	l.Close()
	if _, ok := <-all; ok {
		t.Error("channel still open after Close")
	}
	if _, ok := <-l.Subscribe(t.Context(), Filter{}); ok {
		t.Error("Subscribe after Close gave an open channel")
	}
}

func TestSlowSubscriberIsCutOff(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, 0)
	slow := l.Subscribe(t.Context(), Filter{})
	fast := l.Subscribe(t.Context(), Filter{})
	var received atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range fast {
			received.Add(1)
		}
	}()

	const n = SubscriberBuffer + 1
	appendN(t, l, n) // returns only if no subscriber blocks Append

	got := 0
	for range slow {
		got++
	}
	if got != SubscriberBuffer {
		t.Errorf("slow subscriber got %d records before its channel closed, want %d", got, SubscriberBuffer)
	}
	if c := l.Stats().CutOffSubscribers; c != 1 {
		t.Errorf("CutOffSubscribers = %d, want 1", c)
	}
	l.Close()
	<-done
	if received.Load() != n {
		t.Errorf("fast subscriber got %d records, want %d", received.Load(), n)
	}
}

func TestFilterMatch(t *testing.T) {
	r := Record{Action: ActionTokenRevoke, TokenID: "jti-1", Subject: "alice"}
	tests := map[string]struct {
		filter Filter
		want   bool
	}{
		"empty matches all":        {Filter{}, true},
		"token id":                 {Filter{TokenID: "jti-1"}, true},
		"other token id":           {Filter{TokenID: "jti-2"}, false},
		"subject":                  {Filter{Subject: "alice"}, true},
		"other subject":            {Filter{Subject: "bob"}, false},
		"exact action":             {Filter{Action: "token.revoke"}, true},
		"action prefix":            {Filter{Action: "token."}, true},
		"other prefix":             {Filter{Action: "authz."}, false},
		"prefix without dot":       {Filter{Action: "token"}, false},
		"partial action":           {Filter{Action: "token.rev"}, false},
		"all fields":               {Filter{TokenID: "jti-1", Subject: "alice", Action: "token."}, true},
		"all fields, one mismatch": {Filter{TokenID: "jti-1", Subject: "bob", Action: "token."}, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := tc.filter.Match(r); got != tc.want {
				t.Errorf("%+v.Match = %v, want %v", tc.filter, got, tc.want)
			}
		})
	}
}

func TestReadAndTail(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, 1000)
	appendN(t, l, 20) // several files

	tests := map[string]struct {
		n      int
		filter Filter
		want   []uint64
	}{
		"last 3":              {3, Filter{}, []uint64{18, 19, 20}},
		"across files":        {7, Filter{}, []uint64{14, 15, 16, 17, 18, 19, 20}},
		"filtered":            {3, Filter{Action: ActionAuthzDeny}, []uint64{14, 17, 20}},
		"more than there are": {100, Filter{TokenID: "jti-000"}, []uint64{1, 6, 11, 16}},
		"nothing matches":     {5, Filter{Subject: "carol"}, nil},
		"zero":                {0, Filter{}, nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := Tail(dir, tc.n, tc.filter)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(seqs(got)) != fmt.Sprint(tc.want) {
				t.Errorf("Tail = %v, want %v", seqs(got), tc.want)
			}
		})
	}

	if got := seqs(readAll(t, dir, Filter{Subject: "bob", Action: "token."})); fmt.Sprint(got) != "[4 6 10 12 16 18]" {
		t.Errorf("Read filtered = %v", got)
	}
	stop := errors.New("stop")
	n := 0
	err := Read(dir, Filter{}, func(Record) error {
		if n++; n == 5 {
			return stop
		}
		return nil
	})
	if err != stop || n != 5 {
		t.Errorf("Read returned %v after %d records, want the callback's error after 5", err, n)
	}
}

func TestReadRejectsLongLine(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, 0)
	appendN(t, l, 2)
	l.Close()
	f, err := os.OpenFile(filepath.Join(dir, activeName), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(bytes.Repeat([]byte("{"), 3*MaxRecordBytes))
	f.Write([]byte("\n"))
	f.Close()

	err = Read(dir, Filter{}, func(Record) error { return nil })
	if !errors.Is(err, ErrLineTooLong) {
		t.Errorf("Read = %v, want ErrLineTooLong", err)
	}
	if _, err := Tail(dir, 1, Filter{}); !errors.Is(err, ErrLineTooLong) {
		t.Errorf("Tail = %v, want ErrLineTooLong", err)
	}
	if _, err := Open(Config{Dir: dir}); err == nil {
		t.Error("Open of a log ending in an over-long line succeeded")
	}
}

// FuzzVerify feeds arbitrary bytes to the line reader, parser and chain
// check as one file. It must never panic, and what it accepts must be a
// whole, readable chain.
func FuzzVerify(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte("\n"))
	f.Add([]byte(`{"seq":1}` + "\n"))
	f.Add(encodeFuzzChain(5, 3))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c chain
		err := c.verifyFile(chainFile{path: activeName}, bytes.NewReader(data))
		if err == nil {
			if ferr := c.finish(); ferr != nil {
				err = ferr
			}
		}
		if err != nil {
			var ve *VerifyError
			if !errors.As(err, &ve) {
				t.Fatalf("Verify of in-memory data returned a non-VerifyError: %v", err)
			}
			return
		}
		if lines := uint64(bytes.Count(data, []byte("\n"))); c.report.Records != lines {
			t.Fatalf("accepted %d records from %d lines", c.report.Records, lines)
		}
		rep := c.report
		if rep.Records > 0 && rep.LastSeq != rep.FirstSeq+rep.Records-1 {
			t.Fatalf("accepted a chain of %d records from seq %d ending at seq %d", rep.Records, rep.FirstSeq, rep.LastSeq)
		}
		if rep.Records > 0 && rep.FirstSeq != 1 && rep.PrunedBefore != rep.FirstSeq {
			t.Fatalf("accepted a chain starting at seq %d that no audit.prune accounts for", rep.FirstSeq)
		}
	})
}

// encodeFuzzChain is n records chained from seq first (unkeyed).
func encodeFuzzChain(first uint64, n int) []byte {
	var out []byte
	prev := ""
	for i := range n {
		r := Record{Seq: first + uint64(i), Time: time.Unix(1, 0).UTC(), Action: ActionAuditPrune, Actor: ActorSystem, Prev: prev,
			Details: json.RawMessage(fmt.Sprintf(`{"kept_from_seq":%d}`, first))}
		line, _ := encode(&r, nil)
		out = append(append(out, line...), '\n')
		prev = r.Hash
	}
	return out
}

// FuzzRecordRoundTrip checks that whatever Append can encode, the reader
// parses back intact, and that re-encoding what was read gives the same
// line: writer and reader agree on every byte that is hashed.
func FuzzRecordRoundTrip(f *testing.F) {
	f.Add(uint64(1), int64(0), "token.issue", "system", "jti-1", "alice", "", uint64(0), []byte(nil), "")
	f.Add(uint64(7), int64(1740830400123456789), "authz.deny", "jti-admin", "jti-2", "<bob&co>", "\u2028\xff", uint64(3), []byte(`{"b": [1, 2.50, "\u00e9"], "a": null}`), "00ff")
	f.Fuzz(func(t *testing.T, seq uint64, nanos int64, action, actor, tokenID, subject, reason string, count uint64, details []byte, prev string) {
		r := Record{Seq: seq, Time: time.Unix(0, nanos).UTC(), Action: action, Actor: actor, TokenID: tokenID,
			Subject: subject, Reason: reason, Count: count, Details: details, Prev: prev}
		line, err := encode(&r, nil)
		if err != nil || seq == 0 || action == "" || r.Time.IsZero() {
			return // Append refuses these before writing
		}
		if bytes.IndexByte(line, '\n') >= 0 {
			t.Fatalf("encoded record spans lines: %q", line)
		}
		got, body, err := parseLine(line)
		intact, _ := checkHash(got, body, nil)
		if err != nil || !intact {
			t.Fatalf("parseLine(%q) = intact %v, %v", line, intact, err)
		}
		again, err := encode(&got, nil)
		if err != nil || !bytes.Equal(again, line) {
			t.Fatalf("re-encoding differs:\n%s\n%s (%v)", line, again, err)
		}
	})
}

func BenchmarkAppend(b *testing.B) {
	l := openLog(b, b.TempDir(), 0)
	r := sampleRecord(1)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := l.Append(r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendParallel shows group commit: with many concurrent
// appenders one fdatasync covers many records.
func BenchmarkAppendParallel(b *testing.B) {
	l := openLog(b, b.TempDir(), 0)
	r := sampleRecord(1)
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := l.Append(r); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkVerify(b *testing.B) {
	dir := b.TempDir()
	l := openLog(b, dir, 0)
	appendN(b, l, 1000)
	b.ResetTimer()
	for b.Loop() {
		if _, err := Verify(dir, VerifyOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
