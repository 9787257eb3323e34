package usage

import (
	"fmt"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func newVec() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tokenwarden_test_token_requests_total",
		Help: "Requests per token (top tokens only).",
	}, []string{"token_id", "subject"})
}

// series reads every exported series of vec as "token_id/subject" -> value.
func series(t *testing.T, vec *prometheus.CounterVec) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(vec)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var id, sub string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "token_id":
					id = l.GetValue()
				case "subject":
					sub = l.GetValue()
				}
			}
			out[id+"/"+sub] = m.GetCounter().GetValue()
		}
	}
	return out
}

func TestTopNKeepsBusiestAndDeletesTheRest(t *testing.T) {
	vec := newVec()
	top := NewTopN(vec, 2)

	top.Add("a", "alice", 5)
	top.Add("b", "bob", 3)
	top.Add("c", "carol", 1)
	top.Flush()
	if got := series(t, vec); len(got) != 2 || got["a/alice"] != 5 || got["b/bob"] != 3 {
		t.Fatalf("after first flush: %v, want a/alice=5 b/bob=3", got)
	}

	// Next interval: c becomes the busiest, b is outranked and its series
	// goes. c's count of the first interval was never exported.
	top.Add("c", "carol", 10)
	top.Add("a", "alice", 1)
	top.Add("b", "bob", 1)
	top.Flush()
	if got := series(t, vec); len(got) != 2 || got["c/carol"] != 10 || got["a/alice"] != 6 {
		t.Fatalf("after second flush: %v, want c/carol=10 a/alice=6 (cumulative), b evicted", got)
	}

	// Idle tokens keep their series while there is room; an active one
	// takes the slot of an idle one.
	top.Flush()
	if got := series(t, vec); len(got) != 2 {
		t.Fatalf("after an idle interval: %v, want both series kept", got)
	}
	top.Add("d", "dave", 1)
	top.Flush()
	if got := series(t, vec); len(got) != 2 || got["d/dave"] != 1 {
		t.Fatalf("after d's interval: %v, want d/dave=1 and one idle series", got)
	}

	// Idle tallies are forgotten after a whole idle interval.
	top.Flush()
	if n := len(*top.seen.Load()) + len(top.fresh); n != 0 {
		t.Errorf("%d idle tallies kept, want 0", n)
	}
}

func TestTopNZeroExportsNothing(t *testing.T) {
	vec := newVec()
	top := NewTopN(vec, 0)
	top.Add("a", "alice", 1)
	top.Flush()
	if got := series(t, vec); len(got) != 0 {
		t.Fatalf("series = %v, want none", got)
	}
}

// Concurrent Adds racing Flushes (which retire idle tallies) lose no count.
func TestTopNConcurrentAddsAreNotLost(t *testing.T) {
	vec := newVec()
	top := NewTopN(vec, 100)
	const workers, perWorker = 8, 5000
	var wg sync.WaitGroup
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
				top.Flush()
			}
		}
	}()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				id := fmt.Sprintf("t%d", (w+i)%4)
				top.Add(id, "s", 1)
			}
		}()
	}
	wg.Wait()
	close(stop)
	top.Flush()
	var total float64
	for _, v := range series(t, vec) {
		total += v
	}
	if total != workers*perWorker {
		t.Fatalf("counted %v, want %d", total, workers*perWorker)
	}
}

func BenchmarkTopNAdd(b *testing.B) {
	top := NewTopN(newVec(), 10)
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = fmt.Sprintf("token%04d", i)
		top.Add(ids[i], "subject", 1)
	}
	top.Flush() // every token seen: the lock-free path
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			top.Add(ids[i%len(ids)], "subject", 1)
			i++
		}
	})
}
