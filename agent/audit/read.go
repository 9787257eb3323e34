package audit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

const (
	// activeName is the file Append writes to.
	activeName = "audit.log"
	// Rotated files are named audit-<seq of their first record>.log, the seq
	// zero-padded to the 20 digits of the largest uint64, so that listing a
	// directory (which sorts by name) gives chain order.
	rotatedPrefix = "audit-"
	rotatedSuffix = ".log"
	seqDigits     = 20
)

func rotatedName(firstSeq uint64) string {
	return fmt.Sprintf("%s%0*d%s", rotatedPrefix, seqDigits, firstSeq, rotatedSuffix)
}

// chainFile is one file of the log.
type chainFile struct {
	path     string
	firstSeq uint64 // from a rotated file's name; 0 for the active file
}

func (cf chainFile) active() bool { return cf.firstSeq == 0 }

// chainFiles lists dir's log files in chain order: the rotated files, then
// the active file if there is one. Other files in dir are ignored.
func chainFiles(dir string) ([]chainFile, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: list %s: %w", dir, err)
	}
	var files []chainFile
	hasActive := false
	for _, e := range entries { // sorted by name, hence by seq
		name := e.Name()
		if !e.Type().IsRegular() {
			continue
		}
		if name == activeName {
			hasActive = true
			continue
		}
		digits, ok := strings.CutPrefix(name, rotatedPrefix)
		digits, ok2 := strings.CutSuffix(digits, rotatedSuffix)
		if !ok || !ok2 || len(digits) != seqDigits {
			continue
		}
		seq, err := strconv.ParseUint(digits, 10, 64)
		if err != nil || seq == 0 {
			continue
		}
		files = append(files, chainFile{path: filepath.Join(dir, name), firstSeq: seq})
	}
	if hasActive {
		files = append(files, chainFile{path: filepath.Join(dir, activeName)})
	}
	return files, nil
}

// lineReader reads lines of at most MaxRecordBytes, holding no more than one
// line in memory.
type lineReader struct {
	br   *bufio.Reader
	buf  []byte
	line int // number of the line last returned, from 1
}

func newLineReader(r io.Reader) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, 64<<10)}
}

// next returns the next line without its newline, valid until the following
// call. complete is false for a final line that has no newline. At the end
// of input it returns io.EOF.
func (lr *lineReader) next() (line []byte, complete bool, err error) {
	lr.buf = lr.buf[:0]
	for {
		chunk, err := lr.br.ReadSlice('\n')
		switch {
		case err == nil:
			line = chunk[:len(chunk)-1]
			if len(lr.buf) > 0 {
				lr.buf = append(lr.buf, line...)
				line = lr.buf
			}
			lr.line++
			if len(line) > MaxRecordBytes {
				return nil, false, ErrLineTooLong
			}
			return line, true, nil
		case errors.Is(err, bufio.ErrBufferFull):
			if len(lr.buf)+len(chunk) > MaxRecordBytes {
				lr.line++
				return nil, false, ErrLineTooLong
			}
			lr.buf = append(lr.buf, chunk...)
		case errors.Is(err, io.EOF):
			lr.buf = append(lr.buf, chunk...)
			if len(lr.buf) == 0 {
				return nil, false, io.EOF
			}
			lr.line++
			if len(lr.buf) > MaxRecordBytes {
				return nil, false, ErrLineTooLong
			}
			return lr.buf, false, nil
		default:
			return nil, false, err
		}
	}
}

// readFile calls fn for each record of one file. A final line without a
// newline in the active file is skipped: it is an append in progress or a
// torn write from a crash, never an acknowledged record.
func readFile(cf chainFile, fn func(Record) error) error {
	f, err := os.Open(cf.path)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	lr := newLineReader(f)
	for {
		line, complete, err := lr.next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("audit: read %s:%d: %w", cf.path, lr.line, err)
		}
		if !complete {
			if cf.active() {
				return nil
			}
			return fmt.Errorf("audit: read %s:%d: final line is incomplete", cf.path, lr.line)
		}
		r, _, err := parseLine(line)
		if err != nil {
			return fmt.Errorf("audit: read %s:%d: malformed record: %w", cf.path, lr.line, err)
		}
		// What Append writes is bounded already; a record written before
		// fields were bounded is bounded as it is read, so one huge line
		// costs a reader one line's worth of memory, not a copy per
		// record returned.
		bound(&r)
		if err := fn(r); err != nil {
			return err
		}
	}
}

// Read calls fn with each record in dir that matches filter, oldest first,
// across rotated files. It returns the first error fn returns, unchanged, so
// a caller can stop early with a sentinel of its own. Read checks that
// records parse, not that the chain holds: that is Verify's job.
func Read(dir string, filter Filter, fn func(Record) error) error {
	files, err := chainFiles(dir)
	if err != nil {
		return err
	}
	for _, cf := range files {
		err := readFile(cf, func(r Record) error {
			if !filter.Match(r) {
				return nil
			}
			return fn(r)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// MaxTailBytes bounds what one Tail returns, counted as the records'
// encoded size: a caller asking for many records of the largest size gets
// the newest that fit.
const MaxTailBytes = 8 << 20

// Tail returns the last n records in dir that match filter, oldest first,
// at most MaxTailBytes of them. It reads files newest first and stops as
// soon as it has n, so its cost follows how far back the matches are, not
// the size of the whole log.
func Tail(dir string, n int, filter Filter) ([]Record, error) {
	if n <= 0 {
		return nil, nil
	}
	files, err := chainFiles(dir)
	if err != nil {
		return nil, err
	}
	var out []Record
	var outBytes int
	for i := len(files) - 1; i >= 0 && len(out) < n && outBytes < MaxTailBytes; i-- {
		want, budget := n-len(out), MaxTailBytes-outBytes
		var latest []Record // the file's last matches: at most want, within budget
		var sizes []int
		size, full := 0, false
		err := readFile(files[i], func(r Record) error {
			if !filter.Match(r) {
				return nil
			}
			rs := recordSize(&r)
			latest, sizes = append(latest, r), append(sizes, rs)
			size += rs
			for len(latest) > want || size > budget {
				full = full || size > budget
				size -= sizes[0]
				latest, sizes = latest[1:], sizes[1:]
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		out = append(latest, out...)
		outBytes += size
		if full {
			break // an older match was left out: going on would leave a hole
		}
	}
	return out, nil
}

// recordSize approximates r's encoded size.
func recordSize(r *Record) int {
	return 256 + len(r.Action) + len(r.Actor) + len(r.TokenID) + len(r.Subject) + len(r.Tenant) +
		len(r.Reason) + len(r.Source) + len(r.Route) + len(r.Details) + len(r.ChainKey) + len(r.Prev) + len(r.Hash)
}
