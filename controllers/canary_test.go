package controllers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/controllers"
	"github.com/packhost/packhost/dispatcher"
	"github.com/packhost/packhost/internal/testenv"
	"github.com/packhost/packhost/state"
)

// The rollout tests run the controllers on a clock the test moves, and write the
// replicas' published counts themselves, as a replica's publisher would (except in
// TestReplicasPublishTheirCounts, where real replicas publish what their dispatchers
// counted).

// testClock is a clock the test sets.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t
	}
}

func newTestClock() *testClock {
	return &testClock{now: time.Now().UTC().Truncate(time.Minute).Add(-time.Hour)}
}

const canaryInterval = 10 * time.Second

// canaryStrategy has three steps of a minute (the last without pause when waitLast) and
// an analysis of 10s intervals.
func canaryStrategy(failureLimit int32, waitLast bool) *v1.TrafficSplitStrategy {
	minute := &metav1.Duration{Duration: time.Minute}
	steps := []v1.CanaryStep{{Weight: 10, Pause: minute}, {Weight: 50, Pause: minute}, {Weight: 100, Pause: minute}}
	if waitLast {
		steps[2].Pause = nil
	}
	return &v1.TrafficSplitStrategy{Canary: &v1.CanaryStrategy{Steps: steps, Analysis: &v1.CanaryAnalysis{
		Interval: &metav1.Duration{Duration: canaryInterval}, MinActivities: 10, MaxErrorPercent: ptr.To[int32](5),
		MaxP99: &metav1.Duration{Duration: 500 * time.Millisecond}, FailureLimit: failureLimit}}}
}

// startCanary creates revisions a and b of acme and split main at a=100 with strategy,
// waits until a=100 is in use, then moves spec.routes to b and waits for the first step.
func startCanary(t *testing.T, ns string, strategy *v1.TrafficSplitStrategy) *v1.TrafficSplit {
	t.Helper()
	acme(t, ns, revision(ns, "a", "acme", "ok.wasm"), revision(ns, "b", "acme", "ok.wasm"))
	waitPhase(t, ns, "a", v1.RevisionReady, "")
	waitPhase(t, ns, "b", v1.RevisionReady, "")
	sp := split(ns, "main", "acme", v1.Route{RevisionName: "a", Percent: 100})
	sp.Spec.Strategy = strategy
	create(t, sp)
	waitSplit(t, sp, "the first table is in use at once", func(s *v1.TrafficSplit) bool {
		return s.Status.Summary == "a=100" && s.Status.Rollout != nil && s.Status.Rollout.Phase == v1.RolloutSucceeded
	})
	setRoutes(t, sp, v1.Route{RevisionName: "a", Percent: 0}, v1.Route{RevisionName: "b", Percent: 100, Tag: "canary"})
	return waitSplit(t, sp, "the first step", func(s *v1.TrafficSplit) bool {
		return s.Status.Summary == "a=90,b=10" && s.Status.Rollout.Phase == v1.RolloutProgressing && s.Status.Rollout.Step == 0
	})
}

// waitSplit waits until ok holds for the split, and returns it.
func waitSplit(t *testing.T, sp *v1.TrafficSplit, what string, ok func(*v1.TrafficSplit) bool) *v1.TrafficSplit {
	t.Helper()
	got := &v1.TrafficSplit{}
	eventually(t, what, func() (bool, string) {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(sp), got); err != nil {
			return false, err.Error()
		}
		b, _ := json.Marshal(got.Status)
		return ok(got), string(b)
	})
	return got
}

// annotate sets an annotation on the split (an action, or a poke that makes the
// controller look at its clock now).
func annotate(t *testing.T, sp *v1.TrafficSplit, key, value string) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur := &v1.TrafficSplit{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(sp), cur); err != nil {
			return err
		}
		if cur.Annotations == nil {
			cur.Annotations = map[string]string{}
		}
		cur.Annotations[key] = value
		return env.Client.Update(ctx, cur)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func poke(t *testing.T, sp *v1.TrafficSplit) {
	t.Helper()
	annotate(t, sp, "test.packhost.io/poke", strconv.FormatInt(time.Now().UnixNano(), 10))
}

