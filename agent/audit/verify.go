package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

// Report summarises a verified log: what the walk proved, and what it
// could not.
type Report struct {
	Files    int
	Records  uint64
	FirstSeq uint64
	LastSeq  uint64
	// LastHash is the head of the chain.
	LastHash string

	// Unkeyed counts records chained with plain SHA-256 (every record
	// written before the chain was keyed): anyone who can write the files
	// can rewrite them and chain again. LastUnkeyedSeq is the last of them.
	Unkeyed        uint64
	LastUnkeyedSeq uint64
	// KeyID names the audit key of the keyed records; Unchecked counts
	// keyed records whose HMAC was not checked because no key was given
	// (their order and links were).
	KeyID     string
	Unchecked uint64
	// PrunedBefore is set when the chain starts after seq 1 because the
	// size budget removed older files, as an audit.prune record says.
	PrunedBefore uint64
	// Gaps counts audit.gap records: times the agent found, at start, the
	// log behind the head recorded in the store. GapSeq is the last one.
	Gaps   uint64
	GapSeq uint64
	// HeadSeq is the head recorded in the store that the log was checked
	// against (0: none given). HeadPruned is true when that head is older
	// than the oldest record kept, so it proved nothing.
	HeadSeq    uint64
	HeadPruned bool
}

// Summary says in a sentence or three what the report proves and what it
// does not.
func (r Report) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "chain intact: %d records (#%d to #%d) in %d file(s); head %s", r.Records, r.FirstSeq, r.LastSeq, r.Files, r.LastHash)
	if r.PrunedBefore > 0 {
		fmt.Fprintf(&b, "\nrecords before #%d were removed by the size budget (audit.prune)", r.PrunedBefore)
	}
	keyed := r.Records - r.Unkeyed
	switch {
	case r.Records == 0:
	case keyed == 0:
		b.WriteString("\nNOT keyed: every record is an unkeyed legacy record; anyone who can write the files could have rewritten them and chained again")
	case r.Unkeyed > 0:
		fmt.Fprintf(&b, "\nrecords #%d to #%d are unkeyed legacy records (written before the chain was keyed): their integrity is not proven", r.FirstSeq, r.LastUnkeyedSeq)
	}
	if keyed > 0 {
		if r.Unchecked > 0 {
			fmt.Fprintf(&b, "\n%d keyed records (audit key %s) were NOT authenticated: no key was given, so only their order and links were checked", r.Unchecked, r.KeyID)
		} else {
			fmt.Fprintf(&b, "\nkeyed (audit key %s) and authenticated up to #%d", r.KeyID, r.LastSeq)
		}
	}
	switch {
	case r.HeadSeq == 0:
		b.WriteString("\nno head recorded in the store was checked: a cut tail, or a whole log replaced, cannot be detected")
	case r.HeadPruned:
		fmt.Fprintf(&b, "\nthe head recorded in the store (#%d) is older than the oldest record kept: a cut tail cannot be detected", r.HeadSeq)
	case r.HeadSeq == r.LastSeq:
		fmt.Fprintf(&b, "\nhead recorded in the store at #%d matches: nothing was cut from the end", r.HeadSeq)
	default:
		fmt.Fprintf(&b, "\nhead recorded in the store at #%d matches: the %d record(s) after it cannot be proven complete (the tail may have been cut)", r.HeadSeq, r.LastSeq-r.HeadSeq)
	}
	if r.Gaps > 0 {
		fmt.Fprintf(&b, "\nWARNING: %d audit.gap record(s), the last at #%d: the agent found records missing from this log at start", r.Gaps, r.GapSeq)
	}
	return b.String()
}

// VerifyOptions are what Verify can check the log against beyond the chain
// itself.
type VerifyOptions struct {
	// Key authenticates keyed records. Without it they are checked for
	// order and links only, and the Report says so.
	Key *Key
	// Head is the chain head recorded in the store: the log must hold that
	// record and must not end before it.
	Head *store.AuditHead
}

// VerifyError locates where the chain breaks.
type VerifyError struct {
	File    string
	Line    int    // from 1; 0 when the problem is the file as a whole
	Seq     uint64 // the record's seq, 0 when it could not be read
	Problem string
}

