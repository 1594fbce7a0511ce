package controllers

import (
	"context"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"

	v1 "github.com/packhost/packhost/api/v1alpha1"
)

// phaseRollout decides the table a split with a canary strategy serves. The leader
// walks the rollout (decideRollout) and writes the table to status.routes; every
// other replica serves what the leader wrote, so that all replicas route by one table
// and the leader's analysis judges what was served. While a rollout runs with an
// analysis, every replica counts the tenant's activities and publishes its counts
// (a follower from when it sees the rollout in status, a moment after the leader: the
// first window it publishes may miss that moment). Without a strategy the spec's
// table is served, as it always was.
func (r *TrafficSplitReconciler) phaseRollout(ctx context.Context, s *splitScope) (ctrl.Result, error) {
	split := s.split
	tenant := split.Spec.TenantRef.Name
	s.effective = routeStatusesOf(split.Spec.Routes)
	var canary *v1.CanaryStrategy
	if split.Spec.Strategy != nil {
		canary = split.Spec.Strategy.Canary
	}
	now := r.now()
	if canary == nil {
		r.countForAnalysis(split, nil, now)
		split.Status.Rollout = nil
		return ctrl.Result{}, nil
	}
	if !s.leader {
		if len(split.Status.Routes) > 0 {
			s.effective, s.follows = tableOf(split.Status.Routes), true
		}
		r.countForAnalysis(split, split.Status.Rollout, now)
		return ctrl.Result{}, nil
	}

	prev := split.Status.Rollout
	spec := split.Spec.Routes
	goesOn := prev != nil && (rolloutRunning(prev) || prev.Phase == v1.RolloutAborted) && slices.Equal(tableOf(prev.TargetRoutes), routeStatusesOf(spec))
	reason, hold, _ := routesBlocked(tenant, s.targets)
	switch {
	case reason == "" || goesOn:
	case rolloutRunning(prev):
		// spec.routes moved to a revision that is not Ready: the running rollout holds
		// towards its old target, still judged (and rolled back) on what is served,
		// until the new one can start.
		spec = specRoutesOf(prev.TargetRoutes)
	default:
		// Nothing starts before the spec's revisions are loaded: phaseTable says what it
		// waits for, and the table in use keeps serving.
		r.countForAnalysis(split, prev, now)
		return ctrl.Result{}, nil
	}
	var figures *intervalFigures
	if start, end, ok := judgedWindow(prev, analysisInterval(canary.Analysis), now); ok && canary.Analysis != nil {
		reports, err := readReports(ctx, r.APIReader, split)
		if err != nil {
			return ctrl.Result{}, err
		}
		f := sumReports(reports, start, end)
		figures = &f
		r.deleteGone(ctx, split, f.gone)
	}
	d := decideRollout(rolloutInput{
		spec: spec, canary: canary, current: split.Status.Routes, prev: prev,
		annotations: split.Annotations, now: now, figures: figures, hold: hold,
	})
	split.Status.Rollout = d.status
	s.effective, s.rolling = d.routes, true
	for _, e := range d.events {
		if r.Recorder != nil {
			typ := corev1.EventTypeNormal
			if e.warning {
				typ = corev1.EventTypeWarning
			}
			r.Recorder.Eventf(split, nil, typ, e.reason, e.action, "%s", cut(e.message, maxEventNote))
		}
	}
	r.countForAnalysis(split, d.status, now)
	return ctrl.Result{RequeueAfter: d.requeue}, nil
}

// maxEventNote is the longest note the API server takes in an event; it refuses a
// longer one, and the event is lost. A rollout's messages name its tables, which with
// many routes of long names are longer.
const maxEventNote = 1024

// countForAnalysis counts the tenant's activities and publishes this replica's counts
// of split while its rollout runs with an analysis, and stops both otherwise: a
// strategy stays in the spec between rollouts, and while no split anywhere is counted
// the dispatcher's hot path skips counting altogether.
func (r *TrafficSplitReconciler) countForAnalysis(split *v1.TrafficSplit, ro *v1.RolloutStatus, now time.Time) {
	key := types.NamespacedName{Namespace: split.Namespace, Name: split.Name}
	tenant := split.Spec.TenantRef.Name
	if !rolloutRunning(ro) || split.Spec.Strategy == nil || split.Spec.Strategy.Canary == nil || split.Spec.Strategy.Canary.Analysis == nil {
		r.Router.StopAnalysis(split.Namespace, tenant)
		if r.Counts != nil {
			r.Counts.Untrack(key)
		}
		return
	}
	r.Router.Analyze(split.Namespace, tenant, analysisInterval(split.Spec.Strategy.Canary.Analysis), now)
	if r.Counts == nil {
		return
	}
	var revisions []string
	for _, rt := range slices.Concat(ro.StableRoutes, ro.TargetRoutes) {
		if !slices.Contains(revisions, rt.RevisionName) {
			revisions = append(revisions, rt.RevisionName)
		}
	}
	r.Counts.Track(split, revisions)
}

// deleteGone deletes the counts objects of replicas that stopped publishing long ago (a
// pod replaced by a rollout of the manager), so status stops naming them missing.
func (r *TrafficSplitReconciler) deleteGone(ctx context.Context, split *v1.TrafficSplit, replicas []string) {
	for _, replica := range replicas {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: split.Namespace, Name: countsName(split.Name, replica)}}
		if err := r.Delete(ctx, cm); err != nil && !apierrors.IsNotFound(err) {
			ctrl.LoggerFrom(ctx).Error(err, "Cannot delete a gone replica's analysis counts", "replica", replica)
		}
	}
}

// markTable records the conditions of the table a split serves: a running rollout is
// InProgress, an aborted one Stalled, otherwise the spec's table is in use (Ready).
func markTable(s *v1.TrafficSplitStatus, generation int64) {
	switch ro := s.Rollout; {
	case rolloutRunning(ro) && ro.Phase == v1.RolloutPaused:
		s.MarkRolloutRunning(generation, v1.ReasonRolloutPaused, ro.Message)
	case rolloutRunning(ro):
		s.MarkRolloutRunning(generation, v1.ReasonRolloutProgressing, ro.Message)
	case ro != nil && ro.Phase == v1.RolloutAborted:
		s.MarkRolloutAborted(generation, ro.Message)
	default:
		s.MarkPublished(generation)
	}
}
