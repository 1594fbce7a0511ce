package controllers

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/dispatcher"
)

// TenantFinalizer blocks a Tenant's deletion while Revisions still reference it.
const TenantFinalizer = "packhost.io/tenant"

// Intervals of the tenant controller.
const (
	// tenantResync is how often a tenant's auth Secret is read again, so a rotated
	// token takes effect without a change to the Tenant.
	tenantResync = time.Minute
	// tenantDeletionCheck is how often a deleted tenant checks whether the Revisions
	// that reference it are gone.
	tenantDeletionCheck = 10 * time.Second
)

// TenantReconciler publishes each Tenant's auth and limits to this replica's dispatcher
// and, on the leader, validates the Tenant, reports its status and applies revision
// retention.
type TenantReconciler struct {
	client.Client
	APIReader client.Reader
	Recorder  recorder.EventRecorder
	Router    *dispatcher.Router
	IsLeader  func() bool
	// Clock is the time of token reads and retention; nil means time.Now.
	Clock func() time.Time

	mu sync.Mutex
	// lastTokens are the tokens each tenant's auth Secret last gave, kept through a
	// transient error reading it.
	lastTokens map[types.NamespacedName]goodTokens
}

// goodTokens are tokens read from a tenant's auth Secret.
type goodTokens struct {
	tenantUID types.UID
	secret    string
	tokens    map[string]string
	read      time.Time
}

// tenantScope is what one reconcile of a Tenant gathers and decides; the phase
// functions read and fill it in turn.
type tenantScope struct {
	tenant *v1.Tenant
	key    types.NamespacedName
	leader bool
	now    time.Time

	// revs are the Revisions that reference the tenant.
	revs []v1.Revision
	// active is the split that routes the tenant; nil when none does.
	active *v1.TrafficSplit
	// done ends the list of phases.
	done bool
	// gone: status is not written, since the finalizer was removed (the object may no
	// longer exist) or is not packhost's to remove.
	gone bool
}

func (s *tenantScope) observe()       { s.tenant.Status.ObservedGeneration = s.tenant.Generation }
func (s *tenantScope) finished() bool { return s.done }

