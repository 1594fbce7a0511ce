package controllers

// The pure decisions of a canary rollout: which table a step serves, how an analysis
// interval is summed over replicas and judged, and where the rollout goes next. The
// split controller gathers what they take (the split, the annotations, the replicas'
// published counts, the time) and applies what they return.

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/dispatcher"
)

// Intervals of a rollout's analysis.
const (
	// replicaGoneAfter is how many intervals a replica's counts may lag the judged
	// interval and still be named missing; one further behind is a replica that is gone
	// (a restarted pod's old name), and its counts object is deleted.
	replicaGoneAfter = 10
	// minRolloutRequeue is the soonest a running rollout is looked at again.
	minRolloutRequeue = 100 * time.Millisecond
)

// analysisGrace is how long after an interval closes the leader waits for the replicas'
// counts of it: a quarter of the interval, between 1s and 5s. Replicas publish within
// a publish tick (countsTick) of the close.
func analysisGrace(interval time.Duration) time.Duration {
	return min(max(interval/4, time.Second), 5*time.Second)
}

// analysisInterval is a strategy's analysis interval (the CRD defaults it to 1m).
func analysisInterval(a *v1.CanaryAnalysis) time.Duration {
	if a == nil || a.Interval == nil || a.Interval.Duration <= 0 {
		return time.Minute
	}
	return a.Interval.Duration
}

// rolloutRunning says whether a rollout serves a step's table.
func rolloutRunning(ro *v1.RolloutStatus) bool {
	return ro != nil && (ro.Phase == v1.RolloutProgressing || ro.Phase == v1.RolloutPaused)
}

// judgedWindow is the analysis interval to judge at now: the latest that closed at
// least the grace ago, when it began at or after the step in effect and was not judged
// yet. Intervals are aligned to multiples of interval since the Unix epoch, as the
// dispatcher counts them.
func judgedWindow(ro *v1.RolloutStatus, interval time.Duration, now time.Time) (start, end time.Time, ok bool) {
	if !rolloutRunning(ro) || ro.StepStartTime == nil || interval <= 0 {
		return start, end, false
	}
	n := now.Add(-analysisGrace(interval)).UnixNano()/int64(interval) - 1
	start = time.Unix(0, n*int64(interval)).UTC()
	end = start.Add(interval)
	if start.Before(ro.StepStartTime.Time) || (ro.Analysis != nil && !end.After(ro.Analysis.IntervalEnd.Time)) {
		return start, end, false
	}
	return start, end, true
}

// countsReport is what one replica publishes for a split: its latest closed windows.
type countsReport struct {
	// Replica names the manager replica (its pod's name).
	Replica string `json:"replica"`
	// Windows are its closed windows, oldest first.
	Windows []dispatcher.Window `json:"windows"`
}

// intervalFigures are the replicas' counts of one interval, summed.
type intervalFigures struct {
	start, end time.Time
	// revisions are the summed counts by revision.
	revisions map[string]dispatcher.Counts
	// replicas were counted; missing published before but not this interval; gone
	// have not published for replicaGoneAfter intervals (all sorted).
	replicas, missing, gone []string
}