// publishCounts writes replica's counts of split as its publisher does.
func publishCounts(t *testing.T, sp *v1.TrafficSplit, replica string, windows ...dispatcher.Window) {
	t.Helper()
	data, err := json.Marshal(map[string]any{"replica": replica, "windows": windows})
	if err != nil {
		t.Fatal(err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: sp.Namespace, Name: sp.Name + "-analysis-" + replica,
		Labels:          map[string]string{state.LabelComponent: "analysis", controllers.LabelSplitUID: string(sp.UID)},
		OwnerReferences: []metav1.OwnerReference{{APIVersion: v1.GroupVersion.String(), Kind: "TrafficSplit", Name: sp.Name, UID: sp.UID, Controller: ptr.To(true)}}},
		Data: map[string]string{"counts.json": string(data)}}
	if err := env.Client.Update(ctx, cm); apierrors.IsNotFound(err) {
		err = env.Client.Create(ctx, cm)
	} else if err != nil {
		t.Fatal(err)
	}
}

// activities is n activities of d, errs of them errors.
func activities(n, errs int64, d time.Duration) dispatcher.Counts {
	c := dispatcher.Counts{Activities: n, Errors: errs}
	c.Latency[dispatcher.LatencyBucket(d)] = n
	return c
}

// nextWindow is the next analysis interval the split's rollout will judge, not before now.
func nextWindow(sp *v1.TrafficSplit, now time.Time) (start, end time.Time) {
	ro := sp.Status.Rollout
	from := ro.StepStartTime.Time
	if ro.Analysis != nil && ro.Analysis.IntervalEnd.After(from) {
		from = ro.Analysis.IntervalEnd.Time
	}
	if now.After(from) {
		from = now
	}
	start = from.Truncate(canaryInterval)
	if start.Before(from) {
		start = start.Add(canaryInterval)
	}
	return start, start.Add(canaryInterval)
}

// judgeInterval publishes each replica's counts of the next interval (the newest window
// of each report), moves the clock past it and waits for its judgement.
func judgeInterval(t *testing.T, sp *v1.TrafficSplit, clock *testClock, counts map[string]map[string]dispatcher.Counts) *v1.TrafficSplit {
	t.Helper()
	sp = waitSplit(t, sp, "the split", func(*v1.TrafficSplit) bool { return true })
	start, end := nextWindow(sp, clock.Now())
	for replica, revs := range counts {
		publishCounts(t, sp, replica, dispatcher.Window{Start: start, End: end, Revisions: revs})
	}
	clock.Set(end.Add(3 * time.Second)) // past the 2.5s grace of a 10s interval
	poke(t, sp)
	return waitSplit(t, sp, "the interval ending "+end.Format(time.TimeOnly)+" is judged", func(s *v1.TrafficSplit) bool {
		return s.Status.Rollout.Analysis != nil && s.Status.Rollout.Analysis.IntervalEnd.Equal(&metav1.Time{Time: end})
	})
}

// endPause moves the clock to the end of the step's pause and waits for step next.
func endPause(t *testing.T, sp *v1.TrafficSplit, clock *testClock, next int32, table string) *v1.TrafficSplit {
	t.Helper()
	clock.Set(sp.Status.Rollout.StepStartTime.Add(time.Minute))
	poke(t, sp)
	return waitSplit(t, sp, fmt.Sprintf("step %d serves %s", next, table), func(s *v1.TrafficSplit) bool {
		return s.Status.Rollout.Step == next && s.Status.Summary == table
	})
}

func condition(s *v1.TrafficSplit, typ string) metav1.Condition {
	if c := meta.FindStatusCondition(s.Status.Conditions, typ); c != nil {
		return *c
	}
	return metav1.Condition{}
}

