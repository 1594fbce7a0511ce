package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	v1 "github.com/packhost/packhost/api/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite the golden files of the rendering tests with what they render now")

// renderNow is the time every golden rendering is shown at.
var renderNow = time.Date(2026, 11, 26, 17, 0, 0, 0, time.UTC)

func ago(d time.Duration) *metav1.Time { t := metav1.NewTime(renderNow.Add(-d)); return &t }

func dur(d time.Duration) *metav1.Duration { return &metav1.Duration{Duration: d} }

func cond(typ, status, reason string) metav1.Condition {
	return metav1.Condition{Type: typ, Status: metav1.ConditionStatus(status), Reason: reason, ObservedGeneration: 3}
}

// splitAt is the split of the operators' guide's example, v1 stable and v2 incoming,
// with rollout r (nil: none).
func splitAt(r *v1.RolloutStatus, effective []v1.RouteStatus, conds ...metav1.Condition) *v1.TrafficSplit {
	return &v1.TrafficSplit{
		ObjectMeta: metav1.ObjectMeta{Name: "acme", Namespace: "shop", Generation: 3},
		Spec: v1.TrafficSplitSpec{
			TenantRef: v1.LocalObjectReference{Name: "acme"},
			Routes:    []v1.Route{{RevisionName: "acme-bot-v2", Percent: 100, Tag: "canary"}},
			Strategy: &v1.TrafficSplitStrategy{Canary: &v1.CanaryStrategy{
				Steps: []v1.CanaryStep{{Weight: 10, Pause: dur(time.Minute)}, {Weight: 50}, {Weight: 100, Pause: dur(30 * time.Second)}},
				Analysis: &v1.CanaryAnalysis{Interval: dur(10 * time.Second), MinActivities: 20,
					MaxErrorPercent: ptr.To[int32](5), MaxP99: dur(500 * time.Millisecond), FailureLimit: 2},
			}},
		},
		Status: v1.TrafficSplitStatus{ObservedGeneration: 3, Routes: effective, Rollout: r, Conditions: conds},
	}
}

var (
	stable = []v1.RouteStatus{{RevisionName: "acme-bot-v1", Percent: 100, Tag: "stable"}}
	target = []v1.RouteStatus{{RevisionName: "acme-bot-v2", Percent: 100, Tag: "canary"}}
)

func table(v1Percent, v2Percent int32, d1, d2 int64) []v1.RouteStatus {
	return []v1.RouteStatus{{RevisionName: "acme-bot-v1", Percent: v1Percent, Tag: "stable", Dispatched: d1}, {RevisionName: "acme-bot-v2", Percent: v2Percent, Tag: "canary", Dispatched: d2}}
}

func interval(verdict v1.AnalysisVerdict, message string, stable, canary, canaryErrors int64, percent string, missing ...string) *v1.AnalysisStatus {
	return &v1.AnalysisStatus{
		IntervalStart: metav1.NewTime(renderNow.Add(-15 * time.Second)), IntervalEnd: metav1.NewTime(renderNow.Add(-5 * time.Second)),
		Verdict: verdict, Message: message,
		Revisions: []v1.RevisionFigures{
			{RevisionName: "acme-bot-v1", Activities: stable, Errors: 0, ErrorPercent: "0.00", P99: dur(12 * time.Millisecond)},
			{RevisionName: "acme-bot-v2", Canary: true, Activities: canary, Errors: canaryErrors, ErrorPercent: percent, P99: dur(15 * time.Millisecond)},
		},
		Replicas:        slices.DeleteFunc([]string{"packhost-manager-7d9f-abcde", "packhost-manager-7d9f-fghij"}, func(r string) bool { return slices.Contains(missing, r) }),
		MissingReplicas: missing,
	}
}

func rollout(phase v1.RolloutPhase, step int32, started time.Duration, message string, a *v1.AnalysisStatus, failed, passed int32) *v1.RolloutStatus {
	return &v1.RolloutStatus{Phase: phase, Step: step, StepStartTime: ago(started), StableRoutes: stable, TargetRoutes: target,
		CanaryRevisions: []string{"acme-bot-v2"}, Analysis: a, FailedIntervals: failed, PassedIntervals: passed, Message: message}
}

