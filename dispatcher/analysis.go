package dispatcher

import (
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// A canary rollout is judged by the dispatcher's own counts: while a tenant's split is
// rolling out, every replica counts the tenant's activities per revision in windows
// aligned to the analysis interval (multiples of it since the Unix epoch, so every
// replica's window n covers the same time), and publishes its closed windows; the
// leader sums them. A window counts activities, errors and a latency histogram with
// fixed buckets, so that histograms of several replicas add up exactly.

// LatencyBounds are the upper bounds of the analysis histogram's buckets; one more
// bucket takes what is above the last (an activity's deadline is at most 5m).
var LatencyBounds = [...]time.Duration{
	250 * time.Microsecond, 500 * time.Microsecond, time.Millisecond, 2500 * time.Microsecond,
	5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond, time.Second,
	2500 * time.Millisecond, 5 * time.Second, 10 * time.Second, 30 * time.Second, time.Minute, 5 * time.Minute,
}

// LatencyBuckets is the number of buckets of the analysis histogram.
const LatencyBuckets = len(LatencyBounds) + 1

// LatencyBucket is the analysis histogram's bucket of a latency.
func LatencyBucket(d time.Duration) int {
	b := 0
	for b < len(LatencyBounds) && d > LatencyBounds[b] {
		b++
	}
	return b
}

// IsAnalysisError says whether an answer counts as an error for analysis: every 5xx,
// which includes guest_error (502) and timeout (504), but 503. 4xx answers are the
// caller's doing (a bad activity, a conflict, 429 overload), and 503 the platform's
// (state_unavailable: the API server did not answer; no_ready_revision): neither says
// the revision failed, and a short API-server outage must not roll back a healthy
// canary. An answer to a caller that hung up is not an error either (see
// StatusCallerGone).
func IsAnalysisError(status int) bool {
	return status >= http.StatusInternalServerError && status != http.StatusServiceUnavailable
}

// StatusCallerGone stands, for analysis only, for the answer to a caller that hung up
// before it: its activity was cancelled, which says nothing of the revision but its
// latency, which is counted.
const StatusCallerGone = 499

// Counts are one revision's activities in one analysis window.
type Counts struct {
	Activities int64 `json:"activities"`
	Errors     int64 `json:"errors"`
	// Latency counts activities per bucket of LatencyBounds (the last: above them all).
	Latency [LatencyBuckets]int64 `json:"latency"`
}

// Add adds o's counts to c.
func (c *Counts) Add(o Counts) {
	c.Activities += o.Activities
	c.Errors += o.Errors
	for i := range c.Latency {
		c.Latency[i] += o.Latency[i]
	}
}

// ErrorPercent is the share of activities that were errors, in percent (0 without any).
func (c Counts) ErrorPercent() float64 {
	if c.Activities == 0 {
		return 0
	}
	return float64(c.Errors) * 100 / float64(c.Activities)
}

// Quantile estimates the q-quantile (0 < q <= 1) of the latency, interpolating linearly
// within the bucket it falls in, as Prometheus' histogram_quantile does; 0 without
// activities. One above every bound is the last bound.
func (c Counts) Quantile(q float64) time.Duration {
	var total int64
	for _, n := range c.Latency {
		total += n
	}
	if total == 0 {
		return 0
	}
	rank := q * float64(total)
	var below int64
	for i, n := range c.Latency {
		if n == 0 || float64(below+n) < rank {
			below += n
			continue
		}
		if i == len(LatencyBounds) {
			return LatencyBounds[len(LatencyBounds)-1]
		}
		lower := time.Duration(0)
		if i > 0 {
			lower = LatencyBounds[i-1]
		}
		frac := (rank - float64(below)) / float64(n)
		return lower + time.Duration(math.Round(frac*float64(LatencyBounds[i]-lower)))
	}
	return LatencyBounds[len(LatencyBounds)-1]
}

// Window is a tenant's counts per revision in one closed analysis window.
type Window struct {
	Start     time.Time         `json:"start"`
	End       time.Time         `json:"end"`
	Revisions map[string]Counts `json:"revisions,omitempty"`
}

// KeptWindows is how many closed windows a tally keeps (ClosedWindows returns): the
// leader judges a window a little after it closes, and by then a replica may have
// closed the next one.
const KeptWindows = 2

// tally counts one tenant's activities in windows of one interval.
type tally struct {
	interval time.Duration
	cur      atomic.Pointer[liveWindow]

	mu     sync.Mutex    // rolling the window over
	closed []*liveWindow // oldest first, at most KeptWindows
}

// liveWindow is the window being counted: revision name -> *liveCounts.
type liveWindow struct {
	index int64
	revs  sync.Map
}

type liveCounts struct {
	activities, errors atomic.Int64
	latency            [LatencyBuckets]atomic.Int64
}

func newTally(interval time.Duration, now time.Time) *tally {
	t := &tally{interval: interval}
	t.cur.Store(&liveWindow{index: t.index(now)})
	return t
}

func (t *tally) index(now time.Time) int64 { return now.UnixNano() / int64(t.interval) }

// window returns the window now falls in, closing the current one when now is past it.
// An activity that ends after its window closed is counted in the window it ends in.
func (t *tally) window(now time.Time) *liveWindow {
	idx := t.index(now)
	if w := t.cur.Load(); w.index >= idx {
		return w
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	w := t.cur.Load()
	if w.index >= idx {
		return w
	}
	t.closed = append(t.closed, w)
	if idx-1 > w.index {
		// Windows without an activity in between: the latest of them closed empty.
		t.closed = append(t.closed, &liveWindow{index: idx - 1})
	}
	if n := len(t.closed); n > KeptWindows {
		t.closed = append([]*liveWindow(nil), t.closed[n-KeptWindows:]...)
	}
	next := &liveWindow{index: idx}
	t.cur.Store(next)
	return next
}

func (t *tally) frame(idx int64) Window {
	start := time.Unix(0, idx*int64(t.interval)).UTC()
	return Window{Start: start, End: start.Add(t.interval)}
}

// freeze copies a closed window. It is copied when read, not when it closes, so an
// activity that found the window just before it closed and is counted a moment later
// is in it; one counted after a copy was read is only in later copies, never in two
// windows.
func (t *tally) freeze(w *liveWindow) Window {
	out := t.frame(w.index)
	w.revs.Range(func(k, v any) bool {
		lc := v.(*liveCounts)
		c := Counts{Activities: lc.activities.Load(), Errors: lc.errors.Load()}
		for i := range c.Latency {
			c.Latency[i] = lc.latency[i].Load()
		}
		if out.Revisions == nil {
			out.Revisions = map[string]Counts{}
		}
		out.Revisions[k.(string)] = c
		return true
	})
	return out
}

func (t *tally) observe(revision string, status int, elapsed time.Duration, now time.Time) {
	w := t.window(now)
	v, ok := w.revs.Load(revision)
	if !ok {
		v, _ = w.revs.LoadOrStore(revision, new(liveCounts))
	}
	c := v.(*liveCounts)
	c.activities.Add(1)
	if IsAnalysisError(status) {
		c.errors.Add(1)
	}
	c.latency[LatencyBucket(elapsed)].Add(1)
}

// Analyze starts counting a tenant's activities in windows of interval, for a canary
// rollout's analysis; a tally of another interval starts over. StopAnalysis ends it.
func (r *Router) Analyze(namespace, tenant string, interval time.Duration, now time.Time) {
	if interval <= 0 {
		return
	}
	e := r.entry(namespace, tenant, true)
	if t := e.tally.Load(); t != nil && t.interval == interval {
		return
	}
	if e.tally.Swap(newTally(interval, now)) == nil {
		r.analyzed.Add(1)
	}
}

// StopAnalysis stops counting a tenant's activities for analysis.
func (r *Router) StopAnalysis(namespace, tenant string) {
	if e := r.entry(namespace, tenant, false); e != nil && e.tally.Swap(nil) != nil {
		r.analyzed.Add(-1)
	}
}

// Analyzing says whether any tenant's activities are counted for analysis: while none
// is, the dispatcher skips Observe (and its tenant lookup) altogether.
func (r *Router) Analyzing() bool { return r.analyzed.Load() > 0 }

// Observe counts one answered activity of a revision for analysis, when the tenant's
// split is being analyzed: its status and how long it took.
func (r *Router) Observe(namespace, tenant, revision string, status int, elapsed time.Duration, now time.Time) {
	if revision == "" {
		return
	}
	e := r.entry(namespace, tenant, false)
	if e == nil {
		return
	}
	if t := e.tally.Load(); t != nil {
		t.observe(revision, status, elapsed, now)
	}
}

// ClosedWindows returns the analysis windows of a tenant closed by now, oldest first (at
// most two), and the interval they are counted in; none when it is not analyzed.
func (r *Router) ClosedWindows(namespace, tenant string, now time.Time) ([]Window, time.Duration) {
	e := r.entry(namespace, tenant, false)
	if e == nil {
		return nil, 0
	}
	t := e.tally.Load()
	if t == nil {
		return nil, 0
	}
	t.window(now)
	t.mu.Lock()
	closed := append([]*liveWindow(nil), t.closed...)
	t.mu.Unlock()
	out := make([]Window, len(closed))
	for i, w := range closed {
		out[i] = t.freeze(w)
	}
	return out, t.interval
}
