package audit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// DefaultMaxFileBytes is the file size at which the log rotates when
// Config.MaxFileBytes is zero.
const DefaultMaxFileBytes = 64 << 20

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("audit: log is closed")

// Config configures a Log.
type Config struct {
	// Dir holds the log's files; it is created (mode 0700) if missing.
	Dir string
	// MaxFileBytes bounds a file: a record that would take the active file
	// past it goes into a new one. Zero means DefaultMaxFileBytes.
	MaxFileBytes int64
	// Now stamps records; nil means time.Now.
	Now func() time.Time
	// Logger reports recovery from a crash; nil means slog.Default().
	Logger *slog.Logger
}

// Log appends records to the chain in Config.Dir. One process at a time may
// hold a directory open. A Log is safe for concurrent use.
type Log struct {
	dir          string
	maxFileBytes int64
	now          func() time.Time
	logger       *slog.Logger
	// dirFile holds the directory's lock and is synced to make file
	// creation and rotation durable.
	dirFile *os.File

	// mu orders records: it guards the chain's state and the writes.
	mu       sync.Mutex
	f        *os.File
	size     int64
	firstSeq uint64     // seq of the active file's first record; 0 while it is empty
	seq      uint64     // seq of the last record written
	prev     string     // hash of the last record written
	unsynced []Record   // written but not yet known to be durable, in seq order
	retired  []*os.File // rotated-out files that a flush may still be syncing
	// failed is set once the file's state is unknown (a failed fsync, a
	// half-done rotation); appending more could fork or hide records, so
	// every later Append returns it until the log is reopened.
	failed error
	closed bool

	// syncMu is held by the one Append that is flushing for everyone: it
	// syncs every record written so far, so concurrent Appends share an
	// fdatasync instead of queueing for one each (group commit).
	syncMu  sync.Mutex
	durable uint64 // seq up to which records are on disk; guarded by syncMu

	stream
}

