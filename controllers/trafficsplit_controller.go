package controllers

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
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

	mu        sync.Mutex
	published map[types.NamespacedName]types.NamespacedName // split -> tenant
}

// Reconcile implements reconcile.Reconciler.
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
		r.unpublish(req.NamespacedName)
		return ctrl.Result{}, nil
	}
	leader := r.IsLeader()
	before := split.Status.DeepCopy()
	defer func() {
		if leader && !equality.Semantic.DeepEqual(before, &split.Status) {
			res, _, err = writeStatus(ctx, r.Client, split, res, err)
		}
	}()
	g := split.Generation
	tenant := split.Spec.TenantRef.Name

	active, err := activeSplit(ctx, r.Client, split.Namespace, tenant)
	if err != nil {
		return ctrl.Result{}, err
	}
	if active != nil && active.Name != split.Name {
		r.unpublish(req.NamespacedName)
		split.Status.MarkConflict(g, active.Name)
		split.Status.ObservedGeneration = g
		split.Status.Routes, split.Status.Summary = nil, ""
		return ctrl.Result{}, nil
	}

	_, current := r.Router.Tenant(split.Namespace, tenant)
	if current != nil && current.Split != split.Name {
		current = nil // a table of a split that no longer routes this tenant
	}
	reason, message, stalled, err := r.check(ctx, split)
	if err != nil {
		return ctrl.Result{}, err
	}
	// Whatever the outcome, the conditions below describe this generation.
	split.Status.ObservedGeneration = g
	switch {
	case reason == "":
		want, sticky := routes(split), split.Spec.Stickiness != v1.StickinessNone
		// Building a table hashes every bucket; a refresh keeps the one in use.
		if current == nil || !routesAre(current, split.Name, want, sticky) {
			current = dispatcher.NewTable(split.Name, want, sticky)
			r.Router.PublishTable(split.Namespace, tenant, current)
			r.remember(req.NamespacedName, types.NamespacedName{Namespace: split.Namespace, Name: tenant})
			if r.Recorder != nil && leader {
				r.Recorder.Eventf(split, nil, "Normal", v1.ReasonTablePublished, "Publish", "routing %s", current.Summary())
			}
		}
		split.Status.MarkPublished(g)
	default:
		split.Status.MarkRoutesNotReady(g, reason, message, current != nil, stalled)
		res = ctrl.Result{RequeueAfter: waitForRevision}
	}
	split.Status.Routes, split.Status.Summary = nil, ""
	if current != nil {
		counts := r.Router.Dispatched(split.Namespace, tenant)
		for _, rt := range current.Routes {
			split.Status.Routes = append(split.Status.Routes, v1.RouteStatus{RevisionName: rt.Revision, Percent: int32(rt.Percent), Tag: rt.Tag, Dispatched: counts[rt.Revision]})
		}
		split.Status.Summary = current.Summary()
	}
	if res.RequeueAfter == 0 {
		res.RequeueAfter = cmp.Or(r.CountsRefresh, DefaultCountsRefresh)
	}
	return res, nil
}

// check says why the split's table cannot be used yet: a route's revision missing, of
// another tenant, Failed, or not loaded on this replica. stalled says that it cannot
// be used without someone's change (a Failed revision, one of another tenant); a
// missing or loading revision may still come.
func (r *TrafficSplitReconciler) check(ctx context.Context, split *v1.TrafficSplit) (reason, message string, stalled bool, err error) {
	var waiting, failed []string
	for _, rt := range split.Spec.Routes {
		rev := &v1.Revision{}
		if err := r.Get(ctx, types.NamespacedName{Namespace: split.Namespace, Name: rt.RevisionName}, rev); err != nil {
			if apierrors.IsNotFound(err) {
				return v1.ReasonRevisionNotFound, fmt.Sprintf("Revision %q not found", rt.RevisionName), false, nil
			}
			return "", "", false, fmt.Errorf("get revision %q: %w", rt.RevisionName, err)
		}
		if rev.Spec.TenantRef.Name != split.Spec.TenantRef.Name {
			return v1.ReasonWrongTenant, fmt.Sprintf("Revision %q belongs to tenant %q, not %q", rt.RevisionName, rev.Spec.TenantRef.Name, split.Spec.TenantRef.Name), true, nil
		}
		l := r.Runtimes.Get(types.NamespacedName{Namespace: split.Namespace, Name: rt.RevisionName})
		if l != nil && l.UID == rev.UID {
			continue
		}
		if rev.Status.Phase == v1.RevisionFailed {
			why := rt.RevisionName + " is Failed"
			if c := meta.FindStatusCondition(rev.Status.Conditions, v1.ConditionReady); c != nil {
				why += " (" + c.Reason + ": " + c.Message + ")"
			}
			failed = append(failed, why)
			continue
		}
		waiting = append(waiting, fmt.Sprintf("%s is not Ready: %s", rt.RevisionName, cmp.Or(string(rev.Status.Phase), "not reconciled yet")))
	}
	if len(failed) > 0 {
		return v1.ReasonRevisionFailed, strings.Join(append(failed, waiting...), "; "), true, nil
	}
	if len(waiting) > 0 {
		return v1.ReasonRevisionNotReady, strings.Join(waiting, "; "), false, nil
	}
	return "", "", false, nil
}

func routes(split *v1.TrafficSplit) []dispatcher.Route {
	out := make([]dispatcher.Route, len(split.Spec.Routes))
	for i, rt := range split.Spec.Routes {
		out[i] = dispatcher.Route{Revision: rt.RevisionName, Percent: int(rt.Percent), Tag: rt.Tag}
	}
	return out
}

// routesAre reports whether t is the table of split with routes and stickiness.
func routesAre(t *dispatcher.Table, split string, routes []dispatcher.Route, sticky bool) bool {
	return t.Split == split && t.Sticky == sticky && slices.Equal(t.Routes, routes)
}

func (r *TrafficSplitReconciler) remember(split, tenant types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.published == nil {
		r.published = map[types.NamespacedName]types.NamespacedName{}
	}
	r.published[split] = tenant
}

// unpublish removes the table a split published, if it is still the tenant's table.
func (r *TrafficSplitReconciler) unpublish(split types.NamespacedName) {
	r.mu.Lock()
	tenant, ok := r.published[split]
	delete(r.published, split)
	r.mu.Unlock()
	if !ok {
		return
	}
	if _, t := r.Router.Tenant(tenant.Namespace, tenant.Name); t != nil && t.Split == split.Name {
		r.Router.PublishTable(tenant.Namespace, tenant.Name, nil)
	}
}
