package controllers

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/dispatcher"
	"github.com/packhost/packhost/state"
)

// t0 is on a 10s interval boundary.
var t0 = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

// table is a routing table from name, percent pairs; a name "b:canary" has a tag.
func table(pairs ...any) []v1.RouteStatus {
	var out []v1.RouteStatus
	for i := 0; i < len(pairs); i += 2 {
		name, tag, _ := strings.Cut(pairs[i].(string), ":")
		out = append(out, v1.RouteStatus{RevisionName: name, Percent: int32(pairs[i+1].(int)), Tag: tag})
	}
	return out
}

// counts is n activities, errs of them errors, all taking d.
func counts(n, errs int64, d time.Duration) dispatcher.Counts {
	c := dispatcher.Counts{Activities: n, Errors: errs}
	c.Latency[dispatcher.LatencyBucket(d)] = n
	return c
}

func TestScalePercents(t *testing.T) {
	for _, tc := range []struct {
		in    []int32
		total int32
		want  []int32
	}{
		{[]int32{100}, 90, []int32{90}},
		{[]int32{60, 40}, 90, []int32{54, 36}},
		{[]int32{50, 50}, 33, []int32{17, 16}}, // the remainder goes to the earlier on a tie
		{[]int32{1, 1, 1}, 100, []int32{34, 33, 33}},
		{[]int32{90, 10, 0}, 50, []int32{45, 5, 0}},
		{[]int32{0, 0}, 50, []int32{0, 0}},
		{[]int32{33, 33, 34}, 1, []int32{0, 0, 1}},
	} {
		got := scalePercents(tc.in, tc.total)
		if !slices.Equal(got, tc.want) {
			t.Errorf("scalePercents(%v, %d) = %v, want %v", tc.in, tc.total, got, tc.want)
		}
	}
}

func TestStepRoutes(t *testing.T) {
	for _, tc := range []struct {
		name           string
		stable, target []v1.RouteStatus
		weight         int32
		want           []v1.RouteStatus
	}{
		{"one for one", table("a", 100), table("b", 100), 10, table("a", 90, "b", 10)},
		{"the old revision kept at 0", table("a", 100), table("a", 0, "b", 100), 50, table("a", 50, "b", 50)},
		{"stable shares scaled", table("a", 60, "c", 40), table("b", 100), 10, table("a", 54, "c", 36, "b", 10)},
		{"two canaries share as the target does", table("a", 100), table("b", 75, "c", 25), 20, table("a", 80, "b", 15, "c", 5)},
		{"weight above the canaries' share is the target", table("a", 100), table("a", 50, "b", 50), 80, table("a", 50, "b", 50)},
		{"weight at the canaries' share is the target", table("a", 100), table("a", 90, "b", 10), 10, table("a", 90, "b", 10)},
		{"the target's tags", table("a:stable", 100), table("a", 0, "b:stable", 100), 10, table("a", 90, "b:stable", 10)},
		{"a dropped revision keeps a tag nobody takes", table("a:old", 100), table("b:canary", 100), 10, table("a:old", 90, "b:canary", 10)},
		{"a dropped revision loses a tag the target gives away", table("a:main", 100), table("b:main", 100), 10, table("a", 90, "b:main", 10)},
		{"a route the target adds at 0 stays at 0", table("a", 100), table("b", 100, "dark:preview", 0), 10, table("a", 90, "b", 10, "dark:preview", 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := stepRoutes(tc.stable, tc.target, canaryRevisions(tc.stable, tc.target), tc.weight)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			var sum int32
			for _, rt := range got {
				sum += rt.Percent
			}
			if sum != 100 {
				t.Fatalf("percents add up to %d", sum)
			}
		})
	}
}

func TestCanaryRevisions(t *testing.T) {
	for _, tc := range []struct {
		stable, target []v1.RouteStatus
		want           []string
	}{
		{table("a", 100), table("b", 100), []string{"b"}},
		{table("a", 100), table("a", 90, "b", 10), []string{"b"}},
		{table("a", 90, "b", 10), table("a", 10, "b", 90), nil},           // re-weighting known revisions
		{table("a", 100, "b", 0), table("a", 50, "b", 50), []string{"b"}}, // b had no weight
		{table("a", 100), table("a", 100, "dark", 0), nil},                // a tag-only route brings no traffic
		{table("a", 100), table("b", 50, "c", 50), []string{"b", "c"}},
	} {
		if got := canaryRevisions(tc.stable, tc.target); !slices.Equal(got, tc.want) {
			t.Errorf("canaryRevisions(%v, %v) = %v, want %v", tc.stable, tc.target, got, tc.want)
		}
	}
}