func (e *VerifyError) Error() string {
	at := e.File
	if e.Line > 0 {
		at = fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	if e.Seq > 0 {
		return fmt.Sprintf("audit chain broken at %s (seq %d): %s", at, e.Seq, e.Problem)
	}
	return fmt.Sprintf("audit chain broken at %s: %s", at, e.Problem)
}

// verifyAttempts bounds how often Verify restarts its walk because the log
// rotated under it.
const verifyAttempts = 3

// Verify walks every file in dir in chain order and checks that each record's
// hash matches its contents (an HMAC under opts.Key for keyed records), that
// it names the previous record's hash, that seq goes up by exactly one from
// 1 (or from where an audit.prune record says the size budget cut), that no
// unkeyed record follows a keyed one, and that the log holds the head
// recorded in the store and does not end before it. The first break is
// returned as a *VerifyError, with the Report of the intact records before
// it.
//
// Verify may run while the agent appends. A rotation during the walk would
// look like a missing file, so Verify then walks again. A record being
// written at that moment shows as an incomplete final line: verify again.
func Verify(dir string, opts VerifyOptions) (Report, error) {
	for attempt := 1; ; attempt++ {
		files, err := chainFiles(dir)
		if err != nil {
			return Report{}, err
		}
		report, err := verifyFiles(files, opts)
		var broken *VerifyError
		if attempt == verifyAttempts || !errors.As(err, &broken) {
			return report, err
		}
		again, lerr := chainFiles(dir)
		if lerr != nil || slices.Equal(files, again) {
			return report, err
		}
	}
}

func verifyFiles(files []chainFile, opts VerifyOptions) (Report, error) {
	c := chain{opts: opts}
	if h := opts.Head; h != nil && h.Seq > 0 {
		c.report.HeadSeq = h.Seq
	}
	for _, cf := range files {
		f, err := os.Open(cf.path)
		if err != nil {
			return c.report, fmt.Errorf("audit: verify: %w", err)
		}
		err = c.verifyFile(cf, f)
		f.Close()
		if err != nil {
			return c.report, err
		}
	}
	return c.report, c.finish()
}

// chain carries the state of a walk from one file to the next.
type chain struct {
	opts   VerifyOptions
	report Report
	// first locates the first record, for a start that no prune explains.
	first      *VerifyError
	keptFrom   uint64 // the highest first-kept seq an audit.prune names
	headPassed bool   // the record at the head's seq was seen and matched
}

func (c *chain) verifyFile(cf chainFile, r io.Reader) error {
	c.report.Files++
	lr := newLineReader(r)
	broken := func(seq uint64, format string, args ...any) error {
		return &VerifyError{File: cf.path, Line: lr.line, Seq: seq, Problem: fmt.Sprintf(format, args...)}
	}
	for {
		line, complete, err := lr.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if errors.Is(err, ErrLineTooLong) {
			return broken(0, "line is longer than %d bytes", MaxRecordBytes)
		}
		if err != nil {
			return fmt.Errorf("audit: verify %s: %w", cf.path, err)
		}
		if !complete {
			return broken(0, "final line is incomplete: the file was truncated, or a crash or an append in progress cut the record short")
		}
		rec, body, err := parseLine(line)
		if err != nil {
			return broken(0, "malformed record: %v", err)
		}
		if problem := c.authenticate(rec, body); problem != "" {
			return broken(rec.Seq, "%s", problem)
		}
		if problem := c.link(cf, lr.line, rec); problem != "" {
			return broken(rec.Seq, "%s", problem)
		}
		if problem := c.note(rec); problem != "" {
			return broken(rec.Seq, "%s", problem)
		}
		if c.report.Records == 0 {
			c.report.FirstSeq = rec.Seq
			c.first = &VerifyError{File: cf.path, Line: lr.line, Seq: rec.Seq}
		}
		c.report.Records++
		c.report.LastSeq = rec.Seq
		c.report.LastHash = rec.Hash
	}
	if lr.line == 0 && !cf.active() {
		return &VerifyError{File: cf.path, Problem: "rotated file is empty"}
	}
	return nil
}

// authenticate checks rec's hash (keyed or not) and that the chain, once
// keyed, stays keyed with one key.
func (c *chain) authenticate(rec Record, body []byte) string {
	if rec.ChainKey == "" {
		if c.report.KeyID != "" {
			return fmt.Sprintf("unkeyed record after keyed ones: written without audit key %s (forged, or a writer that lost its key)", c.report.KeyID)
		}
		if intact, _ := checkHash(rec, body, nil); !intact {
			return "record was altered: its hash does not match its contents"
		}
		c.report.Unkeyed++
		c.report.LastUnkeyedSeq = rec.Seq
		return ""
	}
	switch {
	case c.report.KeyID != "" && rec.ChainKey != c.report.KeyID:
		return fmt.Sprintf("keyed with audit key %s after records keyed with %s", rec.ChainKey, c.report.KeyID)
	case c.opts.Key != nil && rec.ChainKey != c.opts.Key.ID:
		return fmt.Sprintf("keyed with audit key %s, not the store's (%s)", rec.ChainKey, c.opts.Key.ID)
	}
	c.report.KeyID = rec.ChainKey
	intact, checked := checkHash(rec, body, c.opts.Key)
	if !checked {
		c.report.Unchecked++
		return ""
	}
	if !intact {
		return "record was altered, or written without the audit key: its HMAC does not match its contents"
	}
	return ""
}

// note takes in what a record says about the log: prunes, gaps, and
// whether it is the head recorded in the store.
func (c *chain) note(rec Record) string {
	switch rec.Action {
	case ActionAuditPrune:
		var d struct {
			KeptFrom uint64 `json:"kept_from_seq"`
		}
		if json.Unmarshal(rec.Details, &d) == nil && d.KeptFrom <= rec.Seq {
			c.keptFrom = max(c.keptFrom, d.KeptFrom)
		}
	case ActionAuditGap:
		c.report.Gaps++
		c.report.GapSeq = rec.Seq
	}
	if h := c.opts.Head; h != nil && h.Seq == rec.Seq {
		if h.Hash != rec.Hash {
			return fmt.Sprintf("the head recorded in the store at this seq has hash %s, the log's record %s: the record was replaced", h.Hash, rec.Hash)
		}
		c.headPassed = true
	}
	return ""
}

// finish checks what only the whole walk can tell: where the chain starts,
// and that it reaches the head recorded in the store.
func (c *chain) finish() error {
	r := &c.report
	if r.Records > 0 && r.FirstSeq != 1 {
		if c.keptFrom < r.FirstSeq {
			c.first.Problem = fmt.Sprintf("the chain starts at seq %d: %s missing (deleted lines or files; no audit.prune record accounts for them)", r.FirstSeq, seqRange(1, r.FirstSeq-1))
			return c.first
		}
		r.PrunedBefore = r.FirstSeq
	}
	h := c.opts.Head
	if h == nil || h.Seq == 0 {
		return nil
	}
	switch {
	case r.Records == 0 || r.LastSeq < h.Seq:
		return &VerifyError{File: h.File, Seq: h.Seq, Problem: fmt.Sprintf(
			"the store recorded the chain's head at seq %d, but the log ends at seq %d: %s missing (the tail was cut, or the log deleted)",
			h.Seq, r.LastSeq, seqRange(r.LastSeq+1, h.Seq))}
	case !c.headPassed:
		r.HeadPruned = true
	}
	return nil
}

// link checks that rec follows the last record seen and returns the problem
// if it does not.
func (c *chain) link(cf chainFile, line int, rec Record) string {
	last := c.report.LastSeq
	want := last + 1
	switch {
	case line == 1 && !cf.active() && rec.Seq != cf.firstSeq:
		return fmt.Sprintf("the file's name says it starts at seq %d, but it starts at seq %d (file renamed?)", cf.firstSeq, rec.Seq)
	case c.report.Records == 0 && rec.Seq == 1 && rec.Prev != "":
		return "seq 1 names a previous record (records before it were removed and the chain rewritten)"
	case c.report.Records == 0:
		return "" // where the chain may start is checked at the end
	case rec.Seq > want && line == 1:
		return fmt.Sprintf("seq %d follows seq %d at the end of the previous file: %s missing (a deleted file, or lines cut from the previous file's end)", rec.Seq, last, seqRange(want, rec.Seq-1))
	case rec.Seq > want:
		return fmt.Sprintf("seq %d follows seq %d: %s missing here (deleted, or moved elsewhere)", rec.Seq, last, seqRange(want, rec.Seq-1))
	case rec.Seq < want:
		return fmt.Sprintf("seq %d follows seq %d: out of order (line inserted, duplicated or moved)", rec.Seq, last)
	case rec.Prev != c.report.LastHash:
		return fmt.Sprintf("prev does not match the hash of seq %d (record inserted or replaced)", last)
	}
	return ""
}

func seqRange(from, to uint64) string {
	if from == to {
		return fmt.Sprintf("record %d is", from)
	}
	return fmt.Sprintf("records %d..%d are", from, to)
}