// sumReports sums the replicas' counts of the interval [start, end). A replica that
// did not publish it is not counted: named missing, or gone when its newest window is
// replicaGoneAfter intervals old.
func sumReports(reports []countsReport, start, end time.Time) intervalFigures {
	f := intervalFigures{start: start, end: end, revisions: map[string]dispatcher.Counts{}}
	interval := end.Sub(start)
	for _, rep := range reports {
		i := slices.IndexFunc(rep.Windows, func(w dispatcher.Window) bool { return w.Start.Equal(start) && w.End.Equal(end) })
		if i < 0 {
			newest := time.Time{}
			for _, w := range rep.Windows {
				newest = maxTime(newest, w.End)
			}
			if end.Sub(newest) > replicaGoneAfter*interval {
				f.gone = append(f.gone, rep.Replica)
			} else {
				f.missing = append(f.missing, rep.Replica)
			}
			continue
		}
		f.replicas = append(f.replicas, rep.Replica)
		for rev, c := range rep.Windows[i].Revisions {
			sum := f.revisions[rev]
			sum.Add(c)
			f.revisions[rev] = sum
		}
	}
	slices.Sort(f.replicas)
	slices.Sort(f.missing)
	slices.Sort(f.gone)
	return f
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// judge decides an interval from the canary revisions' summed counts: Inconclusive
// below minActivities, Failed past maxErrorPercent or maxP99, else Passed. The message
// has the figures.
func judge(f intervalFigures, canaries []string, a *v1.CanaryAnalysis) (v1.AnalysisVerdict, string) {
	var c dispatcher.Counts
	for _, name := range canaries {
		c.Add(f.revisions[name])
	}
	figures := fmt.Sprintf("%s: %d activities, %d errors (%s%%), p99 %s", strings.Join(canaries, "+"),
		c.Activities, c.Errors, percent(c), c.Quantile(0.99))
	if c.Activities < int64(a.MinActivities) || c.Activities == 0 {
		return v1.AnalysisInconclusive, fmt.Sprintf("%s: fewer than minActivities %d", figures, a.MinActivities)
	}
	var failed []string
	if a.MaxErrorPercent != nil && c.ErrorPercent() > float64(*a.MaxErrorPercent) {
		failed = append(failed, fmt.Sprintf("error rate above maxErrorPercent %d%%", *a.MaxErrorPercent))
	}
	if a.MaxP99 != nil && c.Quantile(0.99) > a.MaxP99.Duration {
		failed = append(failed, fmt.Sprintf("p99 above maxP99 %s", a.MaxP99.Duration))
	}
	if len(failed) > 0 {
		return v1.AnalysisFailed, figures + ": " + strings.Join(failed, ", ")
	}
	return v1.AnalysisPassed, figures
}

func percent(c dispatcher.Counts) string { return fmt.Sprintf("%.2f", c.ErrorPercent()) }

// analysisStatus is the status of a judged interval, with the figures of each revision
// of table (in its order) and of any other revision counted.
func analysisStatus(f intervalFigures, table []v1.RouteStatus, canaries []string, verdict v1.AnalysisVerdict, message string) *v1.AnalysisStatus {
	out := &v1.AnalysisStatus{
		IntervalStart: metav1.NewTime(f.start), IntervalEnd: metav1.NewTime(f.end),
		Verdict: verdict, Message: message, Replicas: f.replicas, MissingReplicas: f.missing,
	}
	names := make([]string, 0, len(table))
	for _, rt := range table {
		names = append(names, rt.RevisionName)
	}
	for _, name := range canaries {
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	for _, name := range names {
		c := f.revisions[name]
		fig := v1.RevisionFigures{RevisionName: name, Canary: slices.Contains(canaries, name),
			Activities: c.Activities, Errors: c.Errors, ErrorPercent: percent(c)}
		if c.Activities > 0 {
			fig.P99 = &metav1.Duration{Duration: c.Quantile(0.99)}
		}
		out.Revisions = append(out.Revisions, fig)
	}
	return out
}

// routeStatusesOf are routes as a table's status (no counts).
func routeStatusesOf(routes []v1.Route) []v1.RouteStatus {
	out := make([]v1.RouteStatus, len(routes))
	for i, rt := range routes {
		out[i] = v1.RouteStatus{RevisionName: rt.RevisionName, Percent: rt.Percent, Tag: rt.Tag}
	}
	return out
}

// specRoutesOf are a table's routes as spec.routes writes them.
func specRoutesOf(table []v1.RouteStatus) []v1.Route {
	out := make([]v1.Route, len(table))
	for i, rt := range table {
		out[i] = v1.Route{RevisionName: rt.RevisionName, Percent: rt.Percent, Tag: rt.Tag}
	}
	return out
}

// tableOf is a table without its dispatched counts, to compare tables.
func tableOf(routes []v1.RouteStatus) []v1.RouteStatus {
	out := make([]v1.RouteStatus, len(routes))
	for i, rt := range routes {
		out[i] = v1.RouteStatus{RevisionName: rt.RevisionName, Percent: rt.Percent, Tag: rt.Tag}
	}
	return out
}

// canaryRevisions are the revisions target gives a percent and stable none.
func canaryRevisions(stable, target []v1.RouteStatus) []string {
	var out []string
	for _, rt := range target {
		if rt.Percent > 0 && percentOf(stable, rt.RevisionName) == 0 {
			out = append(out, rt.RevisionName)
		}
	}
	return out
}

func percentOf(table []v1.RouteStatus, revision string) int32 {
	for _, rt := range table {
		if rt.RevisionName == revision {
			return rt.Percent
		}
	}
	return 0
}

// scalePercents scales percents to add up to total, by largest remainder (ties to the
// earlier), so the result is whole percents that add up exactly. All zero stays zero.
func scalePercents(percents []int32, total int32) []int32 {
	var sum int64
	for _, p := range percents {
		sum += int64(p)
	}
	out := make([]int32, len(percents))
	if sum == 0 {
		return out
	}
	type rem struct {
		i int
		r int64
	}
	rems := make([]rem, len(percents))
	left := int64(total)
	for i, p := range percents {
		n := int64(p) * int64(total)
		out[i] = int32(n / sum)
		left -= n / sum
		rems[i] = rem{i, n % sum}
	}
	slices.SortStableFunc(rems, func(a, b rem) int { return cmp.Compare(b.r, a.r) })
	for k := 0; left > 0; k++ {
		out[rems[k].i]++
		left--
	}
	return out
}

// stepRoutes is the table of a step that gives the canary revisions weight percent: the
// canaries share min(weight, their share in target) as target shares it, the stable
// routes the rest in their proportions. Tags are target's; a stable revision that
// target drops keeps its tag unless target gives the tag to another revision. Routes
// target adds at 0 (reachable by tag) are kept at 0. At or above the canaries' share,
// the table is target itself.
func stepRoutes(stable, target []v1.RouteStatus, canaries []string, weight int32) []v1.RouteStatus {
	var share int32
	var canaryPercents []int32
	for _, rt := range target {
		if slices.Contains(canaries, rt.RevisionName) {
			share += rt.Percent
			canaryPercents = append(canaryPercents, rt.Percent)
		}
	}
	if weight >= share {
		return tableOf(target)
	}
	stablePercents := make([]int32, len(stable))
	for i, rt := range stable {
		stablePercents[i] = rt.Percent
	}
	stableScaled := scalePercents(stablePercents, 100-weight)
	canaryScaled := scalePercents(canaryPercents, weight)
	tag := func(rt v1.RouteStatus) string {
		if i := slices.IndexFunc(target, func(t v1.RouteStatus) bool { return t.RevisionName == rt.RevisionName }); i >= 0 {
			return target[i].Tag
		}
		if rt.Tag != "" && slices.ContainsFunc(target, func(t v1.RouteStatus) bool { return t.Tag == rt.Tag }) {
			return ""
		}
		return rt.Tag
	}
	var out []v1.RouteStatus
	for i, rt := range stable {
		out = append(out, v1.RouteStatus{RevisionName: rt.RevisionName, Percent: stableScaled[i], Tag: tag(rt)})
	}
	k := 0
	for _, rt := range target {
		switch {
		case slices.Contains(canaries, rt.RevisionName):
			out = append(out, v1.RouteStatus{RevisionName: rt.RevisionName, Percent: canaryScaled[k], Tag: rt.Tag})
			k++
		case !slices.ContainsFunc(stable, func(s v1.RouteStatus) bool { return s.RevisionName == rt.RevisionName }):
			out = append(out, v1.RouteStatus{RevisionName: rt.RevisionName, Tag: rt.Tag})
		}
	}
	return out
}

// rolloutInput is what a reconcile gathered for a split's rollout.
type rolloutInput struct {
	// spec is spec.routes, the rollout's target.
	spec []v1.Route
	// canary is spec.strategy.canary (not nil).
	canary *v1.CanaryStrategy
	// current is the table in use (status.routes); nil when none is.
	current []v1.RouteStatus
	// prev is status.rollout as it was; nil before the first rollout.
	prev *v1.RolloutStatus
	// annotations are the split's (the actions).
	annotations map[string]string
	now         time.Time
	// figures are the replicas' summed counts of the interval to judge, when one is due
	// (see judgedWindow).
	figures *intervalFigures
	// hold says why the step's table cannot be served (a revision of the target is not
	// Ready); while set, steps do not advance, by time or promote.
	hold string
}

// rolloutEvent is an event to write on the split.
type rolloutEvent struct {
	warning        bool
	reason, action string
	message        string
}

// rolloutDecision is what becomes of the split's rollout.
type rolloutDecision struct {
	// status is the new status.rollout.
	status *v1.RolloutStatus
	// routes is the table to serve (status.routes).
	routes []v1.RouteStatus
	events []rolloutEvent
	// requeue is when to look again; 0 when nothing is due by time alone.
	requeue time.Duration
}

// decideRollout walks a split's canary rollout one reconcile further: a change of the
// target starts (or re-aims) a rollout, the interval due is judged, the actions asked
// for by annotation are taken, and steps whose time has come advance.
func decideRollout(in rolloutInput) rolloutDecision {
	var d rolloutDecision
	ro := &v1.RolloutStatus{}
	if in.prev != nil {
		ro = in.prev.DeepCopy()
	} else {
		// No rollout status yet (the first strategy, or one added again after it was
		// removed): the action values already there were not asked of any rollout that
		// starts now. They are recorded, not acted on.
		ro.Promote, ro.Abort, ro.Retry = in.annotations[v1.AnnotationPromote], in.annotations[v1.AnnotationAbort], in.annotations[v1.AnnotationRetry]
	}
	target := routeStatusesOf(in.spec)
	steps := in.canary.Steps
	analysis := in.canary.Analysis
	startTime := metav1.NewTime(in.now.UTC().Truncate(time.Second))
	start := func(step int32) {
		ro.Step, ro.StepStartTime, ro.PassedIntervals = step, &startTime, 0
		ro.Phase = stepPhase(steps[step])
	}

	// A new target: roll out to it from the stable table, unless it brings no revision
	// in, or there is no table in use to roll out from.
	if !slices.Equal(tableOf(ro.TargetRoutes), target) || ro.Phase == "" {
		stable := tableOf(in.current)
		if rolloutRunning(ro) || ro.Phase == v1.RolloutAborted {
			stable = ro.StableRoutes
		}
		canaries := canaryRevisions(stable, target)
		sameCanaries := rolloutRunning(ro) && slices.Equal(canaries, ro.CanaryRevisions)
		ro.TargetRoutes, ro.CanaryRevisions = target, canaries
		switch {
		case len(in.current) == 0 || len(canaries) == 0:
			ro.Phase, ro.StableRoutes, ro.CanaryRevisions, ro.Analysis = v1.RolloutSucceeded, target, nil, nil
			ro.Message = "routes applied at once: they bring in no new revision, or no table was in use"
		case sameCanaries:
			// Only the target's percents moved: the rollout goes on where it is.
		default:
			ro.StableRoutes, ro.FailedIntervals, ro.Analysis = stable, 0, nil
			start(0)
			d.events = append(d.events, rolloutEvent{reason: "RolloutStarted", action: "Rollout",
				message: fmt.Sprintf("rolling out %s in %d steps from %s", strings.Join(canaries, ","), len(steps), summary(stable))})
		}
	}
	if int(ro.Step) >= len(steps) {
		ro.Step = int32(len(steps) - 1) // the steps were shortened meanwhile
	}

	// The interval due, judged for the step it fell in.
	if in.figures != nil && rolloutRunning(ro) && analysis != nil && !in.figures.start.Before(ro.StepStartTime.Time) {
		verdict, msg := judge(*in.figures, ro.CanaryRevisions, analysis)
		ro.Analysis = analysisStatus(*in.figures, stepRoutes(ro.StableRoutes, target, ro.CanaryRevisions, steps[ro.Step].Weight), ro.CanaryRevisions, verdict, msg)
		switch verdict {
		case v1.AnalysisPassed:
			ro.PassedIntervals++
		case v1.AnalysisFailed:
			ro.FailedIntervals++
			if ro.FailedIntervals >= analysis.FailureLimit {
				ro.Phase = v1.RolloutAborted
				ro.Message = fmt.Sprintf("analysis failed %d of failureLimit %d intervals; interval %s–%s: %s; back to %s",
					ro.FailedIntervals, analysis.FailureLimit, in.figures.start.Format(time.TimeOnly), in.figures.end.Format(time.TimeOnly), msg, summary(ro.StableRoutes))
				d.events = append(d.events, rolloutEvent{warning: true, reason: v1.ReasonRolloutAborted, action: "Rollback", message: ro.Message})
			}
		}
	}

	// Actions: each new annotation value acts once, and is recorded whether it applied
	// or not, so a value kept in Git never acts again.
	promote := false
	if v := in.annotations[v1.AnnotationRetry]; v != ro.Retry {
		ro.Retry = v
		if v != "" && ro.Phase == v1.RolloutAborted {
			ro.FailedIntervals, ro.Analysis = 0, nil
			start(0)
			d.events = append(d.events, rolloutEvent{reason: "RolloutRetried", action: "Retry",
				message: fmt.Sprintf("retrying the rollout of %s from its first step (%s)", strings.Join(ro.CanaryRevisions, ","), quoteAction(v1.AnnotationRetry, v))})
		}
	}
	if v := in.annotations[v1.AnnotationAbort]; v != ro.Abort {
		ro.Abort = v
		if v != "" && rolloutRunning(ro) {
			ro.Phase = v1.RolloutAborted
			ro.Message = fmt.Sprintf("aborted by %s; back to %s", quoteAction(v1.AnnotationAbort, v), summary(ro.StableRoutes))
			d.events = append(d.events, rolloutEvent{warning: true, reason: v1.ReasonRolloutAborted, action: "Rollback", message: ro.Message})
		}
	}
	if v := in.annotations[v1.AnnotationPromote]; v != ro.Promote {
		ro.Promote = v
		promote = v != "" && rolloutRunning(ro)
	}

	// Steps whose time has come, or that a promote ends.
	for rolloutRunning(ro) {
		step := steps[ro.Step]
		due := step.Pause != nil && !in.now.Before(ro.StepStartTime.Add(step.Pause.Duration)) &&
			(analysis == nil || ro.PassedIntervals > 0)
		if (!due && !promote) || in.hold != "" {
			break
		}
		how := "its pause passed"
		if promote {
			how = quoteAction(v1.AnnotationPromote, ro.Promote)
		}
		promote = false
		if int(ro.Step)+1 >= len(steps) {
			ro.Phase, ro.StableRoutes, ro.Analysis = v1.RolloutSucceeded, target, nil
			ro.Message = fmt.Sprintf("every step passed (the last one: %s); %s is stable", how, summary(target))
			d.events = append(d.events, rolloutEvent{reason: v1.ReasonRolloutSucceeded, action: "Promote", message: ro.Message})
			break
		}
		start(ro.Step + 1)
		d.events = append(d.events, rolloutEvent{reason: "RolloutStep", action: "Promote",
			message: fmt.Sprintf("step %d/%d: %s at %d%% (%s)", ro.Step+1, len(steps), strings.Join(ro.CanaryRevisions, ","), steps[ro.Step].Weight, how)})
	}

	switch {
	case rolloutRunning(ro):
		ro.Phase = stepPhase(steps[ro.Step]) // the steps may have been edited meanwhile
		d.routes = stepRoutes(ro.StableRoutes, target, ro.CanaryRevisions, steps[ro.Step].Weight)
		ro.Message = stepMessage(ro, steps, analysis, in.now)
		if in.hold != "" {
			ro.Message += "; holds while " + in.hold
		}
		d.requeue = rolloutRequeue(ro, steps[ro.Step], analysis, in.now)
	case ro.Phase == v1.RolloutAborted:
		d.routes = tableOf(ro.StableRoutes)
	default:
		d.routes = target
	}
	d.status = ro
	return d
}

// quotedActionBytes is how much of an action's value messages quote: the value is the
// user's (an annotation may hold 256 KiB), and a condition's message is bounded.
const quotedActionBytes = 64

// quoteAction is annotation=value for a message, the value cut to quotedActionBytes.
func quoteAction(annotation, value string) string {
	return annotation + "=" + cut(value, quotedActionBytes)
}

// cut is s when it has at most n bytes, else its first whole characters and "…", n
// bytes at most.
func cut(s string, n int) string {
	const ellipsis = "…"
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:max(n-len(ellipsis), 0)], "") + ellipsis
}