func TestJudgedWindow(t *testing.T) {
	const interval = 10 * time.Second // grace 2.5s
	running := func(stepStart time.Time, judgedEnd *time.Time) *v1.RolloutStatus {
		ro := &v1.RolloutStatus{Phase: v1.RolloutProgressing, StepStartTime: ptr.To(metav1.NewTime(stepStart))}
		if judgedEnd != nil {
			ro.Analysis = &v1.AnalysisStatus{IntervalEnd: metav1.NewTime(*judgedEnd)}
		}
		return ro
	}
	for _, tc := range []struct {
		name      string
		ro        *v1.RolloutStatus
		now       time.Time
		wantStart time.Time
		ok        bool
	}{
		{"the interval that closed a grace ago", running(t0, nil), t0.Add(13 * time.Second), t0, true},
		{"not before the grace", running(t0, nil), t0.Add(12 * time.Second), time.Time{}, false},
		{"the latest when late", running(t0, nil), t0.Add(45 * time.Second), t0.Add(30 * time.Second), true},
		{"not one that began before the step", running(t0.Add(time.Second), nil), t0.Add(13 * time.Second), time.Time{}, false},
		{"not one judged already", running(t0, ptr.To(t0.Add(10*time.Second))), t0.Add(19 * time.Second), time.Time{}, false},
		{"the next after the judged", running(t0, ptr.To(t0.Add(10*time.Second))), t0.Add(23 * time.Second), t0.Add(10 * time.Second), true},
		{"none while aborted", &v1.RolloutStatus{Phase: v1.RolloutAborted, StepStartTime: ptr.To(metav1.NewTime(t0))}, t0.Add(time.Minute), time.Time{}, false},
		{"none without a rollout", nil, t0, time.Time{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start, end, ok := judgedWindow(tc.ro, interval, tc.now)
			if ok != tc.ok || (ok && (!start.Equal(tc.wantStart) || end.Sub(start) != interval)) {
				t.Fatalf("got %v–%v ok=%v, want %v ok=%v", start, end, ok, tc.wantStart, tc.ok)
			}
		})
	}
}

func window(start time.Time, revs map[string]dispatcher.Counts) dispatcher.Window {
	return dispatcher.Window{Start: start, End: start.Add(10 * time.Second), Revisions: revs}
}

func TestSumReports(t *testing.T) {
	w0 := map[string]dispatcher.Counts{"a": counts(90, 1, 5*time.Millisecond), "b": counts(10, 1, 50*time.Millisecond)}
	w1a := map[string]dispatcher.Counts{"a": counts(40, 0, 5*time.Millisecond), "b": counts(6, 2, 50*time.Millisecond)}
	w1b := map[string]dispatcher.Counts{"a": counts(50, 1, 5*time.Millisecond), "b": counts(4, 0, 50*time.Millisecond)}
	reports := []countsReport{
		{Replica: "r2", Windows: []dispatcher.Window{window(t0, nil), window(t0.Add(10*time.Second), w1b)}},
		{Replica: "r1", Windows: []dispatcher.Window{window(t0, w0), window(t0.Add(10*time.Second), w1a)}},
		{Replica: "late", Windows: []dispatcher.Window{window(t0.Add(-10*time.Second), w0), window(t0, w0)}},
		{Replica: "gone", Windows: []dispatcher.Window{window(t0.Add(-100*time.Second), w0)}},
		{Replica: "never"},
	}
	f := sumReports(reports, t0.Add(10*time.Second), t0.Add(20*time.Second))
	if !slices.Equal(f.replicas, []string{"r1", "r2"}) || !slices.Equal(f.missing, []string{"late"}) || !slices.Equal(f.gone, []string{"gone", "never"}) {
		t.Fatalf("counted %v, missing %v, gone %v", f.replicas, f.missing, f.gone)
	}
	if a, b := f.revisions["a"], f.revisions["b"]; a.Activities != 90 || a.Errors != 1 || b.Activities != 10 || b.Errors != 2 || b.Latency != counts(10, 2, 50*time.Millisecond).Latency {
		t.Fatalf("sums: a %+v b %+v", a, b)
	}
	// A window of another interval (the analysis interval changed) is not this one.
	odd := []countsReport{{Replica: "r1", Windows: []dispatcher.Window{{Start: t0.Add(10 * time.Second), End: t0.Add(25 * time.Second), Revisions: w1a}}}}
	if f := sumReports(odd, t0.Add(10*time.Second), t0.Add(20*time.Second)); len(f.replicas) != 0 || len(f.missing) != 1 {
		t.Fatalf("a window of another length was counted: %+v", f)
	}
}

