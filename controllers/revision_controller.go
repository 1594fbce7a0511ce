package controllers

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"go.opentelemetry.io/otel/trace"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/runtime"
	"github.com/packhost/packhost/source"
	"github.com/packhost/packhost/state"
)

// RevisionFinalizer holds a Revision until its runtime is unloaded and its state
// retention applied.
const RevisionFinalizer = "packhost.io/revision"

// Intervals of the revision controller.
const (
	// retryFailedLoad is how soon a revision that failed for a reason that may pass
	// (source unreachable, tenant missing) is tried again.
	retryFailedLoad = 30 * time.Second
	// drainCheck is how often a draining revision is checked for remaining sessions.
	drainCheck = 10 * time.Second
	// tenantRetry is how soon a Tenant that could not be read is read again.
	tenantRetry = 5 * time.Second
)

// RevisionReconciler loads each Revision's packs into a runtime on every replica and,
// on the leader, reports where the Revision stands.
type RevisionReconciler struct {
	client.Client
	// APIReader reads Secrets and ConfigMaps without caching every one in the cluster.
	APIReader client.Reader
	Recorder  recorder.EventRecorder
	Engine    *runtime.Engine
	State     *state.Store
	Fetcher   *source.Fetcher
	Runtimes  *Runtimes
	// IsLeader says whether this replica writes status.
	IsLeader func() bool
	Clock    func() time.Time
	// Tracing records a span per pack fetched; nil turns tracing off.
	Tracing trace.TracerProvider

	// loader fetches and compiles off the reconcile path; Setup makes it.
	loader *loader

	claimsMu sync.Mutex
	// claims are the foreign state ConfigMaps last reported on each Revision.
	claims map[types.NamespacedName]string
}

// reportClaims tells a Revision's owner, with a Warning event each, of the ConfigMaps
// that claim to be its state and are ignored, once per change of that list.
func (r *RevisionReconciler) reportClaims(rev *v1.Revision) {
	claims := r.State.Claims(rev.Namespace, rev.Name)
	key := types.NamespacedName{Namespace: rev.Namespace, Name: rev.Name}
	joined := strings.Join(claims, "\n")
	r.claimsMu.Lock()
	if r.claims == nil {
		r.claims = map[types.NamespacedName]string{}
	}
	same := r.claims[key] == joined
	r.claims[key] = joined
	r.claimsMu.Unlock()
	if same || r.Recorder == nil {
		return
	}
	for _, c := range claims {
		r.Recorder.Eventf(rev, nil, corev1.EventTypeWarning, v1.ReasonForeignState, "IgnoreState", "%s", c)
	}
}

func (r *RevisionReconciler) forgetClaims(key types.NamespacedName) {
	r.claimsMu.Lock()
	defer r.claimsMu.Unlock()
	delete(r.claims, key)
}

// revisionScope is what one reconcile of a Revision gathers and decides; the phase
// functions read and fill it in turn.
type revisionScope struct {
	rev    *v1.Revision
	before *v1.RevisionStatus
	key    types.NamespacedName
	leader bool
	log    logr.Logger
	now    time.Time

	tenant   *v1.Tenant
	limits   runtime.Limits
	maxBody  int64
	routed   bool
	sessions int
	loaded   *Loaded
	// done ends the list of phases: the Revision is where it can be for now.
	done bool
	// gone: the finalizer was removed and the object may no longer exist.
	gone bool
}

func (s *revisionScope) observe()       { s.rev.Status.ObservedGeneration = s.rev.Generation }
func (s *revisionScope) finished() bool { return s.done }