// stepPhase is the phase of a running step: Paused when it has no pause (it waits for
// a promote), else Progressing.
func stepPhase(step v1.CanaryStep) v1.RolloutPhase {
	if step.Pause == nil {
		return v1.RolloutPaused
	}
	return v1.RolloutProgressing
}

// stepMessage says what a running step holds for.
func stepMessage(ro *v1.RolloutStatus, steps []v1.CanaryStep, a *v1.CanaryAnalysis, now time.Time) string {
	step := steps[ro.Step]
	msg := fmt.Sprintf("step %d/%d: %s at %d%%", ro.Step+1, len(steps), strings.Join(ro.CanaryRevisions, ","), step.Weight)
	if step.Pause == nil {
		return msg + ": waits for a promote (annotate " + v1.AnnotationPromote + " with a new value)"
	}
	var holds []string
	if end := ro.StepStartTime.Add(step.Pause.Duration); now.Before(end) {
		holds = append(holds, "until "+end.UTC().Format(time.RFC3339))
	}
	if a != nil && ro.PassedIntervals == 0 {
		h := "for an analysis interval that passes"
		if ro.Analysis != nil {
			h += fmt.Sprintf(" (last: %s, %s)", ro.Analysis.Verdict, ro.Analysis.Message)
		}
		holds = append(holds, h)
	}
	return msg + ": holds " + strings.Join(holds, " and ")
}