func TestJudge(t *testing.T) {
	a := &v1.CanaryAnalysis{MinActivities: 10, MaxErrorPercent: ptr.To[int32](5), MaxP99: &metav1.Duration{Duration: 500 * time.Millisecond}}
	errOnly := &v1.CanaryAnalysis{MinActivities: 0, MaxErrorPercent: ptr.To[int32](0)}
	fig := func(revs map[string]dispatcher.Counts) intervalFigures { return intervalFigures{revisions: revs} }
	for _, tc := range []struct {
		name     string
		a        *v1.CanaryAnalysis
		f        intervalFigures
		canaries []string
		want     v1.AnalysisVerdict
		says     string
	}{
		{"healthy", a, fig(map[string]dispatcher.Counts{"b": counts(100, 5, 50*time.Millisecond)}), []string{"b"}, v1.AnalysisPassed, "100 activities, 5 errors (5.00%)"},
		{"too few", a, fig(map[string]dispatcher.Counts{"b": counts(9, 9, time.Second)}), []string{"b"}, v1.AnalysisInconclusive, "fewer than minActivities 10"},
		{"the stable revision's errors are not the canary's", a, fig(map[string]dispatcher.Counts{"a": counts(100, 100, time.Second), "b": counts(20, 0, time.Millisecond)}), []string{"b"}, v1.AnalysisPassed, "b: 20 activities"},
		{"errors", a, fig(map[string]dispatcher.Counts{"b": counts(100, 6, 50*time.Millisecond)}), []string{"b"}, v1.AnalysisFailed, "error rate above maxErrorPercent 5%"},
		{"slow", a, fig(map[string]dispatcher.Counts{"b": counts(100, 0, 2*time.Second)}), []string{"b"}, v1.AnalysisFailed, "p99 above maxP99 500ms"},
		{"two canaries summed", a, fig(map[string]dispatcher.Counts{"b": counts(5, 0, time.Millisecond), "c": counts(5, 1, time.Millisecond)}), []string{"b", "c"}, v1.AnalysisFailed, "b+c: 10 activities, 1 errors (10.00%)"},
		{"no activities is never a pass", errOnly, fig(nil), []string{"b"}, v1.AnalysisInconclusive, "0 activities"},
		{"zero tolerance", errOnly, fig(map[string]dispatcher.Counts{"b": counts(1000, 1, time.Millisecond)}), []string{"b"}, v1.AnalysisFailed, "0.10%"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, msg := judge(tc.f, tc.canaries, tc.a)
			if got != tc.want || !strings.Contains(msg, tc.says) {
				t.Fatalf("%s %q, want %s saying %q", got, msg, tc.want, tc.says)
			}
		})
	}
}

// rollout drives decideRollout as the controller does: each decision's status and table
// are the next one's prev and current.
type rollout struct {
	t      *testing.T
	in     rolloutInput
	last   rolloutDecision
	events []string
}

func newRollout(t *testing.T, canary *v1.CanaryStrategy, current []v1.RouteStatus) *rollout {
	r := &rollout{t: t, in: rolloutInput{canary: canary, current: current, annotations: map[string]string{}}}
	return r
}

// at decides at now with figures (nil: none due) and returns the table.
func (r *rollout) at(now time.Time, figures *intervalFigures) []v1.RouteStatus {
	r.t.Helper()
	r.in.now, r.in.figures = now, figures
	d := decideRollout(r.in)
	r.in.prev, r.in.current, r.last = d.status, d.routes, d
	for _, e := range d.events {
		r.events = append(r.events, e.reason)
	}
	return d.routes
}

func (r *rollout) expect(now time.Time, figures *intervalFigures, phase v1.RolloutPhase, step int32, want []v1.RouteStatus) {
	r.t.Helper()
	got := r.at(now, figures)
	if ro := r.last.status; ro.Phase != phase || ro.Step != step || !slices.Equal(got, want) {
		r.t.Fatalf("at %s: %s step %d table %s (%s), want %s step %d table %s", now.Format(time.TimeOnly), ro.Phase, ro.Step, summary(got), ro.Message, phase, step, summary(want))
	}
}

// interval is one replica's counts of the 10s interval starting at start.
func interval(start time.Time, revs map[string]dispatcher.Counts) *intervalFigures {
	f := sumReports([]countsReport{{Replica: "r1", Windows: []dispatcher.Window{window(start, revs)}}}, start, start.Add(10*time.Second))
	return &f
}

func threeSteps(failureLimit int32) *v1.CanaryStrategy {
	minute := &metav1.Duration{Duration: time.Minute}
	return &v1.CanaryStrategy{
		Steps: []v1.CanaryStep{{Weight: 10, Pause: minute}, {Weight: 50, Pause: minute}, {Weight: 100, Pause: minute}},
		Analysis: &v1.CanaryAnalysis{Interval: &metav1.Duration{Duration: 10 * time.Second}, MinActivities: 10,
			MaxErrorPercent: ptr.To[int32](5), MaxP99: &metav1.Duration{Duration: 500 * time.Millisecond}, FailureLimit: failureLimit},
	}
}

var (
	healthy = map[string]dispatcher.Counts{"a": counts(90, 0, 5*time.Millisecond), "b": counts(20, 0, 5*time.Millisecond)}
	failing = map[string]dispatcher.Counts{"a": counts(90, 0, 5*time.Millisecond), "b": counts(20, 10, 5*time.Millisecond)}
	quiet   = map[string]dispatcher.Counts{"a": counts(90, 0, 5*time.Millisecond), "b": counts(3, 0, 5*time.Millisecond)}
)

