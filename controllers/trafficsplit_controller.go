package controllers

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/dispatcher"
)

// Intervals of the split controller.
const (
	// waitForRevision is how soon a split whose revisions are not loaded yet is checked again.
	waitForRevision = 2 * time.Second
	// DefaultCountsRefresh is how often a split's dispatched counts are written to status.
	DefaultCountsRefresh = 15 * time.Second
)

// TrafficSplitReconciler publishes each tenant's routing table to this replica's
// dispatcher once every route's revision is loaded here, keeping the last good table
// until then, and on the leader reports the table in use.
type TrafficSplitReconciler struct {
	client.Client
	Recorder recorder.EventRecorder
	Router   *dispatcher.Router
	Runtimes *Runtimes
	IsLeader func() bool
	// CountsRefresh is how often the dispatched counts reach status under traffic;
	// zero means DefaultCountsRefresh.
	CountsRefresh time.Duration
	// APIReader reads the replicas' analysis counts (uncached) for a rollout's analysis.
	APIReader client.Reader
	// Counts publishes this replica's analysis counts of the splits under rollout; nil
	// publishes none.
	Counts *CountsPublisher
	// Clock is the time rollouts are judged by; nil is time.Now.
	Clock func() time.Time

	mu        sync.Mutex
	published map[types.NamespacedName]types.NamespacedName // split -> tenant
}

// splitScope is what one reconcile of a TrafficSplit gathers and decides; the phase
// functions read and fill it in turn.
type splitScope struct {
	split  *v1.TrafficSplit
	key    types.NamespacedName
	leader bool

	// active is the split that routes the tenant; another split's name is a conflict.
	active *v1.TrafficSplit
	// current is the table this replica serves for the tenant, when it is this split's.
	current *dispatcher.Table
	// targets are what each route of spec.routes names, when this split is the active one.
	targets []routeTarget
	// found is what each revision the split routes to (spec and status) names.
	found map[string]routeTarget
	// effective is the table to serve: spec.routes, or with a canary strategy the table
	// the rollout decided (status.routes).
	effective []v1.RouteStatus
	// follows: this replica serves the table the leader wrote to status.routes, as it
	// does for a split with a canary strategy unless it leads.
	follows bool
	// rolling: the leader decided the table by the split's canary strategy.
	rolling bool
	// done ends the list of phases.
	done bool
}

func (s *splitScope) observe()       { s.split.Status.ObservedGeneration = s.split.Generation }
func (s *splitScope) finished() bool { return s.done }