func waitTable(t *testing.T, r *replica, ns, summary string) {
	t.Helper()
	eventually(t, "the dispatcher routes by "+summary, func() (bool, string) {
		_, table := r.router.Tenant(ns, "acme")
		if table == nil {
			return false, "no table"
		}
		return table.Summary() == summary, table.Summary()
	})
}

// A healthy canary walks 10 → 50 → 100 on counts summed over the replicas that published
// them: a replica that stopped publishing is named and not counted, ConfigMaps that only
// look like counts are not believed, and GitOps tools read InProgress until it is done,
// then Current.
func TestCanaryWalksOnPublishedCounts(t *testing.T) {
	testenv.Require(t, env)
	clock := newTestClock()
	r := startReplica(t, true, func(c *replicaConfig) { c.clock = clock.Now })
	ns := env.Namespace(t, "canary-walk")
	sp := startCanary(t, ns, canaryStrategy(1, false))
	waitTable(t, r, ns, "a=90,b=10")
	res, err := kstatusOf(t, sp.DeepCopy())
	if err != nil || res.Status != status.InProgressStatus {
		t.Fatalf("a running rollout reads %v (%v), want InProgress", res, err)
	}
	if c := condition(sp, v1.ConditionReady); c.Status != metav1.ConditionFalse || c.Reason != v1.ReasonRolloutProgressing || c.ObservedGeneration != sp.Generation {
		t.Fatalf("Ready during the rollout: %+v", c)
	}

	// A replica that published once, long enough ago to be named missing.
	start, end := nextWindow(sp, clock.Now())
	publishCounts(t, sp, "stale", dispatcher.Window{Start: start.Add(-3 * canaryInterval), End: start.Add(-2 * canaryInterval)})
	// Counts that are not the manager's, of the interval to judge: labelled but not
	// controlled by the split, and controlled by another split of the namespace. Both
	// report a disaster that must not be believed.
	disaster := dispatcher.Window{Start: start, End: end, Revisions: map[string]dispatcher.Counts{"b": activities(1000, 1000, time.Minute)}}
	forged, _ := json.Marshal(map[string]any{"replica": "evil", "windows": []dispatcher.Window{disaster}})
	create(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "main-analysis-evil", Labels: map[string]string{state.LabelComponent: "analysis"}},
		Data: map[string]string{"counts.json": string(forged)}})
	other := split(ns, "other", "beta", v1.Route{RevisionName: "b", Percent: 100})
	create(t, other)
	publishCounts(t, other, "r1", disaster)

	healthy := func(a, b int64) map[string]dispatcher.Counts {
		return map[string]dispatcher.Counts{"a": activities(a, 0, 5*time.Millisecond), "b": activities(b, 0, 20*time.Millisecond)}
	}
	sp = judgeInterval(t, sp, clock, map[string]map[string]dispatcher.Counts{"r1": healthy(50, 6), "r2": healthy(40, 5)})
	an := sp.Status.Rollout.Analysis
	if an.Verdict != v1.AnalysisPassed || !slices.Equal(an.Replicas, []string{"r1", "r2"}) || !slices.Equal(an.MissingReplicas, []string{"stale"}) {
		t.Fatalf("analysis: %+v", an)
	}
	if len(an.Revisions) != 2 || an.Revisions[0].Activities != 90 || an.Revisions[1].RevisionName != "b" || !an.Revisions[1].Canary || an.Revisions[1].Activities != 11 {
		t.Fatalf("figures are not the sum of r1 and r2: %+v", an.Revisions)
	}
	// The pause holds the step after a passing interval.
	if sp.Status.Rollout.Step != 0 || sp.Status.Summary != "a=90,b=10" {
		t.Fatalf("the step moved before its pause ended: %+v", sp.Status.Rollout)
	}
	sp = endPause(t, sp, clock, 1, "a=50,b=50")
	waitTable(t, r, ns, "a=50,b=50")
	sp = judgeInterval(t, sp, clock, map[string]map[string]dispatcher.Counts{"r1": healthy(30, 30)})
	sp = endPause(t, sp, clock, 2, "a=0,b=100")
	sp = judgeInterval(t, sp, clock, map[string]map[string]dispatcher.Counts{"r1": healthy(0, 60)})
	clock.Set(sp.Status.Rollout.StepStartTime.Add(time.Minute))
	poke(t, sp)
	sp = waitSplit(t, sp, "the rollout succeeds", func(s *v1.TrafficSplit) bool {
		return s.Status.Rollout.Phase == v1.RolloutSucceeded
	})
	if c := condition(sp, v1.ConditionReady); c.Status != metav1.ConditionTrue || c.ObservedGeneration != sp.Generation || sp.Status.Summary != "a=0,b=100" {
		t.Fatalf("after the rollout: Ready %+v, table %s", c, sp.Status.Summary)
	}
	if !slices.Equal(sp.Status.Rollout.StableRoutes, []v1.RouteStatus{{RevisionName: "a"}, {RevisionName: "b", Percent: 100, Tag: "canary"}}) {
		t.Fatalf("the target is not stable: %+v", sp.Status.Rollout.StableRoutes)
	}
	waitKstatus(t, sp, status.CurrentStatus)
	waitTable(t, r, ns, "a=0,b=100")
}

