package dispatcher

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/packhost/packhost/runtime"
)

var t0 = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

func TestAnalysisWindows(t *testing.T) {
	r := NewRouter()
	const interval = 10 * time.Second
	// Not analyzed: nothing is counted.
	r.Observe("ns", "acme", "a", 200, time.Millisecond, t0)
	if w, _ := r.ClosedWindows("ns", "acme", t0.Add(time.Minute)); w != nil {
		t.Fatalf("counted without analysis: %+v", w)
	}
	r.Analyze("ns", "acme", interval, t0)
	r.Observe("ns", "acme", "a", 200, 3*time.Millisecond, t0.Add(time.Second))
	r.Observe("ns", "acme", "a", 502, 40*time.Millisecond, t0.Add(2*time.Second))
	r.Observe("ns", "acme", "b", 504, 10*time.Second, t0.Add(9*time.Second))
	r.Observe("ns", "acme", "b", 429, time.Millisecond, t0.Add(9*time.Second))
	r.Observe("ns", "acme", "", 500, time.Millisecond, t0.Add(9*time.Second)) // refused before a revision was chosen
	r.Observe("ns", "other", "a", 200, time.Millisecond, t0.Add(time.Second))
	if w, _ := r.ClosedWindows("ns", "acme", t0.Add(9*time.Second)); len(w) != 0 {
		t.Fatalf("a window closed early: %+v", w)
	}
	windows, got := r.ClosedWindows("ns", "acme", t0.Add(10*time.Second))
	if got != interval || len(windows) != 1 {
		t.Fatalf("closed windows %+v (interval %v)", windows, got)
	}
	w := windows[0]
	a, b := w.Revisions["a"], w.Revisions["b"]
	if !w.Start.Equal(t0) || !w.End.Equal(t0.Add(interval)) || len(w.Revisions) != 2 ||
		a.Activities != 2 || a.Errors != 1 || b.Activities != 2 || b.Errors != 1 {
		t.Fatalf("window %+v", w)
	}
	// 3ms is in the 5ms bucket, 40ms in the 50ms one, 10s in the 10s one.
	if a.Latency[4] != 1 || a.Latency[7] != 1 || b.Latency[14] != 1 || b.Latency[2] != 1 {
		t.Fatalf("latency buckets a %v b %v", a.Latency, b.Latency)
	}

	// Quiet windows close too (the leader tells a silent replica from a missing one);
	// two are kept, the newest last.
	windows, _ = r.ClosedWindows("ns", "acme", t0.Add(45*time.Second))
	if len(windows) != 2 || !windows[0].Start.Equal(t0.Add(10*time.Second)) || !windows[1].Start.Equal(t0.Add(30*time.Second)) ||
		len(windows[0].Revisions) != 0 || len(windows[1].Revisions) != 0 {
		t.Fatalf("after quiet windows: %+v", windows)
	}
	r.Observe("ns", "acme", "a", 200, time.Millisecond, t0.Add(46*time.Second))
	windows, _ = r.ClosedWindows("ns", "acme", t0.Add(50*time.Second))
	if len(windows) != 2 || !windows[1].Start.Equal(t0.Add(40*time.Second)) || windows[1].Revisions["a"].Activities != 1 {
		t.Fatalf("after one more window: %+v", windows)
	}

	// The same interval keeps counting; another starts over; stopping forgets.
	r.Analyze("ns", "acme", interval, t0.Add(51*time.Second))
	if windows, _ = r.ClosedWindows("ns", "acme", t0.Add(51*time.Second)); len(windows) != 2 {
		t.Fatalf("re-analyzing at the same interval lost the windows: %+v", windows)
	}
	r.Analyze("ns", "acme", 20*time.Second, t0.Add(51*time.Second))
	if windows, got = r.ClosedWindows("ns", "acme", t0.Add(52*time.Second)); len(windows) != 0 || got != 20*time.Second {
		t.Fatalf("another interval kept the old windows: %+v", windows)
	}
	if !r.Analyzing() {
		t.Fatal("Analyzing is false while a tenant is analyzed")
	}
	r.StopAnalysis("ns", "acme")
	r.StopAnalysis("ns", "acme")
	if windows, _ = r.ClosedWindows("ns", "acme", t0.Add(2*time.Minute)); windows != nil {
		t.Fatalf("stopped analysis still counts: %+v", windows)
	}
	if r.Analyzing() {
		t.Fatal("Analyzing is true after the only analysis stopped (twice)")
	}
}

