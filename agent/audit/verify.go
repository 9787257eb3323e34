package audit

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
)

// Report summarises a verified log.
type Report struct {
	Files    int
	Records  uint64
	FirstSeq uint64
	LastSeq  uint64
	// LastHash is the head of the chain. The chain proves the order and
	// integrity of what precedes it, not that nothing was cut from the end:
	// compare it with a copy kept elsewhere to prove that.
	LastHash string
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
// hash matches its contents, that it names the previous record's hash, and
// that seq goes up by exactly one from 1. The first break is returned as a
// *VerifyError, with the Report of the intact records before it.
//
// Verify may run while the agent appends. A rotation during the walk would
// look like a missing file, so Verify then walks again. A record being
// written at that moment shows as an incomplete final line: verify again.
func Verify(dir string) (Report, error) {
	for attempt := 1; ; attempt++ {
		files, err := chainFiles(dir)
		if err != nil {
			return Report{}, err
		}
		report, err := verifyFiles(files)
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

func verifyFiles(files []chainFile) (Report, error) {
	var c chain
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
	return c.report, nil
}

// chain carries the state of a walk from one file to the next.
type chain struct {
	report Report
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
		rec, intact, err := parseLine(line)
		if err != nil {
			return broken(0, "malformed record: %v", err)
		}
		if !intact {
			return broken(rec.Seq, "record was altered: its hash does not match its contents")
		}
		if problem := c.link(cf, lr.line, rec); problem != "" {
			return broken(rec.Seq, "%s", problem)
		}
		if c.report.Records == 0 {
			c.report.FirstSeq = rec.Seq
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

// link checks that rec follows the last record seen and returns the problem
// if it does not.
func (c *chain) link(cf chainFile, line int, rec Record) string {
	last := c.report.LastSeq
	want := last + 1
	switch {
	case line == 1 && !cf.active() && rec.Seq != cf.firstSeq:
		return fmt.Sprintf("the file's name says it starts at seq %d, but it starts at seq %d (file renamed?)", cf.firstSeq, rec.Seq)
	case c.report.Records == 0 && rec.Seq != 1:
		return fmt.Sprintf("the chain starts at seq %d: %s missing (deleted lines or files)", rec.Seq, seqRange(1, rec.Seq-1))
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