// Reconcile implements reconcile.Reconciler: fetch, ensure the finalizer, run the
// phases of a live or a deleted Revision, and write status once if it changed.
func (r *RevisionReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, err error) {
	rev := &v1.Revision{}
	if err := r.Get(ctx, req.NamespacedName, rev); err != nil {
		if apierrors.IsNotFound(err) {
			r.forget(ctx, req.NamespacedName)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, fmt.Errorf("get revision: %w", err)
	}
	s := &revisionScope{rev: rev, before: rev.Status.DeepCopy(), key: req.NamespacedName, leader: r.IsLeader(),
		log: ctrl.LoggerFrom(ctx), now: r.Clock()}
	if rev.DeletionTimestamp.IsZero() && s.leader && !controllerutil.ContainsFinalizer(rev, RevisionFinalizer) {
		controllerutil.AddFinalizer(rev, RevisionFinalizer)
		return requeueOnConflict(r.Update(ctx, rev))
	}
	defer func() {
		if !s.leader || s.gone || equality.Semantic.DeepEqual(s.before, &rev.Status) {
			return
		}
		var written bool
		if res, written, err = writeStatus(ctx, r.Client, rev, res, err); written && s.before.Phase != rev.Status.Phase {
			r.event(rev, s.before.Phase)
		}
	}()
	rev.Status.InitializeConditions(rev.Generation)
	if rev.DeletionTimestamp.IsZero() {
		return r.reconcileNormal(ctx, s)
	}
	return r.reconcileDelete(ctx, s)
}

// reconcileNormal brings a live Revision to Ready, Draining or Retired.
func (r *RevisionReconciler) reconcileNormal(ctx context.Context, s *revisionScope) (ctrl.Result, error) {
	return runPhases(ctx, s, r.phaseRouting, r.phaseRetired, r.phaseTenant, r.phaseLoad, r.phaseState, r.phaseNext)
}

// reconcileDelete keeps a deleted Revision serving while a split routes to it or a
// session is pinned to it, then unloads it, applies its state retention and releases
// it.
func (r *RevisionReconciler) reconcileDelete(ctx context.Context, s *revisionScope) (ctrl.Result, error) {
	return runPhases(ctx, s, r.phaseRouting, r.phaseNext)
}

// phaseRouting finds whether a split routes to the revision and how many sessions are
// pinned to it, and keeps status.lastRoutedTime.
func (r *RevisionReconciler) phaseRouting(ctx context.Context, s *revisionScope) (ctrl.Result, error) {
	var splits v1.TrafficSplitList
	if err := r.List(ctx, &splits, client.InNamespace(s.rev.Namespace), client.MatchingFields{indexTenant: s.rev.Spec.TenantRef.Name}); err != nil {
		return ctrl.Result{}, fmt.Errorf("list splits: %w", err)
	}
	s.routed = routesTo(splits.Items, s.rev.Name)
	s.sessions = r.State.OpenSessions(s.rev.Namespace, s.rev.Name, s.now)
	s.rev.Status.OpenSessions = int32(s.sessions)
	var last *time.Time
	if t := s.rev.Status.LastRoutedTime; t != nil {
		last = &t.Time
	}
	if next := lastRouted(s.routed, last, s.now); next != last {
		s.rev.Status.LastRoutedTime = &metav1.Time{Time: next.Truncate(time.Second)}
	}
	if s.routed {
		return ctrl.Result{RequeueAfter: routedRefresh}, nil
	}
	return ctrl.Result{}, nil
}

// phaseRetired keeps a retired revision unloaded until a split routes to it again.
func (r *RevisionReconciler) phaseRetired(ctx context.Context, s *revisionScope) (ctrl.Result, error) {
	if s.rev.Status.Phase == v1.RevisionRetired && !s.routed {
		r.unload(ctx, s.key)
		s.done = true
	}
	return ctrl.Result{}, nil
}

// phaseTenant reads the revision's Tenant and the limits it allows.
func (r *RevisionReconciler) phaseTenant(ctx context.Context, s *revisionScope) (ctrl.Result, error) {
	tenant := &v1.Tenant{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: s.rev.Namespace, Name: s.rev.Spec.TenantRef.Name}, tenant); err != nil {
		f := tenantFailure(s.rev, err)
		s.done = true
		if f.reason == v1.ReasonTenantUnreadable {
			// Transient: whatever is loaded keeps serving.
			s.rev.Status.MarkWaiting(s.rev.Generation, f.reason, f.message)
			return ctrl.Result{RequeueAfter: tenantRetry}, nil
		}
		return r.fail(ctx, s, f), nil
	}
	limits, maxBody, f := effectiveLimits(tenant.Spec.Limits, s.rev.Spec.Limits)
	if f != nil {
		s.done = true
		return r.fail(ctx, s, f), nil
	}
	s.tenant, s.limits, s.maxBody = tenant, limits, maxBody
	return ctrl.Result{}, nil
}