// rolloutRequeue is when a running step is next due: its pause's end or the next
// interval's judgement, whichever comes first.
func rolloutRequeue(ro *v1.RolloutStatus, step v1.CanaryStep, a *v1.CanaryAnalysis, now time.Time) time.Duration {
	var next time.Duration
	if step.Pause != nil {
		if left := ro.StepStartTime.Add(step.Pause.Duration).Sub(now); left > 0 {
			next = left
		}
	}
	if a != nil {
		interval := analysisInterval(a)
		grace := analysisGrace(interval)
		// The next interval to close that began in the step.
		end := (now.Add(-grace).UnixNano()/int64(interval) + 1) * int64(interval)
		first := (ro.StepStartTime.UnixNano()+int64(interval)-1)/int64(interval)*int64(interval) + int64(interval)
		judge := time.Unix(0, max(end, first)).Add(grace).Sub(now)
		if next == 0 || judge < next {
			next = judge
		}
	}
	if next == 0 {
		return 0
	}
	return max(next, minRolloutRequeue)
}

// summary is a table in one line, as status.summary shows it.
func summary(routes []v1.RouteStatus) string {
	parts := make([]string, len(routes))
	for i, rt := range routes {
		parts[i] = fmt.Sprintf("%s=%d", rt.RevisionName, rt.Percent)
	}
	return strings.Join(parts, ",")
}