// Bad figures roll back at once and stall the split (kstatus Failed, Degraded, a
// Warning event) until a retry; promote walks the steps without waiting; an abort
// annotation rolls back by hand.
func TestCanaryAbortRetryPromote(t *testing.T) {
	testenv.Require(t, env)
	clock := newTestClock()
	r := startReplica(t, true, func(c *replicaConfig) { c.clock = clock.Now })
	ns := env.Namespace(t, "canary-abort")
	sp := startCanary(t, ns, canaryStrategy(1, true))
	failing := map[string]dispatcher.Counts{"a": activities(90, 0, 5*time.Millisecond), "b": activities(40, 20, 5*time.Millisecond)}
	sp = judgeInterval(t, sp, clock, map[string]map[string]dispatcher.Counts{"r1": failing})
	if sp.Status.Rollout.Phase != v1.RolloutAborted || sp.Status.Summary != "a=100" {
		t.Fatalf("a failed interval did not roll back: %s %s", sp.Status.Rollout.Phase, sp.Status.Summary)
	}
	waitTable(t, r, ns, "a=100")
	for _, typ := range []string{v1.ConditionStalled, v1.TrafficSplitDegraded} {
		c := condition(sp, typ)
		if c.Status != metav1.ConditionTrue || c.Reason != v1.ReasonRolloutAborted || !strings.Contains(c.Message, "40 activities, 20 errors (50.00%)") || c.ObservedGeneration != sp.Generation {
			t.Errorf("%s after the abort: %+v", typ, c)
		}
	}
	if c := condition(sp, v1.ConditionReady); c.Status != metav1.ConditionFalse {
		t.Errorf("Ready after the abort: %+v", c)
	}
	waitKstatus(t, sp, status.FailedStatus)
	eventually(t, "a Warning event says the rollout was rolled back", func() (bool, string) {
		var list eventsv1.EventList
		if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return false, err.Error()
		}
		for _, e := range list.Items {
			if e.Regarding.Name == "main" && e.Type == corev1.EventTypeWarning && e.Reason == v1.ReasonRolloutAborted && strings.Contains(e.Note, "50.00%") {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d events", len(list.Items))
	})
	// Nothing restarts by itself.
	clock.Set(clock.Now().Add(10 * time.Minute))
	poke(t, sp)
	time.Sleep(500 * time.Millisecond)
	if sp = waitSplit(t, sp, "the split", func(*v1.TrafficSplit) bool { return true }); sp.Status.Rollout.Phase != v1.RolloutAborted {
		t.Fatalf("an aborted rollout went on by itself: %+v", sp.Status.Rollout)
	}

	annotate(t, sp, v1.AnnotationRetry, "1")
	sp = waitSplit(t, sp, "the retry starts over", func(s *v1.TrafficSplit) bool {
		return s.Status.Rollout.Phase == v1.RolloutProgressing && s.Status.Rollout.Step == 0 && s.Status.Summary == "a=90,b=10"
	})
	waitKstatus(t, sp, status.InProgressStatus)
	annotate(t, sp, v1.AnnotationPromote, "1")
	waitSplit(t, sp, "a promote ends the first step", func(s *v1.TrafficSplit) bool { return s.Status.Summary == "a=50,b=50" })
	annotate(t, sp, v1.AnnotationPromote, "2")
	sp = waitSplit(t, sp, "a promote ends the second step; the last waits for one", func(s *v1.TrafficSplit) bool {
		return s.Status.Summary == "a=0,b=100" && s.Status.Rollout.Phase == v1.RolloutPaused
	})
	if c := condition(sp, v1.ConditionReady); c.Reason != v1.ReasonRolloutPaused || !strings.Contains(c.Message, "waits for a promote") {
		t.Errorf("Ready of a paused step: %+v", c)
	}
	annotate(t, sp, v1.AnnotationAbort, "1")
	waitSplit(t, sp, "an abort by hand rolls back", func(s *v1.TrafficSplit) bool {
		return s.Status.Rollout.Phase == v1.RolloutAborted && s.Status.Summary == "a=100" && strings.Contains(s.Status.Rollout.Message, "aborted by packhost.io/abort=1")
	})
	annotate(t, sp, v1.AnnotationRetry, "2")
	waitSplit(t, sp, "retried", func(s *v1.TrafficSplit) bool { return s.Status.Rollout.Phase == v1.RolloutProgressing })
	for i, table := range []string{"a=50,b=50", "a=0,b=100", "a=0,b=100"} {
		annotate(t, sp, v1.AnnotationPromote, strconv.Itoa(3+i))
		waitSplit(t, sp, "promoted to "+table, func(s *v1.TrafficSplit) bool {
			return s.Status.Summary == table && s.Status.Rollout.Promote == strconv.Itoa(3+i)
		})
	}
	sp = waitSplit(t, sp, "promoted to the end", func(s *v1.TrafficSplit) bool { return s.Status.Rollout.Phase == v1.RolloutSucceeded })
	waitKstatus(t, sp, status.CurrentStatus)
	if meta.FindStatusCondition(sp.Status.Conditions, v1.TrafficSplitDegraded) != nil {
		t.Errorf("Degraded outlived the rollback: %+v", sp.Status.Conditions)
	}
}

// Real replicas count what their dispatchers serve and publish it; the leader sums
// both, a follower serves the leader's table, and the counts go when the rollout ends.
// Both run with the manager's generated RBAC and nothing more.
func TestReplicasPublishTheirCounts(t *testing.T) {
	testenv.Require(t, env)
	clock := newTestClock()
	rbac := managerRoleConfig(t)
	leader := startReplica(t, true, func(c *replicaConfig) { c.clock, c.replicaName, c.restConfig = clock.Now, "pod-1", rbac })
	follower := startReplica(t, false, func(c *replicaConfig) { c.clock, c.replicaName, c.restConfig = clock.Now, "pod-2", rbac })
	ns := env.Namespace(t, "canary-replicas")
	sp := startCanary(t, ns, canaryStrategy(1, false))
	waitTable(t, follower, ns, "a=90,b=10")

	start, end := nextWindow(sp, clock.Now())
	for i := range 12 {
		at := start.Add(time.Duration(i) * 800 * time.Millisecond)
		leader.router.Observe(ns, "acme", "b", 200, 30*time.Millisecond, at)
		follower.router.Observe(ns, "acme", "b", 502, 2*time.Millisecond, at) // a sick canary on one replica
		leader.router.Observe(ns, "acme", "a", 200, time.Millisecond, at)
	}
	clock.Set(end.Add(time.Second)) // the windows close; the publishers write them
	for _, replica := range []string{"pod-1", "pod-2"} {
		eventually(t, replica+" publishes its counts", func() (bool, string) {
			cm := &corev1.ConfigMap{}
			if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "main-analysis-" + replica}, cm); err != nil {
				return false, err.Error()
			}
			ref := metav1.GetControllerOf(cm)
			return cm.Labels[state.LabelComponent] == "analysis" && ref != nil && ref.UID == sp.UID && strings.Contains(cm.Data["counts.json"], `"b":{"activities":12`), cm.Data["counts.json"]
		})
	}
	clock.Set(end.Add(3 * time.Second))
	poke(t, sp)
	sp = waitSplit(t, sp, "the interval is judged on both replicas' counts", func(s *v1.TrafficSplit) bool {
		return s.Status.Rollout.Phase == v1.RolloutAborted
	})
	an := sp.Status.Rollout.Analysis
	b := an.Revisions[slices.IndexFunc(an.Revisions, func(f v1.RevisionFigures) bool { return f.RevisionName == "b" })]
	if !slices.Equal(an.Replicas, []string{"pod-1", "pod-2"}) || b.Activities != 24 || b.Errors != 12 || b.ErrorPercent != "50.00" {
		t.Fatalf("analysis of two replicas: %+v, b %+v", an, b)
	}
	waitTable(t, follower, ns, "a=100")
	waitTable(t, leader, ns, "a=100")
	// The rollout is over: its counts go.
	for _, replica := range []string{"pod-1", "pod-2"} {
		eventually(t, replica+"'s counts are deleted", func() (bool, string) {
			err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "main-analysis-" + replica}, &corev1.ConfigMap{})
			return apierrors.IsNotFound(err), fmt.Sprint(err)
		})
	}
}