// phaseLoad has the background loader load the runtime the revision needs (again, when
// its tenant's policy, limits, env or secrets changed) and takes it when it is done.
// While it loads, status says Loading (or, while an older runtime keeps serving,
// Reloading); the loader re-enqueues the revision when it is done.
func (r *RevisionReconciler) phaseLoad(ctx context.Context, s *revisionScope) (ctrl.Result, error) {
	key := loadKey(s.rev, s.tenant, s.limits, s.maxBody)
	s.loaded = r.Runtimes.Get(s.key)
	if s.loaded == nil || s.loaded.Key != key {
		in := loadInput{rev: s.rev.DeepCopy(), tenant: s.tenant.DeepCopy(), limits: s.limits, maxBody: s.maxBody, key: key, log: s.log}
		done, l, f := r.loader.load(s.key, key, func(ctx context.Context, fetching originSlot) (*Loaded, *failure) {
			return r.load(ctx, in, fetching)
		})
		switch {
		case !done && s.loaded != nil:
			s.rev.Status.MarkReloading(s.rev.Generation, "the tenant's policy, limits, env or secrets changed: loading again; the runtime loaded before serves meanwhile")
			s.done = true
			return ctrl.Result{}, nil
		case !done:
			s.rev.Status.MarkLoading(s.rev.Generation, "fetching and compiling the packs")
			s.done = true
			return ctrl.Result{}, nil
		case f != nil && s.loaded != nil && keepsServing(f):
			// A reload that failed for a reason that may pass (a source or the API server
			// unreachable, the replica's memory full) leaves the loaded runtime serving.
			s.rev.Status.MarkReloading(s.rev.Generation, fmt.Sprintf("loading again failed (%s: %s); the runtime loaded before serves meanwhile", f.reason, f.message))
			s.done = true
			return ctrl.Result{RequeueAfter: retryFailedLoad}, nil
		case f != nil:
			s.done = true
			return r.fail(ctx, s, f), nil
		}
		r.Runtimes.put(s.key, l)
		s.loaded = l
		s.log.Info("Loaded revision", "packs", len(l.Packs), "digest", l.Packs[0].Digest)
	}
	g := s.rev.Generation
	s.rev.Status.Packs = s.loaded.Packs
	s.rev.Status.StateConfigMaps = s.loaded.StateConfigMaps
	s.rev.Status.MarkTrue(g, v1.RevisionPacksFetched, v1.ReasonFetched, fmt.Sprintf("%d packs fetched and verified", len(s.loaded.Packs)))
	s.rev.Status.MarkTrue(g, v1.RevisionStateReady, v1.ReasonStateReady, fmt.Sprintf("%d state ConfigMaps", len(s.loaded.StateConfigMaps)))
	return ctrl.Result{}, nil
}

// phaseState checks the revision's state ConfigMaps as the state informer sees them.
func (r *RevisionReconciler) phaseState(ctx context.Context, s *revisionScope) (ctrl.Result, error) {
	g := s.rev.Generation
	if problems := r.State.Problems(s.rev.Namespace, s.rev.Name, s.loaded.Shards); len(problems) > 0 {
		s.rev.Status.MarkFailed(g, v1.RevisionStateReady, v1.ReasonStateFailed, problems[0])
		s.done = true
		return ctrl.Result{RequeueAfter: retryFailedLoad}, nil
	}
	s.rev.Status.MarkTrue(g, v1.RevisionLoaded, v1.ReasonLoaded, "")
	if s.leader {
		r.reportClaims(s.rev)
	}
	return ctrl.Result{}, nil
}

