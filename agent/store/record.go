package store

import (
	"context"
	"encoding/json"
	"fmt"
)

// MaxRecordSize bounds one stored JSON value in every backend. Real records
// are a few hundred bytes; the bound keeps a damaged or foreign value from
// making a read allocate without limit.
const MaxRecordSize = 64 << 10

// EncodeRecord is the JSON form a backend stores for v, refused when it is
// over MaxRecordSize.
func EncodeRecord(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxRecordSize {
		return nil, fmt.Errorf("record is %d bytes, over the %d-byte limit", len(b), MaxRecordSize)
	}
	return b, nil
}

// DecodeRecord reverses EncodeRecord. A value over MaxRecordSize is refused
// before it is parsed: tokenwarden never writes one.
func DecodeRecord[T any](b []byte) (T, error) {
	var v T
	if len(b) > MaxRecordSize {
		return v, fmt.Errorf("stored record is %d bytes, over the %d-byte limit: the data may be corrupt, or was not written by tokenwarden", len(b), MaxRecordSize)
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("decode stored record: %w", err)
	}
	return v, nil
}

// Usable is the check every backend call starts with: ctx's error if it has
// ended, else ErrClosed if the store is closed.
func Usable(ctx context.Context, closed bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if closed {
		return ErrClosed
	}
	return nil
}