// A rollout's whole state is in status: a new leader goes on where the old one stopped.
func TestCanaryGoesOnUnderANewLeader(t *testing.T) {
	testenv.Require(t, env)
	clock := newTestClock()
	old := startReplica(t, true, func(c *replicaConfig) { c.clock = clock.Now })
	ns := env.Namespace(t, "canary-failover")
	sp := startCanary(t, ns, canaryStrategy(1, false))
	healthy := map[string]dispatcher.Counts{"a": activities(90, 0, 5*time.Millisecond), "b": activities(20, 0, 5*time.Millisecond)}
	sp = judgeInterval(t, sp, clock, map[string]map[string]dispatcher.Counts{"r1": healthy})
	old.stop()

	successor := startReplica(t, true, func(c *replicaConfig) { c.clock = clock.Now })
	waitTable(t, successor, ns, "a=90,b=10")
	sp = endPause(t, sp, clock, 1, "a=50,b=50")
	waitTable(t, successor, ns, "a=50,b=50")
	if ro := sp.Status.Rollout; !slices.Equal(ro.StableRoutes, []v1.RouteStatus{{RevisionName: "a", Percent: 100}}) || ro.FailedIntervals != 0 {
		t.Fatalf("the new leader lost the rollout's state: %+v", ro)
	}
}