// A healthy canary walks 10 → 50 → 100: each step holds for its pause and a passing
// interval; an inconclusive interval holds it; then the target is stable.
func TestRolloutWalksTheSteps(t *testing.T) {
	r := newRollout(t, threeSteps(1), table("a", 100))
	r.in.spec = specRoutesOf(table("a", 0, "b", 100))
	r.expect(t0, nil, v1.RolloutProgressing, 0, table("a", 90, "b", 10))
	if ro := r.last.status; !slices.Equal(ro.StableRoutes, table("a", 100)) || !slices.Equal(ro.CanaryRevisions, []string{"b"}) || !ro.StepStartTime.Time.Equal(t0) {
		t.Fatalf("rollout started as %+v", ro)
	}
	if r.last.requeue != 12500*time.Millisecond {
		t.Errorf("requeue %v, want the first interval's judgement (12.5s)", r.last.requeue)
	}
	// Intervals pass, but the pause holds the step.
	r.expect(t0.Add(13*time.Second), interval(t0, healthy), v1.RolloutProgressing, 0, table("a", 90, "b", 10))
	if ro := r.last.status; ro.PassedIntervals != 1 || ro.Analysis.Verdict != v1.AnalysisPassed || ro.Analysis.Revisions[1].Activities != 20 {
		t.Fatalf("analysis: %+v", ro.Analysis)
	}
	r.expect(t0.Add(time.Minute), nil, v1.RolloutProgressing, 1, table("a", 50, "b", 50))
	// In step 2 the pause passes without a conclusive interval: the step holds.
	r.expect(t0.Add(73*time.Second), interval(t0.Add(time.Minute), quiet), v1.RolloutProgressing, 1, table("a", 50, "b", 50))
	r.expect(t0.Add(2*time.Minute+3*time.Second), nil, v1.RolloutProgressing, 1, table("a", 50, "b", 50))
	if msg := r.last.status.Message; !strings.Contains(msg, "for an analysis interval that passes") || !strings.Contains(msg, "fewer than minActivities") {
		t.Errorf("a held step's message does not say what it waits for: %q", msg)
	}
	r.expect(t0.Add(2*time.Minute+13*time.Second), interval(t0.Add(2*time.Minute), healthy), v1.RolloutProgressing, 2, table("a", 0, "b", 100))
	r.expect(t0.Add(3*time.Minute+23*time.Second), interval(t0.Add(3*time.Minute+10*time.Second), healthy), v1.RolloutSucceeded, 2, table("a", 0, "b", 100))
	if ro := r.last.status; !slices.Equal(ro.StableRoutes, table("a", 0, "b", 100)) {
		t.Fatalf("the target did not become stable: %v", ro.StableRoutes)
	}
	if want := []string{"RolloutStarted", "RolloutStep", "RolloutStep", v1.ReasonRolloutSucceeded}; !slices.Equal(r.events, want) {
		t.Errorf("events %v, want %v", r.events, want)
	}
	// Settled: nothing more happens.
	r.expect(t0.Add(time.Hour), nil, v1.RolloutSucceeded, 2, table("a", 0, "b", 100))
	if r.last.requeue != 0 || len(r.events) != 4 {
		t.Errorf("a finished rollout requeues (%v) or writes events (%v)", r.last.requeue, r.events)
	}
}

// Failed intervals up to failureLimit roll back at once to the stable table; nothing
// restarts until a retry; a new target starts a new rollout.
func TestRolloutAbortsAndRetries(t *testing.T) {
	r := newRollout(t, threeSteps(2), table("a", 100))
	r.in.spec = specRoutesOf(table("b", 100))
	r.expect(t0, nil, v1.RolloutProgressing, 0, table("a", 90, "b", 10))
	r.expect(t0.Add(13*time.Second), interval(t0, failing), v1.RolloutProgressing, 0, table("a", 90, "b", 10))
	if ro := r.last.status; ro.FailedIntervals != 1 || ro.Analysis.Verdict != v1.AnalysisFailed {
		t.Fatalf("one failed interval of two: %+v", ro)
	}
	r.expect(t0.Add(23*time.Second), interval(t0.Add(10*time.Second), failing), v1.RolloutAborted, 0, table("a", 100))
	ro := r.last.status
	for _, says := range []string{"analysis failed 2 of failureLimit 2", "b: 20 activities, 10 errors (50.00%)", "back to a=100"} {
		if !strings.Contains(ro.Message, says) {
			t.Errorf("abort message %q does not say %q", ro.Message, says)
		}
	}
	// Aborted stays aborted, whatever time passes.
	r.expect(t0.Add(time.Hour), nil, v1.RolloutAborted, 0, table("a", 100))
	// A retry starts over from the first step, with the failures forgotten.
	r.in.annotations[v1.AnnotationRetry] = "1"
	r.expect(t0.Add(time.Hour+time.Second), nil, v1.RolloutProgressing, 0, table("a", 90, "b", 10))
	if ro := r.last.status; ro.FailedIntervals != 0 || ro.Retry != "1" || !ro.StepStartTime.Time.Equal(t0.Add(time.Hour+time.Second)) {
		t.Fatalf("retry: %+v", ro)
	}
	// The same value does not retry again after the next abort.
	r.in.annotations[v1.AnnotationAbort] = "x"
	r.expect(t0.Add(time.Hour+2*time.Second), nil, v1.RolloutAborted, 0, table("a", 100))
	r.expect(t0.Add(time.Hour+3*time.Second), nil, v1.RolloutAborted, 0, table("a", 100))
	// A new target is a new rollout from the same stable table.
	r.in.spec = specRoutesOf(table("c", 100))
	r.expect(t0.Add(2*time.Hour), nil, v1.RolloutProgressing, 0, table("a", 90, "c", 10))
	// Reverting the target to the stable table applies it at once.
	r.in.spec = specRoutesOf(table("a", 100))
	r.expect(t0.Add(2*time.Hour+time.Second), nil, v1.RolloutSucceeded, 0, table("a", 100))
	want := []string{"RolloutStarted", v1.ReasonRolloutAborted, "RolloutRetried", v1.ReasonRolloutAborted, "RolloutStarted"}
	if !slices.Equal(r.events, want) {
		t.Errorf("events %v, want %v", r.events, want)
	}
}

