package revoke

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/tokenwarden/tokenwarden/policy"
)

// JournalFile is the journal's name in the agent's data dir.
const JournalFile = "revocations.journal"

// Journal bounds: a frame holds one rule (store.EncodeRecord bounds a rule
// far below maxFrameBytes); a journal holding more than MaxPending rules the
// store has not taken refuses more, and one grown past compactBytes is
// rewritten with only the pending rules.
const (
	maxFrameBytes = 64 << 10
	MaxPending    = 10000
	compactBytes  = 4 << 20
)

// ErrJournalFull is returned when MaxPending rules are waiting for the store.
var ErrJournalFull = errors.New("revocation journal is full: the store has not taken the last rules; they are enforced on this node")

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// entry is one journal frame: a rule to store (Rule set) or the id of one
// the store has (Done).
type entry struct {
	Rule *policy.Revocation `json:"rule,omitempty"`
	Done string             `json:"done,omitempty"`
}

// Journal is the local, durable list of revocation rules this node enforces
// and the store has not yet taken. It is an append-only file of frames -
// 4 bytes length, 4 bytes CRC-32C of the payload, a JSON entry - each
// fsync'd before Add or Done returns. A torn or corrupt tail (a crash
// mid-write) ends the journal where the damage starts: every frame before it
// was acknowledged whole.
type Journal struct {
	mu      sync.Mutex
	path    string
	f       *os.File
	size    int64
	pending map[string]policy.Revocation
	order   []string // ids in the order they were added
}

// OpenJournal opens (creating, mode 0600) the journal at path and reads the
// rules still pending in it.
func OpenJournal(path string) (*Journal, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open revocation journal: %w", err)
	}
	j := &Journal{path: path, f: f, pending: map[string]policy.Revocation{}}
	b, err := io.ReadAll(io.LimitReader(f, 1<<30))
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("read revocation journal %s: %w", path, err)
	}
	good := j.replay(b)
	if good != int64(len(b)) {
		// Drop the torn tail so later frames are not written after garbage.
		if err := f.Truncate(good); err != nil {
			f.Close()
			return nil, fmt.Errorf("truncate revocation journal %s: %w", path, err)
		}
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("revocation journal %s: %w", path, err)
	}
	j.size = good
	return j, nil
}

// replay applies the frames of b and returns the length of its good prefix.
func (j *Journal) replay(b []byte) int64 {
	var off int64
	for {
		e, n, ok := decodeFrame(b[off:])
		if !ok {
			return off
		}
		off += int64(n)
		j.apply(e)
	}
}

func (j *Journal) apply(e entry) {
	switch {
	case e.Rule != nil && e.Rule.ID != "":
		if _, had := j.pending[e.Rule.ID]; !had {
			j.order = append(j.order, e.Rule.ID)
		}
		j.pending[e.Rule.ID] = *e.Rule
	case e.Done != "":
		delete(j.pending, e.Done)
	}
}

// decodeFrame reads one frame from the start of b; ok is false for an
// incomplete, oversized or corrupt frame.
func decodeFrame(b []byte) (e entry, n int, ok bool) {
	if len(b) < 8 {
		return entry{}, 0, false
	}
	size := binary.BigEndian.Uint32(b[0:4])
	sum := binary.BigEndian.Uint32(b[4:8])
	if size == 0 || size > maxFrameBytes || int(size) > len(b)-8 {
		return entry{}, 0, false
	}
	payload := b[8 : 8+size]
	if crc32.Checksum(payload, crcTable) != sum {
		return entry{}, 0, false
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return entry{}, 0, false
	}
	return e, 8 + int(size), true
}

func encodeFrame(e entry) ([]byte, error) {
	payload, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	if len(payload) > maxFrameBytes {
		return nil, fmt.Errorf("journal entry of %d bytes is over %d", len(payload), maxFrameBytes)
	}
	out := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint32(out[0:4], uint32(len(payload)))
	binary.BigEndian.PutUint32(out[4:8], crc32.Checksum(payload, crcTable))
	return append(out, payload...), nil
}

// Pending returns the rules not yet taken by the store, oldest first.
func (j *Journal) Pending() []policy.Revocation {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]policy.Revocation, 0, len(j.pending))
	for _, id := range j.order {
		if r, ok := j.pending[id]; ok {
			out = append(out, r)
		}
	}
	return out
}

// Len is the number of pending rules.
func (j *Journal) Len() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.pending)
}

// Add records r (which has its id) as pending; it is on disk when Add
// returns.
func (j *Journal) Add(r policy.Revocation) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, had := j.pending[r.ID]; !had && len(j.pending) >= MaxPending {
		return ErrJournalFull
	}
	return j.write(entry{Rule: &r})
}

// Done records that the store has rule id.
func (j *Journal) Done(id string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, had := j.pending[id]; !had {
		return nil
	}
	if err := j.write(entry{Done: id}); err != nil {
		return err
	}
	if j.size > compactBytes {
		return j.compact()
	}
	return nil
}

func (j *Journal) write(e entry) error {
	if j.f == nil {
		return errors.New("revocation journal is closed")
	}
	frame, err := encodeFrame(e)
	if err != nil {
		return err
	}
	if _, err := j.f.Write(frame); err != nil {
		return j.recover(fmt.Errorf("write revocation journal: %w", err))
	}
	if err := j.f.Sync(); err != nil {
		return j.recover(fmt.Errorf("sync revocation journal: %w", err))
	}
	j.size += int64(len(frame))
	j.apply(e)
	return nil
}

// recover cuts a partly written frame off, so the next one is not lost
// behind it.
func (j *Journal) recover(err error) error {
	_ = j.f.Truncate(j.size)
	_, _ = j.f.Seek(j.size, io.SeekStart)
	return err
}

// compact rewrites the journal with only the pending rules: a new file,
// fsync'd, renamed over the old one.
func (j *Journal) compact() error {
	var buf bytes.Buffer
	var order []string
	for _, id := range j.order {
		r, ok := j.pending[id]
		if !ok {
			continue
		}
		frame, err := encodeFrame(entry{Rule: &r})
		if err != nil {
			return err
		}
		buf.Write(frame)
		order = append(order, id)
	}
	tmp := j.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("compact revocation journal: %w", err)
	}
	if _, err = f.Write(buf.Bytes()); err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = os.Rename(tmp, j.path)
	}
	if err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("compact revocation journal: %w", err)
	}
	if d, derr := os.Open(filepath.Dir(j.path)); derr == nil {
		_ = d.Sync()
		d.Close()
	}
	j.f.Close()
	j.f, j.size, j.order = f, int64(buf.Len()), order
	return nil
}

// Close closes the file; pending rules stay in it for the next start.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return nil
	}
	err := j.f.Close()
	j.f = nil
	return err
}
