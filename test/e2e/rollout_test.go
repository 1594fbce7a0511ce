package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/internal/testenv"
)

// The rollout story's tenant lives in its own namespace, so the samples' split in
// default is neither read nor moved.
const (
	rolloutNS = "rollout"
	// analysisInterval is the split's analysis interval: the shortest the API allows,
	// so the story takes seconds.
	analysisInterval = 5 * time.Second
)

// rolloutManifests: tenant shop, three Revisions of the flaky pack with the survey
// overlay (v1 and v3 healthy, v2 failing 60% of its activities), and a split on v1 whose
// canary strategy walks 10% (5s) → 50% (until promoted) → 100% (5s), judged every 5s.
func rolloutManifests() string {
	revision := func(name, errorPercent string) string {
		return fmt.Sprintf(`---
apiVersion: packhost.io/v1alpha1
kind: Revision
metadata: {name: %s, namespace: rollout}
spec:
  tenantRef: {name: shop}
  packs:
  - {name: flaky, image: %s/packs/flaky:v1}
  - {name: survey, image: %s/packs/survey:v1}
  config: {errorPercent: "%s", release: %s}
`, name, registryAddr, registryAddr, errorPercent, name)
	}
	return `apiVersion: v1
kind: Namespace
metadata: {name: rollout}
---
apiVersion: v1
kind: Secret
metadata: {name: shop-tokens, namespace: rollout, annotations: {packhost.io/tenants: shop}}
stringData: {demo: ` + token + `}
---
apiVersion: packhost.io/v1alpha1
kind: Tenant
metadata: {name: shop, namespace: rollout}
spec:
  auth: {secretRef: {name: shop-tokens}}
  limits: {activityTimeout: 5s}
` + revision("shop-v1", "0") + revision("shop-v2", "60") + revision("shop-v3", "0") + `---
apiVersion: packhost.io/v1alpha1
kind: TrafficSplit
metadata: {name: shop, namespace: rollout}
spec:
  tenantRef: {name: shop}
  routes: [{revisionName: shop-v1, percent: 100}]
  strategy:
    canary:
      steps:
      - {weight: 10, pause: 5s}
      - {weight: 50}
      - {weight: 100, pause: 5s}
      analysis: {interval: 5s, minActivities: 10, maxErrorPercent: 10, failureLimit: 1}
`
}

// traffic is a steady stream of activities from many users, spread over the managers,
// as the analysis needs: without enough of the canary's activities an interval is
// inconclusive.
type traffic struct {
	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	// byRevision counts the answers per revision and status, "shop-v2 502".
	byRevision map[string]int
}

// startTraffic sends about 50 activities a second for 200 users in turn (each a
// distinct activity, so the flaky pack's hash spreads its failures) until stopped.
func startTraffic(t *testing.T, managers ...*manager) *traffic {
	tr := &traffic{stop: make(chan struct{}), byRevision: map[string]int{}}
	for w := range 4 {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			tick := time.NewTicker(80 * time.Millisecond)
			defer tick.Stop()
			for n := w; ; n += 4 {
				select {
				case <-tr.stop:
					return
				case <-tick.C:
				}
				m := managers[n%len(managers)]
				r := m.post(t, rolloutNS, "shop", msg(fmt.Sprintf("user-%d", n%200), fmt.Sprintf(`"payload":{"n":%d}`, n)))
				tr.mu.Lock()
				tr.byRevision[fmt.Sprintf("%s %d", r.Revision, r.Status)]++
				tr.mu.Unlock()
			}
		}()
	}
	return tr
}

func (tr *traffic) halt(t *testing.T) {
	close(tr.stop)
	tr.wg.Wait()
	t.Logf("activities answered, by revision and status: %v", tr.byRevision)
}

// splitStatus reads the split as the controller last wrote it.
func splitStatus(t *testing.T) *v1.TrafficSplit {
	t.Helper()
	s := &v1.TrafficSplit{}
	if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: rolloutNS, Name: "shop"}, s); err != nil {
		t.Fatal(err)
	}
	return s
}

func rolloutPhase(s *v1.TrafficSplit) v1.RolloutPhase {
	if s.Status.Rollout == nil {
		return ""
	}
	return s.Status.Rollout.Phase
}

