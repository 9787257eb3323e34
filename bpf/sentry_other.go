//go:build !linux || !(386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpf

import "context"

// Sentry is the loaded kernel side. On this system it cannot be loaded:
// the programs are built for little-endian Linux only.
type Sentry struct{}

// Load fails with ErrUnsupported on this system.
func Load(Config) (*Sentry, error) { return nil, ErrUnsupported }

// Supported returns ErrUnsupported on this system.
func Supported() error { return ErrUnsupported }

// AttachTCX fails with ErrUnsupported on this system.
func (*Sentry) AttachTCX(string, Direction) error { return ErrUnsupported }

// AttachCgroup fails with ErrUnsupported on this system.
func (*Sentry) AttachCgroup(string) error { return ErrUnsupported }

// Revoke fails with ErrUnsupported on this system.
func (*Sentry) Revoke(uint64) error { return ErrUnsupported }

// Unrevoke fails with ErrUnsupported on this system.
func (*Sentry) Unrevoke(uint64) error { return ErrUnsupported }

// SetRevoked fails with ErrUnsupported on this system.
func (*Sentry) SetRevoked([]uint64) error { return ErrUnsupported }

// ReadCounts fails with ErrUnsupported on this system.
func (*Sentry) ReadCounts() ([]TokenCount, error) { return nil, ErrUnsupported }

// Stats fails with ErrUnsupported on this system.
func (*Sentry) Stats() (Stats, error) { return Stats{}, ErrUnsupported }

// ReadEvents fails with ErrUnsupported on this system.
func (*Sentry) ReadEvents(context.Context, func(DropEvent)) error { return ErrUnsupported }

// Close does nothing on this system.
func (*Sentry) Close() error { return nil }
