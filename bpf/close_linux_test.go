//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpf

import (
	"errors"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// TestCloseReleasesEverything attaches a Sentry everywhere it can attach,
// closes it, and checks by ID that none of its programs, maps or links is
// left in the kernel.
func TestCloseReleasesEverything(t *testing.T) {
	s := loadSentry(t, Config{}) // Close twice is harmless
	ns := newNetns(t)
	if err := ns.do(func() error {
		if err := s.AttachTCX("lo", Ingress); err != nil {
			return err
		}
		return s.AttachTCX("lo", Egress)
	}); err != nil {
		t.Fatal(err)
	}

	var progIDs []ebpf.ProgramID
	maps := make(map[ebpf.MapID]bool)
	for _, p := range []*ebpf.Program{s.objs.TcxIngress, s.objs.TcxEgress, s.objs.CgroupIngress} {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		progIDs = append(progIDs, id)
		ids, _ := info.MapIDs() // includes .rodata and .bss
		for _, m := range ids {
			maps[m] = true
		}
	}
	var linkIDs []link.ID
	for _, l := range s.links {
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		linkIDs = append(linkIDs, info.ID)
	}
	if len(progIDs) != 3 || len(maps) < 5 || len(linkIDs) != 2 {
		t.Fatalf("found %d programs, %d maps, %d links", len(progIDs), len(maps), len(linkIDs))
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Programs and links go at once; maps when the last program that uses
	// them is freed, which the kernel does after an RCU grace period.
	// s stays reachable to the end: otherwise the finalizers of leaked file
	// descriptors could free what Close forgot and hide the leak.
	defer runtime.KeepAlive(s)
	deadline := time.Now().Add(5 * time.Second)
	for {
		var left []string
		for _, id := range progIDs {
			if p, err := ebpf.NewProgramFromID(id); err == nil {
				p.Close()
				left = append(left, "program "+strconv.FormatUint(uint64(id), 10))
			} else if !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
		}
		for id := range maps {
			if m, err := ebpf.NewMapFromID(id); err == nil {
				m.Close()
				left = append(left, "map "+strconv.FormatUint(uint64(id), 10))
			} else if !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
		}
		for _, id := range linkIDs {
			if l, err := link.NewFromID(id); err == nil {
				l.Close()
				left = append(left, "link "+strconv.FormatUint(uint64(id), 10))
			} else if !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still in the kernel after Close: %v", left)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