// percentOf is the share of the table in effect that routes to revision.
func percentOf(s *v1.TrafficSplit, revision string) int32 {
	for _, r := range s.Status.Routes {
		if r.RevisionName == revision {
			return r.Percent
		}
	}
	return 0
}

// park starts a survey for users pin-<tag>-0, -1, ... until one lands on revision and
// returns that user: its session then holds a wait on revision, which pins it there.
func park(t *testing.T, m *manager, tag, revision string) string {
	t.Helper()
	for i := range 300 {
		user := fmt.Sprintf("pin-%s-%d", tag, i)
		r := m.post(t, rolloutNS, "shop", msg(user, `"flow_id":"survey"`, `"payload":"start"`))
		if r.Status != 200 {
			t.Fatalf("survey start for %s: %d %s", user, r.Status, r.Error.Code)
		}
		if r.Revision == revision {
			return user
		}
	}
	t.Fatalf("no user's survey landed on %s in 300 tries", revision)
	return ""
}

// resumes checks that user's parked survey goes on on revision, whatever the table.
func resumes(t *testing.T, m *manager, user, revision string) {
	t.Helper()
	r := m.post(t, rolloutNS, "shop", msg(user, `"payload":"\"Sam\""`))
	if r.Status != 200 || r.Revision != revision || len(r.Activities) == 0 || !strings.Contains(string(r.Activities[0].Payload), `"step":2`) {
		t.Fatalf("%s's parked survey did not resume on %s: %+v", user, revision, r)
	}
}