// Each action acts once per new value, and a value that arrives when it does not apply
// is recorded, not kept for later.
func TestRolloutActions(t *testing.T) {
	paused := &v1.CanaryStrategy{Steps: []v1.CanaryStep{{Weight: 10}, {Weight: 50}}}
	r := newRollout(t, paused, table("a", 100))
	// A promote set before any rollout is recorded and does nothing later.
	r.in.spec = specRoutesOf(table("a", 100))
	r.in.annotations[v1.AnnotationPromote] = "old"
	r.expect(t0, nil, v1.RolloutSucceeded, 0, table("a", 100))
	r.in.spec = specRoutesOf(table("b", 100))
	r.expect(t0.Add(time.Second), nil, v1.RolloutPaused, 0, table("a", 90, "b", 10))
	r.expect(t0.Add(time.Hour), nil, v1.RolloutPaused, 0, table("a", 90, "b", 10))
	if !strings.Contains(r.last.status.Message, "waits for a promote") || r.last.requeue != 0 {
		t.Errorf("a paused step: %q, requeue %v", r.last.status.Message, r.last.requeue)
	}
	r.in.annotations[v1.AnnotationPromote] = "1"
	r.expect(t0.Add(time.Hour+time.Second), nil, v1.RolloutPaused, 1, table("a", 50, "b", 50))
	r.expect(t0.Add(time.Hour+2*time.Second), nil, v1.RolloutPaused, 1, table("a", 50, "b", 50))
	r.in.annotations[v1.AnnotationPromote] = "2"
	r.expect(t0.Add(time.Hour+3*time.Second), nil, v1.RolloutSucceeded, 1, table("b", 100))
	// A retry or abort with nothing to act on is recorded.
	r.in.annotations[v1.AnnotationRetry], r.in.annotations[v1.AnnotationAbort] = "r", "a"
	r.expect(t0.Add(time.Hour+4*time.Second), nil, v1.RolloutSucceeded, 1, table("b", 100))
	if ro := r.last.status; ro.Retry != "r" || ro.Abort != "a" || ro.Promote != "2" {
		t.Fatalf("recorded actions: %+v", ro)
	}
	// Removing an annotation is not an action.
	delete(r.in.annotations, v1.AnnotationAbort)
	r.in.spec = specRoutesOf(table("c", 100))
	r.expect(t0.Add(2*time.Hour), nil, v1.RolloutPaused, 0, table("b", 90, "c", 10))
}

// Changing the target's percents mid-rollout keeps the step; a revision the stable table
// gives no weight starts over; no table in use yet publishes the target at once.
func TestRolloutRetargets(t *testing.T) {
	r := newRollout(t, threeSteps(1), table("a", 100))
	r.in.spec = specRoutesOf(table("a", 50, "b", 50))
	r.expect(t0, nil, v1.RolloutProgressing, 0, table("a", 90, "b", 10))
	r.expect(t0.Add(13*time.Second), interval(t0, healthy), v1.RolloutProgressing, 0, table("a", 90, "b", 10))
	r.expect(t0.Add(time.Minute), nil, v1.RolloutProgressing, 1, table("a", 50, "b", 50))
	r.in.spec = specRoutesOf(table("a", 20, "b", 80))
	r.expect(t0.Add(time.Minute+time.Second), nil, v1.RolloutProgressing, 1, table("a", 50, "b", 50))
	r.in.spec = specRoutesOf(table("a", 20, "c", 80))
	r.expect(t0.Add(time.Minute+2*time.Second), nil, v1.RolloutProgressing, 0, table("a", 90, "c", 10))

	fresh := newRollout(t, threeSteps(1), nil)
	fresh.in.spec = specRoutesOf(table("b", 100))
	fresh.expect(t0, nil, v1.RolloutSucceeded, 0, table("b", 100))
}

