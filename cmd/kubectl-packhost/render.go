package main

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"

	packhostv1alpha1 "github.com/packhost/packhost/api/v1alpha1"
)

// render writes the split as `get split` shows it: a header of what it is and where its
// rollout stands, then the steps, the last analysis interval and the routing tables.
// now is when it is shown, for the ages; rendering reads nothing else, so it is tested
// on fixed objects.
func render(dst io.Writer, s *packhostv1alpha1.TrafficSplit, now time.Time) error {
	var out bytes.Buffer
	defer func() {
		// A row whose last cells are empty would end in padding.
		for line := range strings.Lines(out.String()) {
			io.WriteString(dst, strings.TrimRight(line, " \n")+"\n")
		}
	}()
	var canary *packhostv1alpha1.CanaryStrategy
	if s.Spec.Strategy != nil {
		canary = s.Spec.Strategy.Canary
	}
	r := s.Status.Rollout

	w := newSection(&out)
	fmt.Fprintf(w, "Name:\t%s\n", s.Name)
	fmt.Fprintf(w, "Namespace:\t%s\n", s.Namespace)
	fmt.Fprintf(w, "Tenant:\t%s\n", s.Spec.TenantRef.Name)
	fmt.Fprintf(w, "Status:\t%s\n", status(s))
	if r != nil && r.Message != "" {
		fmt.Fprintf(w, "Message:\t%s\n", printable(r.Message))
	}
	if canary != nil && r != nil && r.Phase != "" && r.Phase != packhostv1alpha1.RolloutSucceeded {
		fmt.Fprintf(w, "Step:\t%s\n", stepLine(canary, r, now))
	}
	fmt.Fprintf(w, "Conditions:\t%s\n", conditions(s))
	if s.Status.ObservedGeneration != s.Generation {
		fmt.Fprintf(w, "Generation:\t%d, status is of %d: the controller has not acted on the latest spec yet\n", s.Generation, s.Status.ObservedGeneration)
	}
	w.Flush()

	if canary != nil {
		fmt.Fprintln(&out, "\nSteps:")
		w = newSection(&out)
		fmt.Fprintln(w, "  #\tWEIGHT\tPAUSE\tSTATE")
		for i, st := range canary.Steps {
			fmt.Fprintf(w, "  %d\t%d%%\t%s\t%s\n", i+1, st.Weight, pause(st), stepState(r, int32(i)))
		}
		w.Flush()
		if canary.Analysis != nil {
			analysis(&out, canary.Analysis, r, now)
		}
	}

	fmt.Fprintln(&out, "\nRoutes:")
	w = newSection(&out)
	routes(w, s)
	return w.Flush()
}

// newSection starts a block whose columns line up among themselves only: each part of
// the output is its own, so a long cell in one does not widen another.
func newSection(out io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
}

// status is the one-word state of the split, and what it means.
func status(s *packhostv1alpha1.TrafficSplit) string {
	r := s.Status.Rollout
	switch {
	case s.Spec.Strategy == nil || s.Spec.Strategy.Canary == nil:
		return readiness(s) + ", no strategy: spec.routes take effect as soon as their Revisions are Ready"
	case r == nil || r.Phase == "":
		return readiness(s) + ", no rollout: spec.routes are in effect"
	}
	switch r.Phase {
	case packhostv1alpha1.RolloutProgressing:
		return "Progressing: the canary takes a step's share while the step holds"
	case packhostv1alpha1.RolloutPaused:
		return "Paused: waiting for a promote (kubectl packhost promote " + s.Name + ")"
	case packhostv1alpha1.RolloutSucceeded:
		return "Succeeded: spec.routes are in effect and stable"
	case packhostv1alpha1.RolloutAborted:
		return "Aborted: the stable routes are in effect until spec.routes change or a retry (kubectl packhost retry " + s.Name + ")"
	}
	return string(r.Phase)
}

// readiness is the Ready condition in a word.
func readiness(s *packhostv1alpha1.TrafficSplit) string {
	c := meta.FindStatusCondition(s.Status.Conditions, packhostv1alpha1.ConditionReady)
	switch {
	case c == nil:
		return "Not yet reconciled"
	case c.Status == "True":
		return "Ready"
	}
	return "Not ready (" + printable(c.Reason) + ")"
}