// The stable revision, which spec.routes no longer names, is not in the last step's
// table (the canary takes all of it), and GitOps prunes it: it must stay loaded while
// the rollout could still go back to it, so that an abort serves it again.
func TestCanaryKeepsTheStableRevisionToGoBackTo(t *testing.T) {
	testenv.Require(t, env)
	clock := newTestClock()
	r := startReplica(t, true, func(c *replicaConfig) { c.clock = clock.Now })
	ns := env.Namespace(t, "canary-prune")
	sp := startCanary(t, ns, canaryStrategy(1, true))
	setRoutes(t, sp, v1.Route{RevisionName: "b", Percent: 100, Tag: "canary"})
	for i := range 2 {
		annotate(t, sp, v1.AnnotationPromote, strconv.Itoa(i))
		waitSplit(t, sp, "promoted", func(s *v1.TrafficSplit) bool { return s.Status.Rollout.Promote == strconv.Itoa(i) })
	}
	waitSplit(t, sp, "the last step serves the canary alone", func(s *v1.TrafficSplit) bool {
		return s.Status.Rollout.Phase == v1.RolloutPaused && s.Status.Summary == "b=100"
	})
	if err := env.Client.Delete(ctx, revision(ns, "a", "acme", "ok.wasm")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the stable revision is deleted or kept for the rollout", func() (bool, string) {
		rev := &v1.Revision{}
		err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "a"}, rev)
		if apierrors.IsNotFound(err) {
			return true, ""
		} else if err != nil {
			return false, err.Error()
		}
		c := meta.FindStatusCondition(rev.Status.Conditions, v1.ConditionReady)
		return c != nil && strings.Contains(c.Message, "still routes to it"), fmt.Sprintf("%+v", c)
	})
	annotate(t, sp, v1.AnnotationAbort, "1")
	sp = waitSplit(t, sp, "the abort is taken", func(s *v1.TrafficSplit) bool { return s.Status.Rollout.Phase == v1.RolloutAborted })
	waitSplit(t, sp, "the stable table serves again", func(s *v1.TrafficSplit) bool { return s.Status.Summary == "a=100" })
	waitTable(t, r, ns, "a=100")
}