// Two replicas that each served part of the traffic make the same decision as one
// replica that served it all.
func TestTwoReplicasDecideAsOne(t *testing.T) {
	half := func(c dispatcher.Counts, first bool) dispatcher.Counts {
		out := dispatcher.Counts{Activities: c.Activities / 2, Errors: c.Errors / 2}
		for i, n := range c.Latency {
			out.Latency[i] = n / 2
		}
		if !first {
			out.Activities, out.Errors = c.Activities-out.Activities, c.Errors-out.Errors
			for i, n := range c.Latency {
				out.Latency[i] = n - n/2
			}
		}
		return out
	}
	for name, revs := range map[string]map[string]dispatcher.Counts{"healthy": healthy, "failing": failing, "quiet": quiet} {
		t.Run(name, func(t *testing.T) {
			r1, r2 := map[string]dispatcher.Counts{}, map[string]dispatcher.Counts{}
			for rev, c := range revs {
				r1[rev], r2[rev] = half(c, true), half(c, false)
			}
			one := sumReports([]countsReport{{Replica: "r1", Windows: []dispatcher.Window{window(t0, revs)}}}, t0, t0.Add(10*time.Second))
			two := sumReports([]countsReport{
				{Replica: "r1", Windows: []dispatcher.Window{window(t0, r1)}},
				{Replica: "r2", Windows: []dispatcher.Window{window(t0, r2)}},
			}, t0, t0.Add(10*time.Second))
			decide := func(f intervalFigures) rolloutDecision {
				return decideRollout(rolloutInput{spec: specRoutesOf(table("b", 100)), canary: threeSteps(1), current: table("a", 90, "b", 10),
					prev: &v1.RolloutStatus{Phase: v1.RolloutProgressing, StepStartTime: ptr.To(metav1.NewTime(t0)),
						StableRoutes: table("a", 100), TargetRoutes: table("b", 100), CanaryRevisions: []string{"b"}},
					now: t0.Add(13 * time.Second), figures: &f})
			}
			a, b := decide(one), decide(two)
			if a.status.Phase != b.status.Phase || a.status.Analysis.Verdict != b.status.Analysis.Verdict ||
				a.status.Analysis.Message != b.status.Analysis.Message || !slices.Equal(a.routes, b.routes) ||
				fmt.Sprint(a.status.Analysis.Revisions) != fmt.Sprint(b.status.Analysis.Revisions) {
				t.Fatalf("one replica: %s %+v\ntwo replicas: %s %+v", a.status.Phase, a.status.Analysis, b.status.Phase, b.status.Analysis)
			}
			if !slices.Equal(b.status.Analysis.Replicas, []string{"r1", "r2"}) {
				t.Fatalf("replicas counted: %v", b.status.Analysis.Replicas)
			}
		})
	}
}

// Only the manager's own counts are believed: a ConfigMap anyone in the namespace could
// label is ignored unless the split controls it and it is named for its replica.
func TestTrustReport(t *testing.T) {
	split := &v1.TrafficSplit{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "main", UID: "uid-1"}}
	good := func(mutate func(cm *corev1.ConfigMap)) corev1.ConfigMap {
		data, _ := json.Marshal(countsReport{Replica: "pod-1", Windows: []dispatcher.Window{window(t0, healthy)}})
		cm := corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "main-analysis-pod-1",
				Labels: map[string]string{state.LabelComponent: componentAnalysis},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: v1.GroupVersion.String(), Kind: "TrafficSplit",
					Name: "main", UID: "uid-1", Controller: ptr.To(true)}}},
			Data: map[string]string{countsKey: string(data)},
		}
		if mutate != nil {
			mutate(&cm)
		}
		return cm
	}
	reports, ignored := trustedReports(split, []corev1.ConfigMap{good(nil)})
	if len(reports) != 1 || len(ignored) != 0 || reports[0].Replica != "pod-1" || reports[0].Windows[0].Revisions["b"].Activities != 20 {
		t.Fatalf("the manager's own counts: %+v, ignored %v", reports, ignored)
	}
	for _, tc := range []struct {
		name   string
		mutate func(cm *corev1.ConfigMap)
		says   string
	}{
		{"no owner", func(cm *corev1.ConfigMap) { cm.OwnerReferences = nil }, "not controlled by the split"},
		{"an owner that does not control", func(cm *corev1.ConfigMap) { cm.OwnerReferences[0].Controller = nil }, "not controlled by the split"},
		{"another incarnation of the split", func(cm *corev1.ConfigMap) { cm.OwnerReferences[0].UID = "uid-0" }, "not controlled by the split"},
		{"another split", func(cm *corev1.ConfigMap) { cm.OwnerReferences[0].Name = "other" }, "not controlled by the split"},
		{"another kind", func(cm *corev1.ConfigMap) { cm.OwnerReferences[0].Kind = "Revision" }, "not controlled by the split"},
		{"another namespace", func(cm *corev1.ConfigMap) { cm.Namespace = "evil" }, "not an analysis ConfigMap of the split's namespace"},
		{"a replica's counts under another's name", func(cm *corev1.ConfigMap) { cm.Name = "main-analysis-pod-2" }, `not named for its replica "pod-1"`},
		{"garbage", func(cm *corev1.ConfigMap) { cm.Data[countsKey] = "{" }, "does not parse"},
		{"too large", func(cm *corev1.ConfigMap) { cm.Data[countsKey] = strings.Repeat(" ", countsMaxBytes+1) }, "larger than"},
		{"no replica", func(cm *corev1.ConfigMap) { cm.Data[countsKey] = `{"windows":[]}` }, "not named for its replica"},
		{"negative counts", func(cm *corev1.ConfigMap) { cm.Data[countsKey] = report(`{"b":{"activities":-5}}`) }, `implausible counts for revision "b"`},
		{"more errors than activities", func(cm *corev1.ConfigMap) { cm.Data[countsKey] = report(`{"b":{"activities":5,"errors":6}}`) }, "implausible counts"},
		{"counts that would overflow a sum", func(cm *corev1.ConfigMap) {
			cm.Data[countsKey] = report(`{"b":{"activities":9223372036854775807,"errors":0}}`)
		}, "implausible counts"},
		{"a negative bucket", func(cm *corev1.ConfigMap) { cm.Data[countsKey] = report(`{"b":{"activities":1,"latency":[-1]}}`) }, "implausible counts"},
		{"a window backwards", func(cm *corev1.ConfigMap) {
			cm.Data[countsKey] = `{"replica":"pod-1","windows":[{"start":"2026-01-01T00:00:10Z","end":"2026-01-01T00:00:00Z"}]}`
		}, "does not end after it starts"},
		{"too many windows", func(cm *corev1.ConfigMap) {
			w := `{"start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:00:10Z"}`
			cm.Data[countsKey] = `{"replica":"pod-1","windows":[` + w + "," + w + "," + w + `]}`
		}, "3 windows"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reports, ignored := trustedReports(split, []corev1.ConfigMap{good(tc.mutate)})
			if len(reports) != 0 || len(ignored) != 1 || !strings.Contains(ignored[0], tc.says) {
				t.Fatalf("trusted %+v, ignored %v; want it ignored saying %q", reports, ignored, tc.says)
			}
		})
	}
}

