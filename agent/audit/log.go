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
	"slices"
	"sync"
	"time"
)

// Size defaults for Config fields left zero.
const (
	// DefaultMaxFileBytes is the file size at which the log rotates.
	DefaultMaxFileBytes = 64 << 20
	// DefaultMaxTotalBytes is the size budget of the whole log.
	DefaultMaxTotalBytes = 1 << 30
	// DefaultReserveBytes caps the default free-space reserve.
	DefaultReserveBytes = 64 << 20
)

var (
	// ErrClosed is returned by Append after Close.
	ErrClosed = errors.New("audit: log is closed")
	// ErrReserve is returned by Append for a record that would eat into the
	// free space kept for the rest of the filesystem (Config.ReserveBytes).
	ErrReserve = errors.New("audit: the filesystem is nearly full; record refused to keep space for the store")
)

// Config configures a Log.
type Config struct {
	// Dir holds the log's files; it is created (mode 0700) if missing.
	Dir string
	// MaxFileBytes bounds a file: a record that would take the active file
	// past it goes into a new one. Zero means DefaultMaxFileBytes.
	MaxFileBytes int64
	// MaxTotalBytes is the log's size budget: the bytes of every file,
	// rotated and active. When a rotation takes the log past it, the
	// oldest rotated files are removed, and an audit.prune record, chained
	// like any other, says which records went. Zero means
	// DefaultMaxTotalBytes. A budget under four files lowers MaxFileBytes
	// to a quarter of it.
	MaxTotalBytes int64
	// ReserveBytes is the free space Append leaves on the filesystem for
	// everything else on it (the store above all): a record that would
	// take free space below it is refused and counted, not written. Zero
	// means a tenth of the filesystem, at most DefaultReserveBytes; a
	// negative value turns the check off.
	ReserveBytes int64
	// Key, when set, keys the chain: each record's hash is an HMAC-SHA256
	// under it, and the record names the key. Without it records are
	// chained with plain SHA-256, which anyone can recompute.
	Key *Key
	// Now stamps records; nil means time.Now.
	Now func() time.Time
	// Logger reports recovery from a crash; nil means slog.Default().
	Logger *slog.Logger
}

// Log appends records to the chain in Config.Dir. One process at a time may
// hold a directory open. A Log is safe for concurrent use.
type Log struct {
	dir           string
	maxFileBytes  int64
	maxTotalBytes int64
	reserveBytes  int64
	key           *Key
	now           func() time.Time
	logger        *slog.Logger
	// dirFile holds the directory's lock and is synced to make file
	// creation and rotation durable.
	dirFile *os.File

	// mu orders records: it guards the chain's state and the writes.
	mu       sync.Mutex
	f        *os.File
	size     int64
	firstSeq uint64        // seq of the active file's first record; 0 while it is empty
	seq      uint64        // seq of the last record written
	prev     string        // hash of the last record written
	unsynced []Record      // written but not yet known to be durable, in seq order
	retired  []*os.File    // rotated-out files that a flush may still be syncing
	history  []historyFile // the rotated files, oldest first
	// failed is set once the file's state is unknown (a failed fsync, a
	// half-done rotation); appending more could fork or hide records, so
	// every later Append returns it until the log is reopened.
	failed error
	closed bool

	// syncMu is held by the one Append that is flushing for everyone: it
	// syncs every record written so far, so concurrent Appends share an
	// fdatasync instead of queueing for one each (group commit).
	syncMu      sync.Mutex
	durable     uint64 // seq up to which records are on disk; guarded by syncMu
	durableHash string // hash of that record; guarded by syncMu

	counters
	stream
}