// Activities answered at once on many goroutines are all counted, once, across window
// changes (go test -race).
func TestAnalysisCountsUnderConcurrency(t *testing.T) {
	r := NewRouter()
	r.Analyze("ns", "acme", 10*time.Second, t0)
	const workers, each = 8, 2000
	var wg sync.WaitGroup
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				// Every goroutine sweeps across the first two windows.
				now := t0.Add(time.Duration(i) * 20 * time.Second / each)
				status := http.StatusOK
				if (g+i)%4 == 0 {
					status = http.StatusBadGateway
				}
				r.Observe("ns", "acme", "a", status, time.Millisecond, now)
			}
		}()
	}
	wg.Wait()
	windows, _ := r.ClosedWindows("ns", "acme", t0.Add(20*time.Second))
	var sum Counts
	for _, w := range windows {
		sum.Add(w.Revisions["a"])
	}
	// A closed window is copied when read: an activity that found it open and was
	// counted as it closed is in it.
	if sum.Activities != workers*each || sum.Errors != workers*each/4 {
		t.Fatalf("counted %d activities, %d errors; want %d, %d", sum.Activities, sum.Errors, workers*each, workers*each/4)
	}
}

func TestIsAnalysisError(t *testing.T) {
	for status, want := range map[int]bool{200: false, 400: false, 404: false, 409: false, 429: false, StatusCallerGone: false, 500: true, 502: true, 503: false, 504: true, 507: true} {
		if IsAnalysisError(status) != want {
			t.Errorf("IsAnalysisError(%d) = %v", status, !want)
		}
	}
	// The codes the issue names are 5xx answers; the platform's are not the revision's.
	for _, err := range []error{runtime.ErrTrap, runtime.ErrTimeout} {
		if status, _ := statusOf(err); !IsAnalysisError(status) {
			t.Errorf("%v answers %d, not counted as an error", err, status)
		}
	}
	for _, err := range []error{runtime.ErrStateUnavailable, runtime.ErrNotLoaded} {
		if status, _ := statusOf(err); IsAnalysisError(status) {
			t.Errorf("%v answers %d, counted as the revision's error", err, status)
		}
	}
}

func TestCountsQuantile(t *testing.T) {
	var c Counts
	if c.Quantile(0.99) != 0 || c.ErrorPercent() != 0 {
		t.Fatal("empty counts have a latency or an error rate")
	}
	c.Latency[4] = 99 // (2.5ms, 5ms]
	c.Latency[8] = 1  // (50ms, 100ms]
	c.Activities, c.Errors = 100, 3
	if got := c.Quantile(0.99); got != 5*time.Millisecond {
		t.Errorf("p99 = %v, want the top of the bucket holding the 99th activity (5ms)", got)
	}
	if got := c.Quantile(0.5); got < 2500*time.Microsecond || got > 5*time.Millisecond {
		t.Errorf("p50 = %v, want within (2.5ms, 5ms]", got)
	}
	if got := c.Quantile(1); got != 100*time.Millisecond {
		t.Errorf("p100 = %v, want 100ms", got)
	}
	if c.ErrorPercent() != 3 {
		t.Errorf("error percent %v", c.ErrorPercent())
	}
	var slow Counts
	slow.Latency[LatencyBuckets-1] = 10
	if got := slow.Quantile(0.99); got != LatencyBounds[len(LatencyBounds)-1] {
		t.Errorf("above every bound: %v", got)
	}
	var sum Counts
	sum.Add(c)
	sum.Add(c)
	if sum.Activities != 200 || sum.Errors != 6 || sum.Latency[4] != 198 || sum.Quantile(0.99) != c.Quantile(0.99) {
		t.Errorf("sum %+v", sum)
	}
}

func TestLatencyBucket(t *testing.T) {
	for d, want := range map[time.Duration]int{0: 0, 250 * time.Microsecond: 0, 250*time.Microsecond + 1: 1,
		5 * time.Millisecond: 4, 5*time.Millisecond + 1: 5, 5 * time.Minute: LatencyBuckets - 2, time.Hour: LatencyBuckets - 1} {
		if got := LatencyBucket(d); got != want {
			t.Errorf("LatencyBucket(%v) = %d, want %d", d, got, want)
		}
	}
}

// What counting an answered activity for analysis costs the dispatcher's hot path, as
// serveActivity pays it: with no split under analysis anywhere, with another tenant's
// split under analysis, and with this tenant's (go test ./dispatcher -run '^$' -bench Observe).
func BenchmarkObserve(b *testing.B) {
	for _, tc := range []struct {
		name   string
		tenant string // whose split is analyzed
	}{{"none", ""}, {"another", "beta"}, {"this", "acme"}} {
		b.Run(tc.name, func(b *testing.B) {
			r := NewRouter()
			r.PublishTenant("ns", "acme", &TenantConfig{Namespace: "ns", Name: "acme"})
			if tc.tenant != "" {
				r.Analyze("ns", tc.tenant, time.Minute, time.Now())
			}
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if r.Analyzing() {
						now := time.Now()
						r.Observe("ns", "acme", "rev-b", 200, now.Sub(start), now)
					}
				}
			})
		})
	}
}