// report is a counts report of pod-1 with one window holding revisions (JSON).
func report(revisions string) string {
	return `{"replica":"pod-1","windows":[{"start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:00:10Z","revisions":` + revisions + `}]}`
}

func TestCountsName(t *testing.T) {
	if got := countsName("main", "packhost-manager-6d9f-x2x"); got != "main-analysis-packhost-manager-6d9f-x2x" {
		t.Errorf("countsName = %q", got)
	}
	long := countsName(strings.Repeat("s", 250), "pod")
	odd := countsName("main", "My_Laptop.local")
	if len(long) > 253 || !strings.HasPrefix(long, "analysis-") || !strings.HasPrefix(odd, "analysis-") || odd == countsName("main", "other") {
		t.Errorf("names that are not valid ConfigMap names: %q, %q", long, odd)
	}
}

// Annotation values that were on the split before it had any rollout status (a strategy
// added in the same change as a new revision, or added again after it was removed,
// which forgets status.rollout) were not asked of this rollout: they are recorded, and
// the rollout starts at its first step, running.
func TestRolloutIgnoresActionsFromBeforeIt(t *testing.T) {
	r := newRollout(t, threeSteps(1), table("a", 100))
	r.in.spec = specRoutesOf(table("b", 100))
	r.in.annotations[v1.AnnotationPromote] = "last-week"
	r.in.annotations[v1.AnnotationAbort] = "last-month"
	r.expect(t0, nil, v1.RolloutProgressing, 0, table("a", 90, "b", 10))
	if ro := r.last.status; ro.Promote != "last-week" || ro.Abort != "last-month" {
		t.Fatalf("the old values are not recorded: %+v", ro)
	}
	// A new value acts.
	r.in.annotations[v1.AnnotationAbort] = "now"
	r.expect(t0.Add(time.Second), nil, v1.RolloutAborted, 0, table("a", 100))
}