// historyFile is a rotated file the size budget may remove.
type historyFile struct {
	path     string
	firstSeq uint64
	size     int64
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
	if cfg.MaxTotalBytes < 0 {
		return nil, fmt.Errorf("audit: Config.MaxTotalBytes is %d; use a positive size, or 0 for the default", cfg.MaxTotalBytes)
	}
	if cfg.Key != nil && (cfg.Key.ID == "" || len(cfg.Key.Secret) < KeySize) {
		return nil, fmt.Errorf("audit: Config.Key needs an id and a secret of at least %d bytes", KeySize)
	}
	l := &Log{
		dir:           cfg.Dir,
		maxFileBytes:  cfg.MaxFileBytes,
		maxTotalBytes: cfg.MaxTotalBytes,
		reserveBytes:  cfg.ReserveBytes,
		key:           cfg.Key,
		now:           cfg.Now,
		logger:        cfg.Logger,
	}
	if l.maxFileBytes == 0 {
		l.maxFileBytes = DefaultMaxFileBytes
	}
	if l.maxTotalBytes == 0 {
		l.maxTotalBytes = DefaultMaxTotalBytes
	}
	l.maxFileBytes = min(l.maxFileBytes, max(l.maxTotalBytes/4, 1))
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
		err = l.loadHistory()
	}
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