// Open opens the log in cfg.Dir and continues its chain: the next record
// follows the last one written, across restarts and rotated files. A final
// line cut short by a crash is removed first; it was never acknowledged, as
// Append returns only once the whole line is durable.
func Open(cfg Config) (*Log, error) {
	if cfg.Dir == "" {
		return nil, errors.New("audit: Config.Dir is empty; set it to the directory that holds the audit log")
	}
	if cfg.MaxFileBytes < 0 {
		return nil, fmt.Errorf("audit: Config.MaxFileBytes is %d; use a positive size, or 0 for the default", cfg.MaxFileBytes)
	}
	l := &Log{
		dir:          cfg.Dir,
		maxFileBytes: cfg.MaxFileBytes,
		now:          cfg.Now,
		logger:       cfg.Logger,
	}
	if l.maxFileBytes == 0 {
		l.maxFileBytes = DefaultMaxFileBytes
	}
	if l.now == nil {
		l.now = time.Now
	}
	if l.logger == nil {
		l.logger = slog.Default()
	}
	if err := os.MkdirAll(l.dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	dirFile, err := os.Open(l.dir)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	if err := lockDir(dirFile); err != nil {
		dirFile.Close()
		return nil, fmt.Errorf("audit: lock %s: %w; is another agent using this directory?", l.dir, err)
	}
	l.dirFile = dirFile
	if err := l.resume(); err != nil {
		dirFile.Close()
		return nil, err
	}
	return l, nil
}

// resume opens the active file, removes a torn final line, and takes seq and
// prev from the last record of the chain.
func (l *Log) resume() error {
	path := filepath.Join(l.dir, activeName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	err = l.resumeFrom(f, path)
	if err == nil {
		err = l.dirFile.Sync() // the active file may be new
	}
	if err != nil {
		f.Close()
		return err
	}
	l.f = f
	return nil
}

func (l *Log) resumeFrom(f *os.File, path string) error {
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	size := info.Size()
	last, keep, err := lastLine(f, size)
	if err != nil {
		return fmt.Errorf("audit: %s: %w; run `tokenwarden audit verify`", path, err)
	}
	if keep < size {
		if err := f.Truncate(keep); err != nil {
			return fmt.Errorf("audit: remove torn record: %w", err)
		}
		if err := fdatasync(f); err != nil {
			return fmt.Errorf("audit: remove torn record: %w", err)
		}
		l.logger.Warn("audit: removed a record cut short by a crash; it had not been acknowledged",
			"file", path, "bytes", size-keep)
	}
	l.size = keep
	if keep > 0 {
		first, err := firstRecord(io.NewSectionReader(f, 0, keep), path)
		if err != nil {
			return err
		}
		l.firstSeq = first.Seq
		return l.continueAfter(last, path)
	}
	// Rotation renames the active file before creating the next one; a
	// crash in between leaves no active records, and the chain goes on from
	// the newest rotated file.
	files, err := chainFiles(l.dir)
	if err != nil {
		return err
	}
	for i := len(files) - 1; i >= 0; i-- {
		if files[i].active() {
			continue
		}
		return l.continueAfterFile(files[i].path)
	}
	return nil
}

func (l *Log) continueAfterFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	last, keep, err := lastLine(f, info.Size())
	if err == nil && (keep != info.Size() || last == nil) {
		err = errors.New("rotated file does not end with a complete record")
	}
	if err != nil {
		return fmt.Errorf("audit: %s: %w; run `tokenwarden audit verify`", path, err)
	}
	return l.continueAfter(last, path)
}

// continueAfter makes the record in line the last of the chain. It must be
// intact: chaining onto a damaged record would vouch for it.
func (l *Log) continueAfter(line []byte, path string) error {
	r, intact, err := parseLine(line)
	if err == nil && !intact {
		err = errors.New("its hash does not match its contents")
	}
	if err != nil {
		return fmt.Errorf("audit: last record of %s is damaged (%v); run `tokenwarden audit verify %s` and move the damaged file aside before restarting", path, err, l.dir)
	}
	l.seq, l.prev, l.durable = r.Seq, r.Hash, r.Seq
	return nil
}

func firstRecord(r io.Reader, path string) (Record, error) {
	line, _, err := newLineReader(r).next()
	if err == nil {
		var rec Record
		if rec, _, err = parseLine(line); err == nil {
			return rec, nil
		}
	}
	return Record{}, fmt.Errorf("audit: first record of %s is unreadable (%v); run `tokenwarden audit verify`", path, err)
}

// lastLine finds the last complete line of a file of the given size. keep
// is the length that ends with that line's newline; anything after it is a
// torn write. It reads at most the two lines' worth of bytes that a torn
// tail and one whole record can span.
func lastLine(f io.ReaderAt, size int64) (line []byte, keep int64, err error) {
	window := min(size, 2*(MaxRecordBytes+1))
	buf := make([]byte, window)
	if _, err := f.ReadAt(buf, size-window); err != nil {
		return nil, 0, err
	}
	whole := window == size
	end := bytes.LastIndexByte(buf, '\n')
	if end < 0 {
		if !whole {
			return nil, 0, ErrLineTooLong
		}
		return nil, 0, nil
	}
	start := bytes.LastIndexByte(buf[:end], '\n') + 1
	if start == 0 && !whole {
		return nil, 0, ErrLineTooLong
	}
	return buf[start:end], size - window + int64(end) + 1, nil
}

// Append stamps r with the next seq, the time, and its place in the chain,
// writes it, and returns it once it is durable (fdatasync). The caller's
// Seq, Time, Prev and Hash are overwritten. Matching subscribers receive the
// record before Append returns.
//
// If Append fails the record was not acknowledged. After a failed sync it
// may still be on disk, so a reader can find a record whose Append failed;
// a log that shows an extra record is better than one that hides a lost one.
func (l *Log) Append(r Record) (Record, error) {
	if r.Action == "" {
		return Record{}, errors.New("audit: record has no action")
	}
	if r.Actor == "" {
		return Record{}, fmt.Errorf("audit: %s record has no actor; use the admin token's jti or %q", r.Action, ActorSystem)
	}
	r.Details = bytes.Clone(r.Details) // the caller may reuse its buffer
	r, err := l.write(r)
	if err != nil {
		return Record{}, err
	}
	if err := l.flush(r.Seq); err != nil {
		return Record{}, err
	}
	return r, nil
}

// write chains r onto the last record and writes its line, not yet synced.
func (l *Log) write(r Record) (Record, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return Record{}, ErrClosed
	}
	if l.failed != nil {
		return Record{}, l.failed
	}
	r.Seq = l.seq + 1
	r.Time = l.now().UTC()
	r.Prev = l.prev
	line, err := encode(&r)
	if err != nil {
		return Record{}, fmt.Errorf("audit: encode %s record: %w", r.Action, err)
	}
	if len(line) > MaxRecordBytes {
		return Record{}, ErrRecordTooLarge
	}
	if bytes.Contains(line, tokenMarker) {
		return Record{}, ErrTokenInRecord
	}
	line = append(line, '\n')
	if l.size > 0 && l.size+int64(len(line)) > l.maxFileBytes {
		if err := l.rotate(); err != nil {
			return Record{}, err
		}
	}
	if _, err := l.f.Write(line); err != nil {
		// Cut off any part of the line that made it, so the next record
		// starts on a line of its own.
		if terr := l.f.Truncate(l.size); terr != nil {
			l.failed = fmt.Errorf("audit: write failed (%v) and the partial record could not be removed (%v); reopen the log", err, terr)
			return Record{}, l.failed
		}
		return Record{}, fmt.Errorf("audit: write %s: %w", l.f.Name(), err)
	}
	l.size += int64(len(line))
	if l.firstSeq == 0 {
		l.firstSeq = r.Seq
	}
	l.seq, l.prev = r.Seq, r.Hash
	l.unsynced = append(l.unsynced, r)
	return r, nil
}

