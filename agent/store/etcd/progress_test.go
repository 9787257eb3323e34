package etcd

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/agent/store"
)

// TestProgressBarrierFollowsEveryEarlierWrite: Progress returns a revision
// at or past every write acknowledged before it, and the watcher gets an
// EventProgress only after every change up to it. Writes outside the
// prefix move the cluster's revision without any event here: the barrier
// must still come (a node that compared revisions of its own events with
// the cluster's would never call itself current).
func TestProgressBarrierFollowsEveryEarlierWrite(t *testing.T) {
	prefix := freshPrefix()
	a := openTest(t, Config{Prefix: prefix})
	b := openTest(t, Config{Prefix: prefix})
	raw := rawClient(t)
	ctx := t.Context()
	events, err := a.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := range n {
		if err := b.PutRevocation(ctx, revocation(fmt.Sprintf("rv_%d", i))); err != nil {
			t.Fatal(err)
		}
		if _, err := raw.Put(ctx, "/elsewhere/x", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	last, err := raw.Get(ctx, "/elsewhere/x")
	if err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rev, err := a.Progress(pctx)
	if err != nil {
		t.Fatalf("Progress: %v", err)
	}
	if rev < last.Header.Revision {
		t.Errorf("Progress = %d, below a write acknowledged before it (%d)", rev, last.Header.Revision)
	}
	seen := 0
	for {
		select {
		case ev := <-events:
			if ev.Kind == store.EventRevocation {
				seen++
				continue
			}
			if ev.Kind != store.EventProgress {
				t.Fatalf("unexpected event %+v", ev)
			}
			if ev.Revision < rev {
				t.Errorf("barrier at %d, want at least %d", ev.Revision, rev)
			}
			if seen != n {
				t.Errorf("barrier after %d of the %d earlier revocations", seen, n)
			}
			return
		case <-time.After(10 * time.Second):
			t.Fatalf("no barrier after %d events", seen)
		}
	}
}

// TestProgressFailsWhenClosed: a closed store is never current.
func TestProgressFailsWhenClosed(t *testing.T) {
	s := openTest(t, Config{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Progress(t.Context()); err == nil {
		t.Error("Progress on a closed store succeeded")
	}
}