func TestRender(t *testing.T) {
	noStrategy := splitAt(nil, table(90, 10, 5120, 577), cond("Ready", "True", "TablePublished"), cond("RoutesReady", "True", "TablePublished"))
	noStrategy.Spec.Strategy = nil
	noStrategy.Spec.Routes = []v1.Route{{RevisionName: "acme-bot-v1", Percent: 90, Tag: "stable"}, {RevisionName: "acme-bot-v2", Percent: 10, Tag: "canary"}}
	// A rollout that succeeded has the target as its stable table and no analysis.
	succeeded := rollout(v1.RolloutSucceeded, 2, 2*time.Hour, "every step passed (the last one: its pause passed); acme-bot-v2=100 is stable", nil, 0, 1)
	succeeded.StableRoutes = target
	behind := splitAt(nil, nil)
	// Strings from the API that a terminal would act on are shown, not obeyed: a revision
	// name is only length-checked, and messages may quote what others wrote.
	hostile := splitAt(rollout(v1.RolloutProgressing, 0, 5*time.Second, "clear\x1b[2J\x1b[1;1Hscreen\tand \u202eright-to-left", nil, 0, 0),
		[]v1.RouteStatus{{RevisionName: "acme-bot-v1", Percent: 90}, {RevisionName: "evil\x1b]0;title\x07\rname", Percent: 10}},
		cond("Ready", "False", "RolloutProgressing"))
	behind.Generation, behind.Status.ObservedGeneration = 4, 0

	for _, tc := range []struct {
		name  string
		split *v1.TrafficSplit
	}{
		{"no-strategy", noStrategy},
		{"not-reconciled", behind},
		{"hostile-strings", hostile},
		{"strategy-no-rollout", splitAt(nil, stable, cond("Ready", "True", "TablePublished"))},
		{"progressing-first-step", splitAt(
			rollout(v1.RolloutProgressing, 0, 25*time.Second, "step 1/3: acme-bot-v2 at 10%: holds until 2026-11-26T17:00:35Z", interval(v1.AnalysisPassed, "acme-bot-v2: 140 activities, 1 errors (0.71%), p99 15ms", 1204, 140, 1, "0.71"), 0, 1),
			table(90, 10, 8800, 140),
			cond("Ready", "False", "RolloutProgressing"), cond("Reconciling", "True", "RolloutProgressing"), cond("Stalled", "False", "RolloutProgressing"), cond("RoutesReady", "True", "TablePublished"))},
		{"paused", splitAt(
			rollout(v1.RolloutPaused, 1, 3*time.Minute+20*time.Second, "step 2/3: acme-bot-v2 at 50%: waits for a promote (annotate packhost.io/promote with a new value)", interval(v1.AnalysisPassed, "acme-bot-v2: 598 activities, 2 errors (0.33%), p99 15ms", 610, 598, 2, "0.33"), 0, 2),
			table(50, 50, 9000, 2400),
			cond("Ready", "False", "RolloutPaused"), cond("Reconciling", "True", "RolloutPaused"))},
		{"last-step-pause-over", splitAt(
			rollout(v1.RolloutProgressing, 2, 45*time.Second, "step 3/3: acme-bot-v2 at 100%: holds for an analysis interval that passes (last: Inconclusive, acme-bot-v2: 12 activities, 0 errors (0.00%), p99 15ms: fewer than minActivities 20)",
				interval(v1.AnalysisInconclusive, "acme-bot-v2: 12 activities, 0 errors (0.00%), p99 15ms: fewer than minActivities 20", 0, 12, 0, "0.00"), 1, 0),
			table(0, 100, 9000, 4000),
			cond("Ready", "False", "RolloutProgressing"))},
		{"aborted-replica-missing", splitAt(
			rollout(v1.RolloutAborted, 0, 20*time.Second, "analysis failed 2 of failureLimit 2 intervals; interval 16:59:45–16:59:55: acme-bot-v2: 140 activities, 68 errors (48.57%), p99 15ms: error rate above maxErrorPercent 5%; back to acme-bot-v1=100",
				interval(v1.AnalysisFailed, "acme-bot-v2: 140 activities, 68 errors (48.57%), p99 15ms: error rate above maxErrorPercent 5%", 1204, 140, 68, "48.57", "packhost-manager-7d9f-fghij"), 2, 0),
			[]v1.RouteStatus{{RevisionName: "acme-bot-v1", Percent: 100, Tag: "stable", Dispatched: 9100}},
			cond("Ready", "False", "RolloutAborted"), cond("Stalled", "True", "RolloutAborted"), cond("Degraded", "True", "RolloutAborted"), cond("Reconciling", "False", "RolloutAborted"))},
		{"succeeded", splitAt(
			succeeded,
			[]v1.RouteStatus{{RevisionName: "acme-bot-v2", Percent: 100, Tag: "canary", Dispatched: 50211}},
			cond("Ready", "True", "TablePublished"), cond("Reconciling", "False", "TablePublished"), cond("Stalled", "False", "TablePublished"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got bytes.Buffer
			if err := render(&got, tc.split, renderNow); err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./cmd/kubectl-packhost -run TestRender -update to write it)", err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Errorf("rendering differs from %s (-update rewrites it):\n--- got\n%s\n--- want\n%s", golden, got.Bytes(), want)
			}
		})
	}
}

// The operators' guide quotes two renderings; they must be what the plugin prints.
func TestGuideQuotesTheRendering(t *testing.T) {
	guide, err := os.ReadFile(filepath.Join("..", "..", "docs", "operators-guide.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []struct{ golden, indent string }{{"paused", "   "}, {"aborted-replica-missing", ""}} {
		b, err := os.ReadFile(filepath.Join("testdata", q.golden+".golden"))
		if err != nil {
			t.Fatal(err)
		}
		var quoted strings.Builder
		for line := range strings.Lines(string(b)) {
			if strings.TrimSpace(line) != "" {
				quoted.WriteString(q.indent)
			}
			quoted.WriteString(line)
		}
		if !strings.Contains(string(guide), quoted.String()) {
			t.Errorf("docs/operators-guide.md does not quote testdata/%s.golden as the plugin prints it now: paste it again", q.golden)
		}
	}
}
