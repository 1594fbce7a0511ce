package runtime_test

import (
	"context"
	"errors"
	goruntime "runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/packhost/packhost/runtime"
)

// TestGuardStopsRunaways: guests that would hold an instance and a core past their
// deadline are stopped within the deadline + 10 ms with a typed error, and their instance
// is discarded. The best of three tries is judged, so one descheduling on a busy machine
// does not decide.
func TestGuardStopsRunaways(t *testing.T) {
	const timeout, slack = 50 * time.Millisecond, 10 * time.Millisecond
	e := newEngine(t)
	for _, tc := range []struct {
		pack string
		want error
	}{
		{"hostile/recursion", runtime.ErrTimeout},            // loop-free: no loop header ever runs
		{"hostile/loop", runtime.ErrTimeout},                 // a Go-built tight loop
		{"hostile/fill-recursion", runtime.ErrTimeout},       // memory.fill of 16 MiB from recursion
		{"hostile/deep-recursion", runtime.ErrResourceLimit}, // the call depth, before the deadline
	} {
		t.Run(tc.pack, func(t *testing.T) {
			rev := load(t, e, []revOpt{func(c *runtime.RevisionConfig) {
				c.Limits = runtime.Limits{Timeout: timeout, MemoryPages: 1024}
			}}, tc.pack)
			id := strings.TrimPrefix(tc.pack, "hostile/")
			best := time.Hour
			for range 3 {
				start := time.Now()
				_, err := rev.Handle(context.Background(), msg(`{}`))
				took := time.Since(start)
				if !errors.Is(err, tc.want) {
					t.Fatalf("got %v, want %v", err, tc.want)
				}
				if n := rev.Instances()[id]; n != 0 {
					t.Fatalf("%d instances left after the failure, want the failed one discarded", n)
				}
				best = min(best, took)
			}
			if tc.want == runtime.ErrTimeout && best > timeout+slack {
				t.Fatalf("the best of three runs ended after %v, past the deadline %v + %v", best, timeout, slack)
			}
		})
	}
}

// TestGuardBoundsTables: a table grown by 2^24 entries per activity stays at the engine's
// limit (table.grow fails inside the guest), and a table declared past it is refused at
// load.
func TestGuardBoundsTables(t *testing.T) {
	e := newEngine(t)
	rev := load(t, e, nil, "hostile/table-bomb")
	heap := func() uint64 {
		goruntime.GC()
		debug.FreeOSMemory()
		var ms goruntime.MemStats
		goruntime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	for range 3 {
		if _, err := rev.Handle(context.Background(), msg(`{}`)); err != nil {
			t.Fatalf("an activity whose table.grow failed inside the guest: %v", err)
		}
	}
	// Unguarded, each activity kept 128 MiB more.
	if grew := int64(heap()) - int64(before); grew > 16<<20 {
		t.Fatalf("three table bombs grew the host heap by %d MiB", grew>>20)
	}
	if _, err := tryLoad(e, nil, "hostile/big-table"); !errors.Is(err, runtime.ErrInvalidPack) || !strings.Contains(err.Error(), "elements") {
		t.Fatalf("a table declared with 2^27 elements: %v, want ErrInvalidPack naming the limit", err)
	}
}