// Reconcile implements reconcile.Reconciler: fetch, ensure the finalizer, run the
// phases of a live or a deleted Tenant, and write status once if it changed.
func (r *TenantReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, err error) {
	tenant := &v1.Tenant{}
	if err := r.Get(ctx, req.NamespacedName, tenant); err != nil {
		if apierrors.IsNotFound(err) {
			r.Router.PublishTenant(req.Namespace, req.Name, nil)
			r.forgetTokens(req.NamespacedName)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	s := &tenantScope{tenant: tenant, key: req.NamespacedName, leader: r.IsLeader(), now: r.now()}
	if tenant.DeletionTimestamp.IsZero() && s.leader && !controllerutil.ContainsFinalizer(tenant, TenantFinalizer) {
		controllerutil.AddFinalizer(tenant, TenantFinalizer)
		return requeueOnConflict(r.Update(ctx, tenant))
	}
	before := tenant.Status.DeepCopy()
	defer func() {
		if s.leader && !s.gone && !equality.Semantic.DeepEqual(before, &tenant.Status) {
			res, _, err = writeStatus(ctx, r.Client, tenant, res, err)
		}
	}()
	if tenant.DeletionTimestamp.IsZero() {
		return r.reconcileNormal(ctx, s)
	}
	return r.reconcileDelete(ctx, s)
}

// reconcileNormal publishes the tenant's auth and limits, reports where it stands and,
// on the leader, applies revision retention.
func (r *TenantReconciler) reconcileNormal(ctx context.Context, s *tenantScope) (ctrl.Result, error) {
	return runPhases(ctx, s, r.phaseGather, r.phasePublish, r.phaseRetention)
}

// reconcileDelete withdraws a deleted tenant from the dispatcher and, on the leader,
// releases it once no Revision references it.
func (r *TenantReconciler) reconcileDelete(ctx context.Context, s *tenantScope) (ctrl.Result, error) {
	return runPhases(ctx, s, r.phaseRevisions, r.phaseRelease)
}

// phaseRevisions reads the Revisions that reference the tenant.
func (r *TenantReconciler) phaseRevisions(ctx context.Context, s *tenantScope) (ctrl.Result, error) {
	var revs v1.RevisionList
	if err := r.List(ctx, &revs, client.InNamespace(s.tenant.Namespace), client.MatchingFields{indexTenant: s.tenant.Name}); err != nil {
		return ctrl.Result{}, err
	}
	s.revs = revs.Items
	return ctrl.Result{}, nil
}

// phaseGather reads the Revisions that reference the tenant and the split that routes
// it. It changes nothing: a failed read leaves status and the dispatcher as they were.
func (r *TenantReconciler) phaseGather(ctx context.Context, s *tenantScope) (ctrl.Result, error) {
	if _, err := r.phaseRevisions(ctx, s); err != nil {
		return ctrl.Result{}, err
	}
	active, err := activeSplit(ctx, r.Client, s.tenant.Namespace, s.tenant.Name)
	if err != nil {
		return ctrl.Result{}, err
	}
	s.active = active
	return ctrl.Result{}, nil
}

// phasePublish reads the tenant's tokens, publishes its auth and limits to this
// replica's dispatcher and reports whether it is ready; it is read again every
// tenantResync so a rotated token takes effect.
func (r *TenantReconciler) phasePublish(ctx context.Context, s *tenantScope) (ctrl.Result, error) {
	tenant := s.tenant
	cfg := tenantConfig(tenant)
	reason, message := r.auth(ctx, tenant, cfg, s.now)
	r.Router.PublishTenant(tenant.Namespace, tenant.Name, cfg)
	tenant.Status.Revisions = int32(len(s.revs))
	tenant.Status.ActiveSplit = ""
	if s.active != nil {
		tenant.Status.ActiveSplit = s.active.Name
	}
	markTenant(&tenant.Status, tenant.Generation, reason, message)
	return ctrl.Result{RequeueAfter: tenantResync}, nil
}

// phaseRetention deletes, on the leader, the Revisions beyond the tenant's
// revisionHistoryLimit that retentionVictims allows. Every split of the tenant counts,
// not only the active one: a conflicting or deleted-and-recreated split may still name
// a revision someone relies on.
func (r *TenantReconciler) phaseRetention(ctx context.Context, s *tenantScope) (ctrl.Result, error) {
	if !s.leader {
		return ctrl.Result{}, nil
	}
	var splits v1.TrafficSplitList
	if err := r.List(ctx, &splits, client.InNamespace(s.tenant.Namespace), client.MatchingFields{indexTenant: s.tenant.Name}); err != nil {
		return ctrl.Result{}, fmt.Errorf("list splits: %w", err)
	}
	return ctrl.Result{}, r.retain(ctx, s.tenant, s.revs, splits.Items, s.now)
}

// phaseRelease withdraws the tenant from the dispatcher and, on the leader, removes
// the finalizer once no Revision references the tenant.
func (r *TenantReconciler) phaseRelease(ctx context.Context, s *tenantScope) (ctrl.Result, error) {
	tenant := s.tenant
	r.Router.PublishTenant(tenant.Namespace, tenant.Name, nil)
	if !s.leader || !controllerutil.ContainsFinalizer(tenant, TenantFinalizer) {
		s.gone = true
		return ctrl.Result{}, nil
	}
	if why := deletionWait(s.revs); why != "" {
		tenant.Status.MarkWaiting(tenant.Generation, v1.ReasonRevisionsRemain, why)
		return ctrl.Result{RequeueAfter: tenantDeletionCheck}, nil
	}
	controllerutil.RemoveFinalizer(tenant, TenantFinalizer)
	s.gone = true
	return requeueOnConflict(r.Update(ctx, tenant))
}

func (r *TenantReconciler) now() time.Time {
	if r.Clock == nil {
		return time.Now()
	}
	return r.Clock()
}

// auth reads the tenant's tokens into cfg and checks its allowlisted Secrets; it returns
// a not-ready reason and message when something is missing. A Secret serves the tenant
// only when it opts in (v1.AnnotationTenants). When the auth Secret cannot be read for
// a reason that may pass, the tokens last read from it stay in cfg, and the reason says
// so (authFailure).
func (r *TenantReconciler) auth(ctx context.Context, tenant *v1.Tenant, cfg *dispatcher.TenantConfig, now time.Time) (string, string) {
	key := types.NamespacedName{Namespace: tenant.Namespace, Name: tenant.Name}
	if tenant.Spec.Auth == nil {
		r.forgetTokens(key)
		return v1.ReasonAuthSecretMissing, "spec.auth.secretRef is not set: the dispatcher refuses every activity for this tenant"
	}
	name := tenant.Spec.Auth.SecretRef.Name
	sec, err := readOptedIn(ctx, r.APIReader, tenant.Namespace, name, tenant.Name, "auth Secret")
	if err != nil {
		var last *goodTokens
		if t, ok := r.tokensOf(key, tenant.UID, name); ok {
			last = &t
		}
		reason, message, forget := authFailure(name, err, last)
		if forget {
			r.forgetTokens(key)
		}
		if last != nil && reason == v1.ReasonAuthSecretUnreadable {
			maps.Copy(cfg.Tokens, last.tokens)
		}
		return reason, message
	}
	maps.Copy(cfg.Tokens, bearerTokens(sec.Data))
	r.keepTokens(key, goodTokens{tenantUID: tenant.UID, secret: name, tokens: maps.Clone(cfg.Tokens), read: now})
	if len(cfg.Tokens) == 0 {
		return v1.ReasonAuthSecretEmpty, fmt.Sprintf("auth Secret %q holds no token: add a key whose value is a bearer token", name)
	}
	for _, s := range tenant.Spec.Secrets {
		if _, err := readOptedIn(ctx, r.APIReader, tenant.Namespace, s.Name, tenant.Name, "allowlisted Secret"); err != nil {
			f := secretFailure(err)
			return f.reason, f.message
		}
	}
	return "", ""
}

func (r *TenantReconciler) keepTokens(key types.NamespacedName, t goodTokens) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lastTokens == nil {
		r.lastTokens = map[types.NamespacedName]goodTokens{}
	}
	r.lastTokens[key] = t
}

func (r *TenantReconciler) forgetTokens(key types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.lastTokens, key)
}