// spec.routes moved mid-rollout to a revision that cannot load (a typo): the running
// rollout is still judged, and a failing canary is still rolled back.
func TestCanaryStillJudgedWhileNewTargetWaits(t *testing.T) {
	testenv.Require(t, env)
	clock := newTestClock()
	r := startReplica(t, true, func(c *replicaConfig) { c.clock = clock.Now })
	ns := env.Namespace(t, "canary-typo")
	sp := startCanary(t, ns, canaryStrategy(1, false))
	setRoutes(t, sp, v1.Route{RevisionName: "a", Percent: 0}, v1.Route{RevisionName: "typo", Percent: 100})
	waitSplit(t, sp, "the new target waits", func(s *v1.TrafficSplit) bool {
		return condition(s, v1.ConditionReady).Reason == v1.ReasonRevisionNotFound
	})
	failing := map[string]dispatcher.Counts{"a": activities(90, 0, 5*time.Millisecond), "b": activities(40, 20, 5*time.Millisecond)}
	sp = judgeInterval(t, sp, clock, map[string]map[string]dispatcher.Counts{"r1": failing})
	if ro := sp.Status.Rollout; ro.Phase != v1.RolloutAborted || sp.Status.Summary != "a=100" {
		t.Fatalf("a failing canary was not rolled back: %s %s", ro.Phase, sp.Status.Summary)
	}
	waitTable(t, r, ns, "a=100")
}

// countingReader is the API server's reader, counting the ConfigMaps its lists return.
type countingReader struct {
	client.Reader
	listed int
}

func (r *countingReader) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	err := r.Reader.List(ctx, list, opts...)
	if cms, ok := list.(*corev1.ConfigMapList); ok {
		r.listed += len(cms.Items)
	}
	return err
}

