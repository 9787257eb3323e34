package kernel

import (
	"context"
	"testing"
)

func TestValidMode(t *testing.T) {
	for mode, ok := range map[string]bool{"": true, ModeAuto: true, ModeRequired: true, ModeOff: true, "on": false, "AUTO": false} {
		if err := ValidMode(mode); (err == nil) != ok {
			t.Errorf("ValidMode(%q) = %v", mode, err)
		}
	}
}

func TestLoadNeedsAnAttachPoint(t *testing.T) {
	if _, err := Load(Attach{}); err != ErrNothingToAttach {
		t.Fatalf("Load with nothing to attach: %v", err)
	}
}

// contextUntil is a context that ends when stop is closed.
func contextUntil(stop <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}