// tokensOf returns the tokens last read for this incarnation of the tenant from secret.
func (r *TenantReconciler) tokensOf(key types.NamespacedName, uid types.UID, secret string) (goodTokens, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.lastTokens[key]
	return t, ok && t.tenantUID == uid && t.secret == secret
}

// retain deletes the oldest Revisions beyond the tenant's revisionHistoryLimit that
// retentionVictims allows: never one that a split routes to (spec or table in use),
// that is Draining or loading, or that was routed within retentionGrace.
func (r *TenantReconciler) retain(ctx context.Context, tenant *v1.Tenant, revs []v1.Revision, splits []v1.TrafficSplit, now time.Time) error {
	if tenant.Spec.RevisionHistoryLimit == nil {
		return nil
	}
	routed := func(name string) bool { return routesTo(splits, name) }
	for _, rev := range retentionVictims(revs, routed, int(*tenant.Spec.RevisionHistoryLimit), now) {
		if err := r.Delete(ctx, rev); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("retire revision %s: %w", rev.Name, err)
		}
		if r.Recorder != nil {
			r.Recorder.Eventf(tenant, rev, corev1.EventTypeNormal, "RevisionRetired", "Retain",
				"deleted Revision %s: no split routes to it and the tenant keeps %d unrouted revisions", rev.Name, *tenant.Spec.RevisionHistoryLimit)
		}
	}
	return nil
}

// activeSplit is the tenant's oldest TrafficSplit (by creation, then name); any other
// split of the tenant is in conflict with it.
func activeSplit(ctx context.Context, c client.Reader, namespace, tenant string) (*v1.TrafficSplit, error) {
	var splits v1.TrafficSplitList
	if err := c.List(ctx, &splits, client.InNamespace(namespace), client.MatchingFields{indexTenant: tenant}); err != nil {
		return nil, fmt.Errorf("list splits: %w", err)
	}
	return oldestSplit(splits.Items), nil
}