// Reconcile implements reconcile.Reconciler: fetch, run the phases of a live split (a
// deleted one only withdraws its table), and write status once if it changed.
func (r *TrafficSplitReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, err error) {
	split := &v1.TrafficSplit{}
	if err := r.Get(ctx, req.NamespacedName, split); err != nil {
		if apierrors.IsNotFound(err) {
			r.unpublish(req.NamespacedName)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if !split.DeletionTimestamp.IsZero() {
		return r.reconcileDelete(req.NamespacedName)
	}
	s := &splitScope{split: split, key: req.NamespacedName, leader: r.IsLeader()}
	before := split.Status.DeepCopy()
	defer func() {
		if s.leader && !equality.Semantic.DeepEqual(before, &split.Status) {
			res, _, err = writeStatus(ctx, r.Client, split, res, err)
		}
	}()
	return r.reconcileNormal(ctx, s)
}

// reconcileNormal publishes the split's table once every route's revision is loaded
// here, keeping the last good table until then, and reports the table in use.
func (r *TrafficSplitReconciler) reconcileNormal(ctx context.Context, s *splitScope) (ctrl.Result, error) {
	return runPhases(ctx, s, r.phaseGather, r.phaseConflict, r.phaseRollout, r.phaseTable, r.phaseRoutes)
}

// reconcileDelete withdraws a deleted split's table; its status is not written.
func (r *TrafficSplitReconciler) reconcileDelete(key types.NamespacedName) (ctrl.Result, error) {
	r.unpublish(key)
	return ctrl.Result{}, nil
}

func (r *TrafficSplitReconciler) now() time.Time {
	if r.Clock != nil {
		return r.Clock()
	}
	return time.Now()
}

// phaseGather reads which split routes the tenant, the table this replica serves for
// it and, when it is this split, the revision each route names and whether it is
// loaded here. It changes nothing: a failed read leaves status and the dispatcher as
// they were.
func (r *TrafficSplitReconciler) phaseGather(ctx context.Context, s *splitScope) (ctrl.Result, error) {
	split := s.split
	active, err := activeSplit(ctx, r.Client, split.Namespace, split.Spec.TenantRef.Name)
	if err != nil {
		return ctrl.Result{}, err
	}
	s.active = active
	if active != nil && active.Name != split.Name {
		return ctrl.Result{}, nil
	}
	if _, t := r.Router.Tenant(split.Namespace, split.Spec.TenantRef.Name); t != nil && t.Split == split.Name {
		s.current = t // another split's table no longer routes this tenant
	}
	s.found = map[string]routeTarget{}
	for _, name := range routedNames(split) {
		key := types.NamespacedName{Namespace: split.Namespace, Name: name}
		t := routeTarget{name: name}
		rev := &v1.Revision{}
		switch err := r.Get(ctx, key, rev); {
		case apierrors.IsNotFound(err):
		case err != nil:
			return ctrl.Result{}, fmt.Errorf("get revision %q: %w", name, err)
		default:
			l := r.Runtimes.Get(key)
			t.rev, t.loaded = rev, l != nil && l.UID == rev.UID
		}
		s.found[name] = t
	}
	s.targets = s.targetsOf(routeStatusesOf(split.Spec.Routes))
	return ctrl.Result{}, nil
}

// targetsOf is what was found for each route of table, in its order.
func (s *splitScope) targetsOf(table []v1.RouteStatus) []routeTarget {
	out := make([]routeTarget, 0, len(table))
	for _, rt := range table {
		out = append(out, s.found[rt.RevisionName])
	}
	return out
}

// phaseConflict withdraws the table of a split that another, older split of the same
// tenant overrules, and says so.
func (r *TrafficSplitReconciler) phaseConflict(ctx context.Context, s *splitScope) (ctrl.Result, error) {
	if s.active == nil || s.active.Name == s.split.Name {
		return ctrl.Result{}, nil
	}
	r.unpublish(s.key)
	s.split.Status.MarkConflict(s.split.Generation, s.active.Name)
	s.split.Status.Routes, s.split.Status.Summary = nil, ""
	s.done = true
	return ctrl.Result{}, nil
}

// phaseTable publishes the effective table when nothing is in its way, and otherwise
// says what it waits for while the last good table keeps serving. On the leader (or
// without a strategy) the spec's revisions must be loaded here first; a replica that
// follows the leader's table needs that table's revisions loaded.
func (r *TrafficSplitReconciler) phaseTable(ctx context.Context, s *splitScope) (ctrl.Result, error) {
	split, g := s.split, s.split.Generation
	tenant := split.Spec.TenantRef.Name
	blocking := s.targets
	if s.follows || s.rolling {
		blocking = s.targetsOf(s.effective)
	}
	reason, message, stalled := routesBlocked(tenant, blocking)
	if reason != "" {
		split.Status.MarkRoutesNotReady(g, reason, message, s.current != nil, stalled)
		return ctrl.Result{RequeueAfter: waitForRevision}, nil
	}
	t, publish := splitTable(s.current, split.Name, s.effective, split.Spec.Stickiness != v1.StickinessNone)
	if publish {
		r.Router.PublishTable(split.Namespace, tenant, t)
		r.remember(s.key, types.NamespacedName{Namespace: split.Namespace, Name: tenant})
		if r.Recorder != nil && s.leader {
			r.Recorder.Eventf(split, nil, "Normal", v1.ReasonTablePublished, "Publish", "routing %s", t.Summary())
		}
	}
	s.current = t
	if reason, message, stalled := routesBlocked(tenant, s.targets); reason != "" {
		// A rollout goes on (or was rolled back) while a revision of the spec cannot
		// load: that is what needs fixing.
		split.Status.MarkRoutesNotReady(g, reason, message, true, stalled)
	} else {
		markTable(&split.Status, g)
	}
	return ctrl.Result{RequeueAfter: cmp.Or(r.CountsRefresh, DefaultCountsRefresh)}, nil
}

// phaseRoutes shows the table in use, with the activities dispatched to each route.
func (r *TrafficSplitReconciler) phaseRoutes(ctx context.Context, s *splitScope) (ctrl.Result, error) {
	var dispatched map[string]int64
	if s.current != nil {
		dispatched = r.Router.Dispatched(s.split.Namespace, s.split.Spec.TenantRef.Name)
	}
	s.split.Status.Routes, s.split.Status.Summary = routeStatuses(s.current, dispatched)
	return ctrl.Result{}, nil
}

func (r *TrafficSplitReconciler) remember(split, tenant types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.published == nil {
		r.published = map[types.NamespacedName]types.NamespacedName{}
	}
	r.published[split] = tenant
}

// unpublish removes the table a split published, if it is still the tenant's table,
// and its analysis counts.
func (r *TrafficSplitReconciler) unpublish(split types.NamespacedName) {
	if r.Counts != nil {
		r.Counts.Untrack(split)
	}
	r.mu.Lock()
	tenant, ok := r.published[split]
	delete(r.published, split)
	r.mu.Unlock()
	if !ok {
		return
	}
	if _, t := r.Router.Tenant(tenant.Namespace, tenant.Name); t != nil && t.Split == split.Name {
		r.Router.PublishTable(tenant.Namespace, tenant.Name, nil)
		r.Router.StopAnalysis(tenant.Namespace, tenant.Name)
	}
}