// flush returns once the record with seq is on disk, syncing it and every
// record written before and since, unless another Append already did.
func (l *Log) flush(seq uint64) error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	if l.durable >= seq {
		return nil
	}
	l.mu.Lock()
	if l.failed != nil || l.closed {
		defer l.mu.Unlock()
		if l.failed != nil {
			return l.failed
		}
		return ErrClosed
	}
	f, upTo, batch, retired := l.f, l.seq, l.unsynced, l.retired
	l.unsynced, l.retired = nil, nil
	l.mu.Unlock()

	err := fdatasync(f)
	for _, old := range retired {
		// rotate synced these; only a flush could still have been using them.
		old.Close()
	}
	if err != nil {
		// After a failed fsync the kernel may have dropped the dirty pages
		// and cleared the error, so a retry could succeed without the data
		// being on disk. Only reopening (which rereads the file) is safe.
		l.mu.Lock()
		defer l.mu.Unlock()
		l.failed = fmt.Errorf("audit: sync %s: %w; reopen the log", f.Name(), err)
		return l.failed
	}
	l.durable = upTo
	l.publish(batch)
	return nil
}

// rotate renames the full active file to its chain-ordered name and starts
// an empty one. It is called with mu held.
func (l *Log) rotate() error {
	// Open trusts a rotated file to end with a whole record, so it must be
	// on disk before it is named as history.
	if err := fdatasync(l.f); err != nil {
		l.failed = fmt.Errorf("audit: rotate: sync %s: %w; reopen the log", l.f.Name(), err)
		return l.failed
	}
	active := filepath.Join(l.dir, activeName)
	rotated := filepath.Join(l.dir, rotatedName(l.firstSeq))
	if _, err := os.Lstat(rotated); !errors.Is(err, fs.ErrNotExist) {
		if err == nil {
			err = errors.New("file exists; refusing to overwrite audit history")
		}
		return fmt.Errorf("audit: rotate to %s: %w", rotated, err)
	}
	if err := os.Rename(active, rotated); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	// From here on l.f is history; appending to it would misplace records.
	f, err := os.OpenFile(active, os.O_RDWR|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		l.failed = fmt.Errorf("audit: rotate: %w; reopen the log", err)
		return l.failed
	}
	if err := l.dirFile.Sync(); err != nil {
		f.Close()
		l.failed = fmt.Errorf("audit: rotate: sync %s: %w; reopen the log", l.dir, err)
		return l.failed
	}
	// A flush may be syncing the old file right now; it closes it when done.
	l.retired = append(l.retired, l.f)
	l.f, l.size, l.firstSeq = f, 0, 0
	return nil
}

// Close makes every written record durable, closes the log and every
// subscriber's channel, and releases the directory for another process.
func (l *Log) Close() error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	var errs []error
	if len(l.unsynced) > 0 && l.failed == nil {
		// An Append between write and flush is waiting for this sync.
		if err := fdatasync(l.f); err != nil {
			errs = append(errs, fmt.Errorf("audit: sync %s: %w", l.f.Name(), err))
		} else {
			l.durable = l.seq
			l.publish(l.unsynced)
		}
	}
	for _, f := range append(l.retired, l.f, l.dirFile) {
		errs = append(errs, f.Close())
	}
	l.mu.Unlock()
	l.closeSubscribers()
	return errors.Join(errs...)
}