// phaseNext serves, drains, retires or finalizes the revision, as nextPhase decides.
func (r *RevisionReconciler) phaseNext(ctx context.Context, s *revisionScope) (ctrl.Result, error) {
	g, deleting := s.rev.Generation, !s.rev.DeletionTimestamp.IsZero()
	switch nextPhase(s.routed, s.before.LastRoutedTime != nil || s.rev.Status.LastRoutedTime != nil, s.sessions, deleting) {
	case nextServe:
		if s.routed {
			s.rev.Status.MarkRouted(g)
		}
	case nextDrain:
		reason, why := v1.ReasonDraining, "no split routes to it"
		if deleting {
			reason, why = v1.ReasonDeleted, "deleted"
			if s.routed {
				why += "; a TrafficSplit still routes to it, so it keeps serving until none does"
			}
		}
		s.rev.Status.MarkDraining(g, reason, fmt.Sprintf("%s; %d sessions still pinned", why, s.sessions))
		return ctrl.Result{RequeueAfter: drainCheck}, nil
	case nextRetire:
		s.rev.Status.MarkRetired(g, "drained: no split routes to it and no session is pinned")
		r.unload(ctx, s.key)
	case nextFinalize:
		return ctrl.Result{}, r.finalize(ctx, s)
	}
	return ctrl.Result{}, nil
}

// fail records f on the revision and unloads whatever runtime it had: a Failed
// revision serves nothing, and its traffic gets 503.
func (r *RevisionReconciler) fail(ctx context.Context, s *revisionScope, f *failure) ctrl.Result {
	if s.before.Phase != v1.RevisionFailed {
		s.log.V(1).Info("Revision cannot load", "reason", f.reason)
	}
	s.rev.Status.MarkFailed(s.rev.Generation, f.condition, f.reason, f.message)
	r.Runtimes.Unload(ctx, s.key)
	if f.retry {
		return ctrl.Result{RequeueAfter: retryFailedLoad}
	}
	return ctrl.Result{}
}

// finalize unloads the runtime and, on the leader, applies the state retention and
// releases the Revision.
func (r *RevisionReconciler) finalize(ctx context.Context, s *revisionScope) error {
	rev := s.rev
	r.unload(ctx, s.key)
	if !s.leader || !controllerutil.ContainsFinalizer(rev, RevisionFinalizer) {
		return nil
	}
	retain := rev.Spec.State.Retention == v1.StateRetentionRetain
	if err := r.State.Remove(ctx, state.Spec{Namespace: rev.Namespace, Revision: rev.Name, RevisionUID: rev.UID, Tenant: rev.Spec.TenantRef.Name, Shards: int(rev.Spec.State.Shards)}, retain); err != nil {
		return fmt.Errorf("apply state retention: %w", err)
	}
	controllerutil.RemoveFinalizer(rev, RevisionFinalizer)
	if err := r.Update(ctx, rev); err != nil {
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			s.gone = true // nothing to write; a conflict is reconciled again by its own event
			return nil
		}
		return fmt.Errorf("release revision: %w", err)
	}
	s.gone = true
	return nil
}

// unload stops any load of the revision and unloads its runtime.
func (r *RevisionReconciler) unload(ctx context.Context, key types.NamespacedName) {
	r.loader.forget(key)
	r.Runtimes.Unload(ctx, key)
}

// forget drops everything this replica holds for a revision that no longer exists.
func (r *RevisionReconciler) forget(ctx context.Context, key types.NamespacedName) {
	r.unload(ctx, key)
	r.State.Release(key.Namespace, key.Name)
	r.forgetClaims(key)
}

// requeueOnConflict turns a conflict writing an object into a requeue: the reconcile
// worked from an older copy, nothing failed, and the newer copy's event reconciles
// again. Other errors stay errors.
func requeueOnConflict(err error) (ctrl.Result, error) {
	if apierrors.IsConflict(err) {
		return ctrl.Result{RequeueAfter: conflictRetry}, nil
	}
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("update: %w", err)
	}
	return ctrl.Result{}, nil
}

func (r *RevisionReconciler) event(rev *v1.Revision, from v1.RevisionPhase) {
	if r.Recorder == nil {
		return
	}
	typ, reason, note := corev1.EventTypeNormal, string(rev.Status.Phase), fmt.Sprintf("%s -> %s", from, rev.Status.Phase)
	for _, c := range rev.Status.Conditions {
		if c.Type == v1.ConditionReady && c.Message != "" {
			note += ": " + c.Message
			if rev.Status.Phase == v1.RevisionFailed {
				typ, reason = corev1.EventTypeWarning, c.Reason
			}
		}
	}
	r.Recorder.Eventf(rev, nil, typ, reason, "Reconcile", "%s", note)
}