// An action's value is the user's: a huge one is recorded, but the messages that quote
// it (status, conditions, whose message the API server bounds to 32768 bytes, events)
// quote only its start, so that status can still be written.
func TestRolloutQuotesActionsShortly(t *testing.T) {
	huge := strings.Repeat("x", 40000)
	r := newRollout(t, &v1.CanaryStrategy{Steps: []v1.CanaryStep{{Weight: 10}, {Weight: 50}}}, table("a", 100))
	r.in.spec = specRoutesOf(table("b", 100))
	r.expect(t0, nil, v1.RolloutPaused, 0, table("a", 90, "b", 10))
	r.in.annotations[v1.AnnotationPromote] = huge
	r.expect(t0.Add(time.Second), nil, v1.RolloutPaused, 1, table("a", 50, "b", 50))
	r.in.annotations[v1.AnnotationAbort] = huge
	r.expect(t0.Add(2*time.Second), nil, v1.RolloutAborted, 1, table("a", 100))
	r.in.annotations[v1.AnnotationRetry] = huge
	r.expect(t0.Add(3*time.Second), nil, v1.RolloutPaused, 0, table("a", 90, "b", 10))
	r.in.annotations[v1.AnnotationPromote] = huge + "y"
	r.expect(t0.Add(4*time.Second), nil, v1.RolloutPaused, 1, table("a", 50, "b", 50))
	r.in.annotations[v1.AnnotationPromote] = huge + "z"
	r.expect(t0.Add(5*time.Second), nil, v1.RolloutSucceeded, 1, table("b", 100))
	if ro := r.last.status; ro.Promote != huge+"z" || ro.Abort != huge || ro.Retry != huge {
		t.Fatal("the values acted on are not recorded whole")
	}
	if n := len(r.last.status.Message); n > 1024 {
		t.Errorf("the rollout's message is %d bytes", n)
	}
	r2 := newRollout(t, &v1.CanaryStrategy{Steps: []v1.CanaryStep{{Weight: 10}}}, table("a", 100))
	r2.in.spec = specRoutesOf(table("b", 100))
	r2.at(t0, nil)
	r2.in.annotations[v1.AnnotationAbort] = huge
	r2.expect(t0.Add(time.Second), nil, v1.RolloutAborted, 0, table("a", 100))
	if n := len(r2.last.status.Message); n > 1024 {
		t.Errorf("the abort message (Ready's, Stalled's and Degraded's) is %d bytes", n)
	}
	for _, d := range []rolloutDecision{r.last, r2.last} {
		for _, e := range d.events {
			if len(e.message) > 1024 {
				t.Errorf("event %s is %d bytes", e.reason, len(e.message))
			}
		}
	}
}

// While a revision of the rollout's target cannot serve (deleted, Failed, or still
// loading after spec.routes moved to it), the step's table is not the one in use: the
// steps hold, whatever their pause or a promote say, so the rollout cannot finish on a
// table nobody served. Analysis still judges what is served and rolls back.
func TestRolloutHoldsWhileTargetBlocked(t *testing.T) {
	r := newRollout(t, threeSteps(1), table("a", 100))
	r.in.spec = specRoutesOf(table("b", 100))
	r.expect(t0, nil, v1.RolloutProgressing, 0, table("a", 90, "b", 10))
	r.in.hold = `Revision "b" not found`
	r.expect(t0.Add(13*time.Second), interval(t0, healthy), v1.RolloutProgressing, 0, table("a", 90, "b", 10))
	r.expect(t0.Add(time.Hour), nil, v1.RolloutProgressing, 0, table("a", 90, "b", 10))
	if msg := r.last.status.Message; !strings.Contains(msg, `Revision "b" not found`) {
		t.Errorf("the message does not say what the step holds for: %q", msg)
	}
	r.in.annotations[v1.AnnotationPromote] = "1"
	r.expect(t0.Add(time.Hour+time.Second), nil, v1.RolloutProgressing, 0, table("a", 90, "b", 10))
	if r.last.status.Promote != "1" {
		t.Errorf("a promote while held is not recorded: %+v", r.last.status)
	}
	// Served again: the step goes on (its pause and a passing interval are behind it).
	r.in.hold = ""
	r.expect(t0.Add(time.Hour+2*time.Second), nil, v1.RolloutProgressing, 1, table("a", 50, "b", 50))
	// Held, a failing interval still rolls back.
	r.in.hold = `Revision "b" not found`
	r.expect(t0.Add(time.Hour+23*time.Second), interval(t0.Add(time.Hour+10*time.Second), failing), v1.RolloutAborted, 1, table("a", 100))
}

// Steps edited mid-rollout: the phase follows the step in effect as it now reads (a
// pause added to a step that waited for a promote makes it Progressing, and removed,
// Paused), so Ready's reason and the message agree with what the step waits for.
func TestRolloutPhaseFollowsEditedSteps(t *testing.T) {
	minute := &metav1.Duration{Duration: time.Minute}
	r := newRollout(t, &v1.CanaryStrategy{Steps: []v1.CanaryStep{{Weight: 10}, {Weight: 50}}}, table("a", 100))
	r.in.spec = specRoutesOf(table("b", 100))
	r.expect(t0, nil, v1.RolloutPaused, 0, table("a", 90, "b", 10))
	r.in.canary = &v1.CanaryStrategy{Steps: []v1.CanaryStep{{Weight: 10, Pause: minute}, {Weight: 50}}}
	r.expect(t0.Add(time.Second), nil, v1.RolloutProgressing, 0, table("a", 90, "b", 10))
	if msg := r.last.status.Message; !strings.Contains(msg, "holds until") {
		t.Errorf("message %q", msg)
	}
	r.in.canary = &v1.CanaryStrategy{Steps: []v1.CanaryStep{{Weight: 10}, {Weight: 50}}}
	r.expect(t0.Add(2*time.Second), nil, v1.RolloutPaused, 0, table("a", 90, "b", 10))
}
