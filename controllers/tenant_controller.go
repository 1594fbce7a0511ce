package controllers

import (
	"context"
	"errors"
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

// tenantResync is how often a tenant's auth Secret is read again, so a rotated token
// takes effect without a change to the Tenant.
const tenantResync = time.Minute

// TenantReconciler publishes each Tenant's auth and limits to this replica's dispatcher
// and, on the leader, validates the Tenant, reports its status and applies revision
// retention.
type TenantReconciler struct {
	client.Client
	APIReader client.Reader
	Recorder  recorder.EventRecorder
	Router    *dispatcher.Router
	IsLeader  func() bool

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

// Reconcile implements reconcile.Reconciler.
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
	leader := r.IsLeader()
	var revs v1.RevisionList
	if err := r.List(ctx, &revs, client.InNamespace(tenant.Namespace), client.MatchingFields{indexTenant: tenant.Name}); err != nil {
		return ctrl.Result{}, err
	}
	before := tenant.Status.DeepCopy()
	defer func() {
		if leader && !equality.Semantic.DeepEqual(before, &tenant.Status) {
			res, _, err = writeStatus(ctx, r.Client, tenant, res, err)
		}
	}()

	if !tenant.DeletionTimestamp.IsZero() {
		r.Router.PublishTenant(tenant.Namespace, tenant.Name, nil)
		if !leader || !controllerutil.ContainsFinalizer(tenant, TenantFinalizer) {
			return ctrl.Result{}, nil
		}
		if n := len(revs.Items); n > 0 {
			tenant.Status.ObservedGeneration = tenant.Generation
			tenant.Status.MarkWaiting(tenant.Generation, v1.ReasonRevisionsRemain,
				fmt.Sprintf("deletion waits for %d Revisions that reference this tenant (first: %s): delete them first", n, revs.Items[0].Name))
			return ctrl.Result{RequeueAfter: 10 * time.Second}, nil
		}
		controllerutil.RemoveFinalizer(tenant, TenantFinalizer)
		before = tenant.Status.DeepCopy() // nothing more to write to status
		return requeueOnConflict(r.Update(ctx, tenant))
	}
	if leader && !controllerutil.ContainsFinalizer(tenant, TenantFinalizer) {
		controllerutil.AddFinalizer(tenant, TenantFinalizer)
		before = tenant.Status.DeepCopy() // the update returns the stored status
		return requeueOnConflict(r.Update(ctx, tenant))
	}

	cfg := &dispatcher.TenantConfig{
		Namespace: tenant.Namespace, Name: tenant.Name, Env: tenant.Spec.Env,
		MaxBodyBytes: tenant.Spec.Limits.MaxRequestBodyBytes, Tokens: map[string]string{},
		// The dispatcher's share for this tenant's requests derives from it.
		MaxConcurrentActivities: int(tenant.Spec.Limits.MaxConcurrentActivities),
	}
	if tenant.Spec.Auth != nil {
		cfg.RoutingCallers = tenant.Spec.Auth.RoutingCallers
	}
	reason, message := r.auth(ctx, tenant, cfg)
	r.Router.PublishTenant(tenant.Namespace, tenant.Name, cfg)

	active, err := activeSplit(ctx, r.Client, tenant.Namespace, tenant.Name)
	if err != nil {
		return ctrl.Result{}, err
	}
	tenant.Status.Revisions = int32(len(revs.Items))
	tenant.Status.ActiveSplit = ""
	if active != nil {
		tenant.Status.ActiveSplit = active.Name
	}
	switch reason {
	case "":
		tenant.Status.MarkReady(tenant.Generation)
	case v1.ReasonAuthSecretUnreadable:
		tenant.Status.MarkWaiting(tenant.Generation, reason, message)
	default:
		tenant.Status.MarkNotReady(tenant.Generation, reason, message)
	}
	tenant.Status.ObservedGeneration = tenant.Generation
	if leader {
		// Every split of the tenant counts, not only the active one: a conflicting or
		// deleted-and-recreated split may still name a revision someone relies on.
		var splits v1.TrafficSplitList
		if err := r.List(ctx, &splits, client.InNamespace(tenant.Namespace), client.MatchingFields{indexTenant: tenant.Name}); err != nil {
			return ctrl.Result{}, fmt.Errorf("list splits: %w", err)
		}
		if err := r.retain(ctx, tenant, revs.Items, splits.Items); err != nil {
			return ctrl.Result{}, err
		}
	}
	return ctrl.Result{RequeueAfter: tenantResync}, nil
}

// auth reads the tenant's tokens into cfg and checks its allowlisted Secrets; it returns
// a not-ready reason and message when something is missing. A Secret serves the tenant
// only when it opts in (v1.AnnotationTenants). When the auth Secret cannot be read for
// a reason that may pass, the tokens last read from it stay in cfg, and the reason says
// so.
func (r *TenantReconciler) auth(ctx context.Context, tenant *v1.Tenant, cfg *dispatcher.TenantConfig) (string, string) {
	key := types.NamespacedName{Namespace: tenant.Namespace, Name: tenant.Name}
	if tenant.Spec.Auth == nil {
		r.forgetTokens(key)
		return v1.ReasonAuthSecretMissing, "spec.auth.secretRef is not set: the dispatcher refuses every activity for this tenant"
	}
	name := tenant.Spec.Auth.SecretRef.Name
	sec, err := readOptedIn(ctx, r.APIReader, tenant.Namespace, name, tenant.Name, "auth Secret")
	switch {
	case errors.Is(err, errSecretNotOptedIn):
		r.forgetTokens(key)
		return v1.ReasonSecretNotOptedIn, err.Error()
	case apierrors.IsNotFound(err):
		r.forgetTokens(key)
		return v1.ReasonAuthSecretMissing, fmt.Sprintf("auth Secret %q not found: create it, or fix spec.auth.secretRef", name)
	case err != nil:
		last, ok := r.tokensOf(key, tenant.UID, name)
		if !ok {
			return v1.ReasonAuthSecretMissing, err.Error()
		}
		maps.Copy(cfg.Tokens, last.tokens)
		return v1.ReasonAuthSecretUnreadable, fmt.Sprintf("%v; the %d tokens last read from it at %s are still accepted",
			err, len(last.tokens), last.read.UTC().Format(time.RFC3339))
	}
	for caller, token := range sec.Data {
		if len(token) > 0 {
			cfg.Tokens[string(token)] = caller
		}
	}
	r.keepTokens(key, goodTokens{tenantUID: tenant.UID, secret: name, tokens: maps.Clone(cfg.Tokens), read: time.Now()})
	if len(cfg.Tokens) == 0 {
		return v1.ReasonAuthSecretEmpty, fmt.Sprintf("auth Secret %q holds no token: add a key whose value is a bearer token", name)
	}
	for _, s := range tenant.Spec.Secrets {
		if _, err := readOptedIn(ctx, r.APIReader, tenant.Namespace, s.Name, tenant.Name, "allowlisted Secret"); err != nil {
			if errors.Is(err, errSecretNotOptedIn) {
				return v1.ReasonSecretNotOptedIn, err.Error()
			}
			return v1.ReasonSecretMissing, err.Error()
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
func (r *TenantReconciler) retain(ctx context.Context, tenant *v1.Tenant, revs []v1.Revision, splits []v1.TrafficSplit) error {
	if tenant.Spec.RevisionHistoryLimit == nil {
		return nil
	}
	routed := func(name string) bool { return routesTo(splits, name) }
	for _, rev := range retentionVictims(revs, routed, int(*tenant.Spec.RevisionHistoryLimit), time.Now()) {
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
	var active *v1.TrafficSplit
	for i := range splits.Items {
		s := &splits.Items[i]
		if !s.DeletionTimestamp.IsZero() {
			continue
		}
		if active == nil || s.CreationTimestamp.Before(&active.CreationTimestamp) ||
			(s.CreationTimestamp.Equal(&active.CreationTimestamp) && s.Name < active.Name) {
			active = s
		}
	}
	return active, nil
}