// loadHistory lists the rotated files and their sizes for the size budget.
func (l *Log) loadHistory() error {
	files, err := chainFiles(l.dir)
	if err != nil {
		return err
	}
	l.history = l.history[:0]
	for _, cf := range files {
		if cf.active() {
			continue
		}
		info, err := os.Stat(cf.path)
		if err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		l.history = append(l.history, historyFile{path: cf.path, firstSeq: cf.firstSeq, size: info.Size()})
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
	r, body, err := parseLine(line)
	if err == nil {
		switch intact, checked := checkHash(r, body, l.key); {
		case !checked:
			err = fmt.Errorf("it is keyed with audit key %q, not this store's; move the audit directory aside to start a new chain", r.ChainKey)
		case !intact:
			err = errors.New("its hash does not match its contents")
		}
	}
	if err != nil {
		return fmt.Errorf("audit: last record of %s is damaged (%v); run `tokenwarden audit verify %s` and move the damaged file aside before restarting", path, err, l.dir)
	}
	l.seq, l.prev, l.durable, l.durableHash = r.Seq, r.Hash, r.Seq, r.Hash
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
		l.failedAppends.Add(1)
		return Record{}, errors.New("audit: record has no action")
	}
	if r.Actor == "" {
		l.failedAppends.Add(1)
		return Record{}, fmt.Errorf("audit: %s record has no actor; use the admin token's jti or %q", r.Action, ActorSystem)
	}
	r.Details = bytes.Clone(r.Details) // the caller may reuse its buffer
	r, err := l.write(r)
	if err == nil {
		err = l.flush(r.Seq)
	}
	if err != nil {
		if !errors.Is(err, ErrReserve) {
			l.failedAppends.Add(1)
		}
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
	b := bound(&r)
	l.truncated.Add(uint64(b.truncated))
	l.redacted.Add(uint64(b.redacted))
	line, err := l.encodeNext(&r)
	if err != nil {
		return Record{}, err
	}
	if l.size > 0 && l.size+int64(len(line)) > l.maxFileBytes {
		if err := l.rotate(); err != nil {
			return Record{}, err
		}
		pruned, err := l.prune()
		if err != nil {
			return Record{}, err
		}
		if pruned {
			// The prune record took r's place in the chain.
			if line, err = l.encodeNext(&r); err != nil {
				return Record{}, err
			}
		}
	}
	if err := l.writeLine(r, line); err != nil {
		return Record{}, err
	}
	return r, nil
}

// encodeNext makes r the next record of the chain and returns its line,
// newline included. It is called with mu held.
func (l *Log) encodeNext(r *Record) ([]byte, error) {
	r.Seq = l.seq + 1
	r.Time = l.now().UTC()
	r.Prev = l.prev
	r.ChainKey = ""
	if l.key != nil {
		r.ChainKey = l.key.ID
	}
	line, err := encode(r, l.key)
	if err != nil {
		return nil, fmt.Errorf("audit: encode %s record: %w", r.Action, err)
	}
	// bound keeps records far below both limits and redacts tokens; these
	// checks are the last line should it ever miss one.
	if len(line) > MaxRecordBytes {
		return nil, ErrRecordTooLarge
	}
	if bytes.Contains(line, tokenMarker) {
		return nil, ErrTokenInRecord
	}
	return append(line, '\n'), nil
}

// writeLine appends r's encoded line to the active file and makes r the last
// record of the chain. It is called with mu held.
func (l *Log) writeLine(r Record, line []byte) error {
	if err := l.keepReserve(len(line)); err != nil {
		return err
	}
	if _, err := l.f.Write(line); err != nil {
		// Cut off any part of the line that made it, so the next record
		// starts on a line of its own.
		if terr := l.f.Truncate(l.size); terr != nil {
			l.failed = fmt.Errorf("audit: write failed (%v) and the partial record could not be removed (%v); reopen the log", err, terr)
			return l.failed
		}
		return fmt.Errorf("audit: write %s: %w", l.f.Name(), err)
	}
	l.size += int64(len(line))
	if l.firstSeq == 0 {
		l.firstSeq = r.Seq
	}
	l.seq, l.prev = r.Seq, r.Hash
	l.unsynced = append(l.unsynced, r)
	return nil
}

// keepReserve refuses a write of n bytes that would leave less free space
// on the filesystem than the reserve.
func (l *Log) keepReserve(n int) error {
	if l.reserveBytes < 0 {
		return nil
	}
	free, total, ok := diskSpace(l.f)
	if !ok {
		return nil
	}
	reserve := uint64(l.reserveBytes)
	if reserve == 0 {
		reserve = min(total/10, DefaultReserveBytes)
	}
	if free < reserve+uint64(n) {
		l.refusedReserve.Add(1)
		return ErrReserve
	}
	return nil
}

// prune removes the oldest rotated files while the log, with room for the
// new active file to fill, is over its budget. Before any file goes it
// writes and syncs an audit.prune record naming the first seq kept, so
// Verify can tell a pruned start from a deleted one. It is called with mu
// held, just after a rotation.
func (l *Log) prune() (bool, error) {
	var total int64
	for _, h := range l.history {
		total += h.size
	}
	n := 0
	for n < len(l.history) && total+l.maxFileBytes > l.maxTotalBytes {
		total -= l.history[n].size
		n++
	}
	if n == 0 {
		return false, nil
	}
	gone := l.history[:n]
	keptFrom := l.seq + 1 // the prune record itself, when every file goes
	if n < len(l.history) {
		keptFrom = l.history[n].firstSeq
	}
	var bytesGone int64
	for _, h := range gone {
		bytesGone += h.size
	}
	pr := Record{Action: ActionAuditPrune, Actor: ActorSystem, Count: keptFrom - gone[0].firstSeq,
		Details: Details(map[string]any{"kept_from_seq": keptFrom, "removed_from_seq": gone[0].firstSeq, "files": n, "bytes": bytesGone, "budget_bytes": l.maxTotalBytes})}
	line, err := l.encodeNext(&pr)
	if err == nil {
		err = l.writeLine(pr, line)
	}
	if err != nil {
		// Keep everything: the log runs over budget rather than lose
		// records without saying so.
		l.logger.Error("audit: over its size budget, but the prune record could not be written; keeping every file", "err", err)
		return false, nil
	}
	if err := fdatasync(l.f); err != nil {
		l.failed = fmt.Errorf("audit: prune: sync %s: %w; reopen the log", l.f.Name(), err)
		return true, l.failed
	}
	for _, h := range gone {
		if err := os.Remove(h.path); err != nil {
			l.logger.Error("audit: remove a rotated file past the size budget", "file", h.path, "err", err)
		}
	}
	l.dirFile.Sync()
	l.history = slices.Delete(l.history, 0, n)
	l.filesRemoved.Add(uint64(n))
	l.logger.Warn("audit: removed the oldest files to stay within the size budget",
		"files", n, "bytes", bytesGone, "kept_from_seq", keptFrom, "budget_bytes", l.maxTotalBytes)
	return true, nil
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
	f, upTo, upToHash, batch, retired := l.f, l.seq, l.prev, l.unsynced, l.retired
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
	l.durable, l.durableHash = upTo, upToHash
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
	l.history = append(l.history, historyFile{path: rotated, firstSeq: l.firstSeq, size: l.size})
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
			l.durable, l.durableHash = l.seq, l.prev
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