// kubectlPackhost runs the plugin binary against the test cluster.
func kubectlPackhost(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, err := exec.Command(bin, append([]string{"--kubeconfig", kubeconfig, "-n", rolloutNS}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl packhost %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestCanaryRollout is the rollout story of issue 17: a flaky canary is rolled back by
// the analysis within two intervals, a healthy one walks 10 → 50 → 100 with a promote
// from the kubectl plugin, and sessions parked on either side keep their revision. Two
// managers serve the traffic, so the leader judges counts summed over both.
func TestCanaryRollout(t *testing.T) {
	testenv.Require(t, env)
	plugin := filepath.Join(workDir, "kubectl-packhost")
	build := exec.Command("go", "build", "-o", plugin, "./cmd/kubectl-packhost")
	build.Dir = testenv.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the plugin: %v\n%s", err, out)
	}
	// Both run on this host: each needs its own name for the counts it publishes.
	m1 := startManager(t, filepath.Join(workDir, "cache-rollout-a"), "--replica-name=rollout-a")
	m2 := startManager(t, filepath.Join(workDir, "cache-rollout-b"), "--replica-name=rollout-b")

	mustKubectl(t, rolloutManifests(), "apply", "--server-side", "-f", "-")
	mustKubectl(t, "", "wait", "-n", rolloutNS, "--for=condition=Ready", "--timeout=180s", "phrev", "--all")
	mustKubectl(t, "", "wait", "-n", rolloutNS, "--for=condition=Ready", "--timeout=60s", "phtenant/shop", "phsplit/shop")
	for _, m := range []*manager{m1, m2} {
		waitFor(t, 60*time.Second, func() bool { return m.post(t, rolloutNS, "shop", msg("probe")).Status == 200 }, "both dispatchers serve shop")
	}
	tr := startTraffic(t, m1, m2)
	defer tr.halt(t)

	var pinnedV2, pinnedV1 string
	// Each step goes on from the state the one before left: a failed step ends the story.
	if !t.Run("a flaky canary is rolled back within two analysis intervals", func(t *testing.T) {
		mustKubectl(t, "", "patch", "-n", rolloutNS, "phsplit", "shop", "--type=merge", "-p", `{"spec":{"routes":[{"revisionName":"shop-v2","percent":100}]}}`)
		var started *v1.TrafficSplit
		waitFor(t, 60*time.Second, func() bool {
			started = splitStatus(t)
			return rolloutPhase(started) == v1.RolloutProgressing && percentOf(started, "shop-v2") == 10
		}, "the rollout routes 10% to shop-v2")
		// Reconciling=True while it runs: kstatus InProgress. (Read from the status that
		// showed the step: a kubectl wait could start after the abort on a slow machine.)
		if c := meta.FindStatusCondition(started.Status.Conditions, "Reconciling"); c == nil || c.Status != "True" || c.ObservedGeneration != started.Generation {
			t.Errorf("Reconciling while the canary takes 10%%: %+v", c)
		}
		// Sessions parked while the canary takes its 10%, on either side.
		pinnedV2 = park(t, m1, "v2", "shop-v2")
		pinnedV1 = park(t, m2, "v1", "shop-v1")

		mustKubectl(t, "", "wait", "-n", rolloutNS, "--for=condition=Stalled", "--timeout=60s", "phsplit/shop")
		s := splitStatus(t)
		r := s.Status.Rollout
		if r == nil || r.Phase != v1.RolloutAborted || r.Analysis == nil || r.Analysis.Verdict != v1.AnalysisFailed {
			t.Fatalf("after Stalled the rollout is %+v", r)
		}
		// The interval that failed is the step's first or second: the step may start in
		// the middle of a clock-aligned interval, which then has too few activities to
		// judge.
		if limit := r.StepStartTime.Add(2*analysisInterval + time.Second); r.Analysis.IntervalEnd.After(limit) {
			t.Errorf("the failing interval ended at %s, more than two intervals after the step started at %s", r.Analysis.IntervalEnd, r.StepStartTime)
		}
		if got := percentOf(s, "shop-v1"); got != 100 {
			t.Errorf("after the abort the table in effect is %s, want shop-v1=100", s.Status.Summary)
		}
		if !slices.Equal(r.Analysis.Replicas, []string{"rollout-a", "rollout-b"}) || len(r.Analysis.MissingReplicas) != 0 {
			t.Errorf("the failing interval counted replicas %v (missing %v), want both managers", r.Analysis.Replicas, r.Analysis.MissingReplicas)
		}
		for _, typ := range []string{"Degraded", "Stalled"} {
			c := meta.FindStatusCondition(s.Status.Conditions, typ)
			if c == nil || c.Status != "True" || c.Reason != v1.ReasonRolloutAborted || c.ObservedGeneration != s.Generation || !strings.Contains(c.Message, "shop-v2") {
				t.Errorf("%s condition: %+v", typ, c)
			}
		}
		if c := meta.FindStatusCondition(s.Status.Conditions, "Ready"); c == nil || c.Status != "False" {
			t.Errorf("Ready condition after the abort: %+v", c)
		}
		t.Logf("rolled back %s after the step started; failing interval: %s", r.Analysis.IntervalEnd.Sub(r.StepStartTime.Time), r.Analysis.Message)

		out := kubectlPackhost(t, plugin, "get", "split", "shop")
		showsAll(t, out, `Status: +Aborted`, `<- aborted here`, `shop-v2 +canary +\d+ +\d+`, `Last interval: .*Failed`)
		t.Logf("kubectl packhost get split shop:\n%s", out)

		// New sessions go to the stable revision; the ones parked on the canary keep it.
		for i := range 30 {
			if r := m1.post(t, rolloutNS, "shop", msg(fmt.Sprintf("after-abort-%d", i))); r.Status != 200 || r.Revision != "shop-v1" {
				t.Fatalf("a new session after the abort: %+v", r)
			}
		}
		resumes(t, m2, pinnedV2, "shop-v2")
		resumes(t, m1, pinnedV1, "shop-v1")
	}) {
		return
	}

	if !t.Run("a retry walks the steps again and is rolled back again", func(t *testing.T) {
		before := splitStatus(t).Status.Rollout.Analysis.IntervalEnd
		kubectlPackhost(t, plugin, "retry", "shop")
		waitFor(t, 60*time.Second, func() bool {
			r := splitStatus(t).Status.Rollout
			return r.Phase == v1.RolloutAborted && r.Analysis != nil && r.Analysis.IntervalEnd.After(before.Time)
		}, "the retried rollout is aborted by a later interval")
		s := splitStatus(t)
		if asked := s.Annotations[v1.AnnotationRetry]; asked == "" || s.Status.Rollout.Retry != asked {
			t.Errorf("the controller records retry %q, the plugin asked for %q", s.Status.Rollout.Retry, asked)
		}
	}) {
		return
	}

	t.Run("a healthy canary is promoted through 10, 50 and 100", func(t *testing.T) {
		// Every table the split takes on the way, as the dispatcher is told it.
		var seen []int32
		var mu sync.Mutex
		sample := func() { // also from a goroutine: no t.Fatal here
			s := &v1.TrafficSplit{}
			if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: rolloutNS, Name: "shop"}, s); err != nil {
				return
			}
			p := percentOf(s, "shop-v3")
			mu.Lock()
			defer mu.Unlock()
			if len(seen) == 0 || seen[len(seen)-1] != p {
				seen = append(seen, p)
			}
		}
		sample()
		watchDone := make(chan struct{})
		stopWatch := make(chan struct{})
		go func() {
			defer close(watchDone)
			for {
				select {
				case <-stopWatch:
					return
				case <-time.After(100 * time.Millisecond):
				}
				sample()
			}
		}()
		mustKubectl(t, "", "patch", "-n", rolloutNS, "phsplit", "shop", "--type=merge", "-p", `{"spec":{"routes":[{"revisionName":"shop-v3","percent":100}]}}`)
		waitFor(t, 60*time.Second, func() bool { return percentOf(splitStatus(t), "shop-v3") == 10 }, "the rollout routes 10% to shop-v3")
		pinnedOld := park(t, m1, "old", "shop-v1")
		pinnedNew := park(t, m2, "new", "shop-v3")
		onCanary := map[string]bool{}
		for i := range 100 {
			user := fmt.Sprintf("sticky-%d", i)
			if r := m1.post(t, rolloutNS, "shop", msg(user)); r.Revision == "shop-v3" {
				onCanary[user] = true
			}
		}

		waitFor(t, 90*time.Second, func() bool { return rolloutPhase(splitStatus(t)) == v1.RolloutPaused }, "the rollout pauses at 50%")
		if p := percentOf(splitStatus(t), "shop-v3"); p != 50 {
			t.Fatalf("paused with shop-v3 at %d%%, want 50", p)
		}
		out := kubectlPackhost(t, plugin, "get", "split", "shop")
		showsAll(t, out, `Status: +Paused`, `Step: +2 of 3, canary at 50%`, `2 +50% +until promoted +<- current, paused`, `shop-v3 +- +50% +- +100%`)
		t.Logf("kubectl packhost get split shop:\n%s", out)
		// Raising the canary's share moves users onto it, never off it.
		for user := range onCanary {
			if r := m2.post(t, rolloutNS, "shop", msg(user)); r.Revision != "shop-v3" {
				t.Errorf("%s was on the canary at 10%% and is on %s at 50%%", user, r.Revision)
			}
		}

		kubectlPackhost(t, plugin, "promote", "shop")
		mustKubectl(t, "", "wait", "-n", rolloutNS, "--for=condition=Ready", "--timeout=90s", "phsplit/shop")
		close(stopWatch)
		<-watchDone
		s := splitStatus(t)
		if rolloutPhase(s) != v1.RolloutSucceeded || s.Status.Summary != "shop-v3=100" || s.Status.ObservedGeneration != s.Generation {
			t.Fatalf("after Ready the rollout is %+v, table %s", s.Status.Rollout, s.Status.Summary)
		}
		for _, typ := range []string{"Reconciling", "Stalled", "Degraded"} {
			if c := meta.FindStatusCondition(s.Status.Conditions, typ); c != nil && c.Status == "True" {
				t.Errorf("%s is True after the rollout succeeded: %+v", typ, c)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if !slices.Equal(seen, []int32{0, 10, 50, 100}) {
			t.Errorf("shop-v3's share went %v, want 0 → 10 → 50 → 100", seen)
		}

		// Parked sessions kept their revision through every step.
		resumes(t, m2, pinnedOld, "shop-v1")
		resumes(t, m1, pinnedNew, "shop-v3")
	})
}

// showsAll checks that out has a line matching each pattern.
func showsAll(t *testing.T, out string, patterns ...string) {
	t.Helper()
	for _, p := range patterns {
		if !regexp.MustCompile(p).MatchString(out) {
			t.Errorf("kubectl packhost get split shows no line like %q:\n%s", p, out)
		}
	}
}
