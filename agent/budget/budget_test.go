package budget

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestCapHoldsUnderConcurrentRollover attacks the old compare-and-swap
// budget: many goroutines take just as the second turns, after a quiet
// second. With the rollover and the count updated apart, the goroutine that
// won the rollover could reset the count after others had already spent
// the new second's budget, letting up to twice the cap through. Each
// second here is a phase of its own (the test clock moves between phases
// only); the flood of each phase must get exactly the cap.
func TestCapHoldsUnderConcurrentRollover(t *testing.T) {
	const max, workers, perWorker = 10, 16, 50
	var clock atomic.Int64
	b := NewPerSecond(max, func() time.Time { return time.Unix(clock.Load(), 0) })
	for sec := int64(1); sec <= 200; sec++ {
		clock.Store(sec)
		if sec%2 == 1 {
			b.Take() // a quiet second: the count is low when the next turns
			continue
		}
		var passed atomic.Int64
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for range perWorker {
					if b.Take() {
						passed.Add(1)
					}
				}
			}()
		}
		close(start)
		wg.Wait()
		if passed.Load() != max {
			t.Fatalf("second %d let %d events through, cap is %d", sec, passed.Load(), max)
		}
	}
}

func TestOverCountsRefusals(t *testing.T) {
	now := time.Unix(1_900_000_000, 0)
	b := NewPerSecond(3, func() time.Time { return now })
	for range 10 {
		b.Take()
	}
	if got := b.Over(); got != 7 {
		t.Fatalf("Over = %d, want 7", got)
	}
	if got := b.Over(); got != 0 {
		t.Fatalf("Over after reset = %d, want 0", got)
	}
	now = now.Add(time.Second)
	if !b.Take() {
		t.Fatal("a new second has no budget")
	}
}

// TestExactCapPerSecond: with a fixed clock exactly max events pass, however
// many goroutines try.
func TestExactCapPerSecond(t *testing.T) {
	now := time.Unix(1_900_000_000, 0)
	b := NewPerSecond(100, func() time.Time { return now })
	var passed atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				if b.Take() {
					passed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if passed.Load() != 100 || b.Over() != 7900 {
		t.Fatalf("%d passed, want 100", passed.Load())
	}
}