// The leader reads one split's counts once per interval: it must receive that split's
// counts only, not every split's of the namespace, or 500 splits rolling out in one
// namespace make 500 lists of 500 splits' counts per interval.
func TestLeaderReadsOnlyTheSplitsCounts(t *testing.T) {
	testenv.Require(t, env)
	ns := env.Namespace(t, "canary-cost")
	var splits []*v1.TrafficSplit
	for i := range 20 {
		sp := split(ns, fmt.Sprintf("s%d", i), fmt.Sprintf("t%d", i), v1.Route{RevisionName: "a", Percent: 100})
		create(t, sp)
		publishCounts(t, sp, "r1", dispatcher.Window{Start: time.Unix(0, 0), End: time.Unix(10, 0)})
		splits = append(splits, sp)
	}
	reader := &countingReader{Reader: env.Client}
	n, err := controllers.ReadReports(ctx, reader, splits[0])
	if err != nil || n != 1 {
		t.Fatalf("reports of s0: %d, %v", n, err)
	}
	if reader.listed != 1 {
		t.Fatalf("reading s0's counts listed %d ConfigMaps, want its own 1", reader.listed)
	}
}

// A strategy with analysis is usually kept in Git for good; its tenant's activities are
// counted (every activity of every tenant pays the clock read and lookup) only while a
// rollout runs, not while the split sits at its stable table.
func TestActivitiesCountedOnlyDuringARollout(t *testing.T) {
	testenv.Require(t, env)
	clock := newTestClock()
	r := startReplica(t, true, func(c *replicaConfig) { c.clock = clock.Now })
	ns := env.Namespace(t, "canary-idle")
	analyzed := func() bool { _, interval := r.router.ClosedWindows(ns, "acme", clock.Now()); return interval > 0 }
	sp := startCanary(t, ns, canaryStrategy(1, false))
	if !analyzed() {
		t.Fatal("a running rollout's tenant is not counted")
	}
	annotate(t, sp, v1.AnnotationAbort, "1")
	waitSplit(t, sp, "aborted", func(s *v1.TrafficSplit) bool { return s.Status.Rollout.Phase == v1.RolloutAborted })
	eventually(t, "counting stops with the rollout", func() (bool, string) { return !analyzed(), "" })
}

// The API server refuses an event whose note is longer than 1024 bytes, and a rollout's
// notes name the stable table: with many routes of long names, the rollout's events
// must still be written, their notes cut.
func TestRolloutEventsOfLongTables(t *testing.T) {
	testenv.Require(t, env)
	clock := newTestClock()
	startReplica(t, true, func(c *replicaConfig) { c.clock = clock.Now })
	ns := env.Namespace(t, "canary-long")
	var revs []client.Object
	var stable, target []v1.Route
	for i := range 15 {
		name := fmt.Sprintf("r%02d-%s", i, strings.Repeat("x", 56))
		revs = append(revs, revision(ns, name, "acme", "ok.wasm"))
		stable = append(stable, v1.Route{RevisionName: name, Percent: int32(100 / 15)})
		target = append(target, v1.Route{RevisionName: name})
	}
	stable[0].Percent += 100 - 15*int32(100/15)
	canary := "b-" + strings.Repeat("y", 58)
	acme(t, ns, append(revs, revision(ns, canary, "acme", "ok.wasm"))...)
	sp := split(ns, "main", "acme", stable...)
	sp.Spec.Strategy = canaryStrategy(1, false)
	create(t, sp)
	waitSplit(t, sp, "the first table is in use", func(s *v1.TrafficSplit) bool {
		return s.Status.Rollout != nil && s.Status.Rollout.Phase == v1.RolloutSucceeded && condition(s, v1.ConditionReady).Status == metav1.ConditionTrue
	})
	setRoutes(t, sp, append(target, v1.Route{RevisionName: canary, Percent: 100})...)
	waitSplit(t, sp, "the rollout starts", func(s *v1.TrafficSplit) bool { return s.Status.Rollout.Phase == v1.RolloutProgressing })
	eventually(t, "the RolloutStarted event is written", func() (bool, string) {
		var list eventsv1.EventList
		if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return false, err.Error()
		}
		for _, e := range list.Items {
			if e.Regarding.Name == "main" && e.Reason == "RolloutStarted" {
				return len(e.Note) <= 1024 && strings.HasPrefix(e.Note, "rolling out "+canary), e.Note
			}
		}
		return false, fmt.Sprintf("%d events", len(list.Items))
	})
}