// conditionOrder is the order conditions are listed in: kstatus' first.
var conditionOrder = []string{packhostv1alpha1.ConditionReady, "Reconciling", "Stalled", packhostv1alpha1.TrafficSplitDegraded, packhostv1alpha1.TrafficSplitRoutesReady}

// conditions lists the split's conditions in one line: Type=Status (Reason).
func conditions(s *packhostv1alpha1.TrafficSplit) string {
	cs := slices.Clone(s.Status.Conditions)
	rank := func(t string) int {
		if i := slices.Index(conditionOrder, t); i >= 0 {
			return i
		}
		return len(conditionOrder)
	}
	slices.SortStableFunc(cs, func(a, b metav1.Condition) int { return rank(a.Type) - rank(b.Type) })
	var parts []string
	for _, c := range cs {
		p := printable(c.Type + "=" + string(c.Status))
		if c.Reason != "" {
			p += " (" + printable(c.Reason) + ")"
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return "none yet"
	}
	return strings.Join(parts, ", ")
}

// stepLine is where the rollout stands among its steps.
func stepLine(c *packhostv1alpha1.CanaryStrategy, r *packhostv1alpha1.RolloutStatus, now time.Time) string {
	if int(r.Step) >= len(c.Steps) || r.Step < 0 {
		return fmt.Sprintf("%d, not among the %d steps of spec.strategy.canary (the steps changed during the rollout?)", r.Step+1, len(c.Steps))
	}
	st := c.Steps[r.Step]
	line := fmt.Sprintf("%d of %d, canary at %d%%", r.Step+1, len(c.Steps), st.Weight)
	if r.Phase == packhostv1alpha1.RolloutAborted {
		return fmt.Sprintf("aborted in %d of %d, where the canary had %d%%", r.Step+1, len(c.Steps), st.Weight)
	}
	if r.StepStartTime != nil {
		ran := now.Sub(r.StepStartTime.Time)
		line += ", for " + age(ran)
		if st.Pause != nil && r.Phase == packhostv1alpha1.RolloutProgressing {
			if left := st.Pause.Duration - ran; left > 0 {
				line += ", pause ends in " + age(left)
			} else {
				line += ", pause over"
			}
		}
	}
	return line
}

// pause is how a step holds.
func pause(st packhostv1alpha1.CanaryStep) string {
	if st.Pause == nil {
		return "until promoted"
	}
	return st.Pause.Duration.String()
}

// stepState says what became of step i.
func stepState(r *packhostv1alpha1.RolloutStatus, i int32) string {
	if r == nil || r.Phase == "" {
		return ""
	}
	switch {
	case r.Phase == packhostv1alpha1.RolloutSucceeded || i < r.Step:
		return "done"
	case i > r.Step:
		return ""
	case r.Phase == packhostv1alpha1.RolloutAborted:
		return "<- aborted here"
	case r.Phase == packhostv1alpha1.RolloutPaused:
		return "<- current, paused"
	}
	return "<- current"
}

// analysis writes the bounds and the last judged interval's figures.
func analysis(out io.Writer, a *packhostv1alpha1.CanaryAnalysis, r *packhostv1alpha1.RolloutStatus, now time.Time) {
	var bounds []string
	if a.MaxErrorPercent != nil {
		bounds = append(bounds, fmt.Sprintf("errors <= %d%%", *a.MaxErrorPercent))
	}
	if a.MaxP99 != nil {
		bounds = append(bounds, "p99 <= "+a.MaxP99.Duration.String())
	}
	every := "the default interval"
	if a.Interval != nil {
		every = a.Interval.Duration.String()
	}
	w := newSection(out)
	defer func() { w.Flush() }()
	fmt.Fprintf(w, "\nAnalysis:\tevery %s, of the canary's activities when there are at least %d: %s; %d failed interval(s) abort\n",
		every, a.MinActivities, strings.Join(bounds, ", "), a.FailureLimit)
	if r == nil || r.Phase == "" || r.Phase == packhostv1alpha1.RolloutSucceeded {
		return // nothing is judged outside a rollout
	}
	fmt.Fprintf(w, "Intervals:\t%d failed (%d abort), %d passed in this step\n", r.FailedIntervals, a.FailureLimit, r.PassedIntervals)
	last := r.Analysis
	if last == nil {
		fmt.Fprintln(w, "Last interval:\tnone judged yet")
		return
	}
	verdict := string(last.Verdict)
	if last.Message != "" {
		verdict += ": " + printable(last.Message)
	}
	fmt.Fprintf(w, "Last interval:\t%s to %s (ended %s ago), %s\n",
		last.IntervalStart.UTC().Format(time.TimeOnly), last.IntervalEnd.UTC().Format(time.TimeOnly+" MST"),
		age(now.Sub(last.IntervalEnd.Time)), verdict)
	replicas := printable(strings.Join(last.Replicas, ", "))
	if replicas == "" {
		replicas = "none"
	}
	fmt.Fprintf(w, "Replicas counted:\t%s\n", replicas)
	if len(last.MissingReplicas) > 0 {
		fmt.Fprintf(w, "Replicas missing:\t%s (published before, not for this interval: not counted)\n", printable(strings.Join(last.MissingReplicas, ", ")))
	}
	w.Flush()
	w = newSection(out)
	fmt.Fprintln(w, "  REVISION\tROLE\tACTIVITIES\tERRORS\tERROR%\tP99")
	for _, f := range last.Revisions {
		role := "stable"
		if f.Canary {
			role = "canary"
		}
		fmt.Fprintf(w, "  %s\t%s\t%d\t%d\t%s\t%s\n", printable(f.RevisionName), role, f.Activities, f.Errors, printable(orDash(f.ErrorPercent)), p99(f))
	}
}

func p99(f packhostv1alpha1.RevisionFigures) string {
	if f.P99 == nil {
		return "-"
	}
	return f.P99.Duration.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// routes writes one row per revision that any table names: the percent in effect (what
// the dispatcher routes by) and, during a rollout, the stable table it started from (and
// an abort goes back to) and the target it walks to; without one, spec.routes.
func routes(w io.Writer, s *packhostv1alpha1.TrafficSplit) {
	type row struct {
		tag                    string
		effect, stable, target string
		dispatched             string
	}
	var order []string
	rows := map[string]*row{}
	at := func(name, tag string) *row {
		name, tag = printable(name), printable(tag)
		r, ok := rows[name]
		if !ok {
			r = &row{effect: "-", stable: "-", target: "-", dispatched: "-"}
			rows[name] = r
			order = append(order, name)
		}
		if r.tag == "" {
			r.tag = tag
		}
		return r
	}
	percent := func(p int32) string { return fmt.Sprintf("%d%%", p) }
	for _, rt := range s.Status.Routes {
		r := at(rt.RevisionName, rt.Tag)
		r.effect, r.dispatched = percent(rt.Percent), fmt.Sprint(rt.Dispatched)
	}
	ro := s.Status.Rollout
	if ro != nil && ro.Phase != "" {
		for _, rt := range ro.StableRoutes {
			at(rt.RevisionName, rt.Tag).stable = percent(rt.Percent)
		}
		for _, rt := range ro.TargetRoutes {
			at(rt.RevisionName, rt.Tag).target = percent(rt.Percent)
		}
		fmt.Fprintln(w, "  REVISION\tTAG\tIN EFFECT\tSTABLE\tTARGET\tDISPATCHED")
		for _, name := range order {
			r := rows[name]
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\t%s\n", name, orDash(r.tag), r.effect, r.stable, r.target, r.dispatched)
		}
	} else {
		for _, rt := range s.Spec.Routes {
			at(rt.RevisionName, rt.Tag).target = percent(rt.Percent)
		}
		fmt.Fprintln(w, "  REVISION\tTAG\tIN EFFECT\tSPEC\tDISPATCHED")
		for _, name := range order {
			r := rows[name]
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\n", name, orDash(r.tag), r.effect, r.target, r.dispatched)
		}
	}
	if len(s.Status.Routes) == 0 {
		fmt.Fprintln(w, "  (no table in effect yet: the tenant's activities are not routed)")
	}
}

// age is a duration as kubectl shows ages: 45s, 3m20s, 5h.
func age(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	return duration.HumanDuration(d)
}

// printable replaces what a terminal would act on rather than show (control characters,
// escape sequences, bidirectional overrides) and what would break the columns (tabs) in
// a string from the API: revision names are only length-checked by the schema, and
// messages may quote what someone else wrote.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) || r == utf8.RuneError {
			return '?'
		}
		return r
	}, s)
}
