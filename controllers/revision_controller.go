package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
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

// failure is why a Revision cannot load.
type failure struct {
	condition string
	reason    string
	message   string
	retry     bool
}

func (f *failure) Error() string { return f.message }

// Reconcile implements reconcile.Reconciler.
func (r *RevisionReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, err error) {
	log := ctrl.LoggerFrom(ctx)
	rev := &v1.Revision{}
	if err := r.Get(ctx, req.NamespacedName, rev); err != nil {
		if apierrors.IsNotFound(err) {
			r.Runtimes.Unload(ctx, req.NamespacedName)
			r.State.Release(req.Namespace, req.Name)
			r.forgetClaims(req.NamespacedName)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	leader := r.IsLeader()
	if !rev.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.finalize(ctx, rev, leader)
	}
	if leader && !controllerutil.ContainsFinalizer(rev, RevisionFinalizer) {
		controllerutil.AddFinalizer(rev, RevisionFinalizer)
		return ctrl.Result{}, r.Update(ctx, rev)
	}

	before := rev.Status.DeepCopy()
	defer func() {
		if !leader || equality.Semantic.DeepEqual(before, &rev.Status) {
			return
		}
		var written bool
		if res, written, err = writeStatus(ctx, r.Client, rev, res, err); written && before.Phase != rev.Status.Phase {
			r.event(rev, before.Phase)
		}
	}()
	rev.Status.InitializeConditions(rev.Generation)

	routed, err := r.routed(ctx, rev)
	if err != nil {
		return ctrl.Result{}, err
	}
	if rev.Status.Phase == v1.RevisionRetired && !routed {
		r.Runtimes.Unload(ctx, req.NamespacedName)
		return ctrl.Result{}, nil
	}

	loaded := r.Runtimes.Get(req.NamespacedName)
	if loaded == nil || loaded.UID != rev.UID {
		l, f := r.load(ctx, rev)
		if f != nil {
			log.Info("Revision cannot load", "reason", f.reason, "message", f.message)
			rev.Status.MarkFailed(rev.Generation, f.condition, f.reason, f.message)
			if f.retry {
				return ctrl.Result{RequeueAfter: retryFailedLoad}, nil
			}
			return ctrl.Result{}, nil
		}
		r.Runtimes.put(req.NamespacedName, l)
		loaded = l
		log.Info("Loaded revision", "packs", len(l.Packs), "digest", l.Packs[0].Digest)
	}
	rev.Status.Packs = loaded.Packs
	rev.Status.StateConfigMaps = loaded.StateConfigMaps
	g := rev.Generation
	rev.Status.MarkTrue(g, v1.RevisionPacksFetched, v1.ReasonFetched, fmt.Sprintf("%d packs fetched and verified", len(loaded.Packs)))
	rev.Status.MarkTrue(g, v1.RevisionStateReady, v1.ReasonStateReady, fmt.Sprintf("%d state ConfigMaps", len(loaded.StateConfigMaps)))
	if problems := r.State.Problems(rev.Namespace, rev.Name, loaded.Shards); len(problems) > 0 {
		rev.Status.MarkFailed(g, v1.RevisionStateReady, v1.ReasonStateFailed, problems[0])
		return ctrl.Result{RequeueAfter: retryFailedLoad}, nil
	}
	rev.Status.MarkTrue(g, v1.RevisionLoaded, v1.ReasonLoaded, "")
	if leader {
		r.reportClaims(rev)
	}

	now := r.Clock()
	sessions := r.State.OpenSessions(rev.Namespace, rev.Name, now)
	rev.Status.OpenSessions = int32(sessions)
	// A revision that a split routed to and no longer does drains, then retires; one
	// that was never routed stays Ready, reachable by tag or explicit choice.
	leftSplit := !routed && (before.Phase == v1.RevisionDraining || (before.Phase == v1.RevisionReady && everRouted(before)))
	switch {
	case routed:
		markRouted(rev)
	case leftSplit && sessions > 0:
		rev.Status.MarkDraining(g, fmt.Sprintf("no split routes to it; %d sessions still pinned", sessions))
		rev.Status.ObservedGeneration = g
		return ctrl.Result{RequeueAfter: drainCheck}, nil
	case leftSplit:
		rev.Status.MarkRetired(g, "drained: no split routes to it and no session is pinned")
		r.Runtimes.Unload(ctx, req.NamespacedName)
	}
	rev.Status.ObservedGeneration = g
	return ctrl.Result{}, nil
}

// everRoutedReason is the Ready reason of a revision a split routes to; it remembers on
// status that leaving the split must drain the revision.
const everRoutedReason = "Routed"

func everRouted(s *v1.RevisionStatus) bool {
	for _, c := range s.Conditions {
		if c.Type == v1.ConditionReady && c.Reason == everRoutedReason {
			return true
		}
	}
	return s.Phase == v1.RevisionDraining
}

func markRouted(rev *v1.Revision) {
	for i, c := range rev.Status.Conditions {
		if c.Type == v1.ConditionReady && c.Status == "True" {
			rev.Status.Conditions[i].Reason = everRoutedReason
			rev.Status.Conditions[i].Message = "a TrafficSplit routes to it"
		}
	}
}

// routed reports whether a TrafficSplit of the revision's tenant names it, in its spec
// or in the table it serves.
func (r *RevisionReconciler) routed(ctx context.Context, rev *v1.Revision) (bool, error) {
	var splits v1.TrafficSplitList
	if err := r.List(ctx, &splits, client.InNamespace(rev.Namespace), client.MatchingFields{indexTenant: rev.Spec.TenantRef.Name}); err != nil {
		return false, fmt.Errorf("list splits: %w", err)
	}
	for _, s := range splits.Items {
		for _, rt := range s.Spec.Routes {
			if rt.RevisionName == rev.Name {
				return true, nil
			}
		}
		for _, rt := range s.Status.Routes {
			if rt.RevisionName == rev.Name {
				return true, nil
			}
		}
	}
	return false, nil
}

// load fetches, verifies and compiles the revision's packs and starts its runtime.
func (r *RevisionReconciler) load(ctx context.Context, rev *v1.Revision) (*Loaded, *failure) {
	tenant := &v1.Tenant{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: rev.Namespace, Name: rev.Spec.TenantRef.Name}, tenant); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, &failure{v1.RevisionPacksFetched, v1.ReasonTenantNotFound, fmt.Sprintf("Tenant %q not found in namespace %s: create it or fix spec.tenantRef", rev.Spec.TenantRef.Name, rev.Namespace), true}
		}
		return nil, &failure{v1.RevisionPacksFetched, v1.ReasonTenantNotFound, err.Error(), true}
	}
	limits, f := effectiveLimits(tenant.Spec.Limits, rev.Spec.Limits)
	if f != nil {
		return nil, f
	}

	l := &Loaded{UID: rev.UID, Tenant: tenant.Name, Shards: int(rev.Spec.State.Shards)}
	var compiled []*runtime.Pack
	release := func() {
		for _, p := range compiled {
			r.Engine.Release(ctx, p)
		}
	}
	if f := r.pullSecretsOptIn(ctx, rev); f != nil {
		return nil, f
	}
	for _, p := range rev.Spec.Packs {
		p, resolved := pinned(p, rev.Status.Packs)
		fetched, err := r.Fetcher.Fetch(ctx, rev.Namespace, p, rev.Spec.ImagePullSecrets, resolved)
		if err != nil {
			release()
			return nil, fetchFailure(p.Name, err)
		}
		pack, err := r.Engine.Compile(ctx, fetched.Bytes)
		if err != nil {
			release()
			return nil, compileFailure(p.Name, err)
		}
		compiled = append(compiled, pack)
		l.Packs = append(l.Packs, v1.PackStatus{
			Name: p.Name, Digest: fetched.Digest, Size: int64(len(fetched.Bytes)), ResolvedImage: fetched.ResolvedImage,
			PackID: pack.Manifest.PackID, Version: pack.Manifest.Version,
		})
	}

	spec := state.Spec{Namespace: rev.Namespace, Revision: rev.Name, RevisionUID: rev.UID, Tenant: tenant.Name, Shards: int(rev.Spec.State.Shards)}
	names, err := r.State.Ensure(ctx, spec)
	if err != nil {
		release()
		return nil, &failure{v1.RevisionStateReady, v1.ReasonStateFailed, err.Error(), true}
	}
	l.StateConfigMaps = names

	secrets := &tenantSecrets{reader: r.APIReader, namespace: rev.Namespace, tenant: tenant.Name, names: tenant.Spec.Secrets}
	policy, err := r.policy(ctx, tenant, secrets)
	if err != nil {
		release()
		if errors.Is(err, errSecretNotOptedIn) {
			return nil, &failure{v1.RevisionLoaded, v1.ReasonSecretNotOptedIn, err.Error(), true}
		}
		return nil, &failure{v1.RevisionLoaded, v1.ReasonCapabilityNotAllowed, err.Error(), true}
	}
	rt, err := r.Engine.NewRevision(ctx, runtime.RevisionConfig{
		Name: rev.Namespace + "/" + rev.Name, Env: tenant.Spec.Env, Tenant: rev.Namespace + "/" + tenant.Name,
		Packs: compiled, Config: rev.Spec.Config, Policy: policy, Limits: limits,
		Store: r.State.Namespace(spec), Secrets: secrets, Clock: r.Clock,
		Logger: logr.FromContextOrDiscard(ctx),
	})
	if err != nil { // NewRevision released the packs
		return nil, compileFailure("", err)
	}
	l.Runtime = rt
	return l, nil
}

// pinned is what to fetch for pack p given the packs status records: the image a tag
// resolved to, and for a ConfigMap source without sha256, the digest first loaded as
// the sha256 to verify, so a ConfigMap that changed since is refused (DigestMismatch)
// rather than run as other code under the same Revision.
func pinned(p v1.Pack, status []v1.PackStatus) (v1.Pack, string) {
	i := slices.IndexFunc(status, func(s v1.PackStatus) bool { return s.Name == p.Name })
	if i < 0 {
		return p, ""
	}
	if p.ConfigMapRef != nil && p.SHA256 == "" {
		p.SHA256 = strings.TrimPrefix(status[i].Digest, "sha256:")
	}
	return p, status[i].ResolvedImage
}

// pullSecretsOptIn checks that every image pull Secret of a Revision with an image
// source opts in to serving the Revision's tenant.
func (r *RevisionReconciler) pullSecretsOptIn(ctx context.Context, rev *v1.Revision) *failure {
	if !slices.ContainsFunc(rev.Spec.Packs, func(p v1.Pack) bool { return p.Image != "" }) {
		return nil
	}
	for _, ref := range rev.Spec.ImagePullSecrets {
		_, err := readOptedIn(ctx, r.APIReader, rev.Namespace, ref.Name, rev.Spec.TenantRef.Name, "image pull Secret")
		switch {
		case errors.Is(err, errSecretNotOptedIn):
			return &failure{v1.RevisionPacksFetched, v1.ReasonSecretNotOptedIn, err.Error(), true}
		case err != nil:
			return &failure{v1.RevisionPacksFetched, v1.ReasonSourceUnreachable, err.Error(), true}
		}
	}
	return nil
}

func (r *RevisionReconciler) policy(ctx context.Context, tenant *v1.Tenant, secrets *tenantSecrets) (runtime.Policy, error) {
	p := tenant.Spec.Policy
	on := func(b *bool) bool { return b == nil || *b }
	pol := runtime.Policy{
		StateRead: on(p.State.Read), StateWrite: on(p.State.Write),
		Clocks: on(p.WASI.Clocks), Random: on(p.WASI.Random), Env: p.WASI.Env,
	}
	if p.Secrets {
		names, err := secrets.keys(ctx)
		if err != nil {
			return pol, err
		}
		pol.Secrets = names
	}
	return pol, nil
}

// effectiveLimits lowers the tenant's limits by the revision's; a revision limit above
// the tenant's fails the revision.
func effectiveLimits(t v1.TenantLimits, rl *v1.RevisionLimits) (runtime.Limits, *failure) {
	l := runtime.Limits{MemoryPages: uint32(t.MemoryPages), MaxConcurrency: int(t.MaxConcurrentActivities)}
	if t.ActivityTimeout != nil {
		l.Timeout = t.ActivityTimeout.Duration
	}
	if rl == nil {
		return l, nil
	}
	above := func(what string, rev, ten any) *failure {
		return &failure{v1.RevisionLoaded, v1.ReasonLimitAboveTenant, fmt.Sprintf("spec.limits.%s %v is above the tenant's %v: a Revision may only lower its tenant's limits", what, rev, ten), false}
	}
	if rl.MemoryPages != nil {
		if *rl.MemoryPages > t.MemoryPages {
			return l, above("memoryPages", *rl.MemoryPages, t.MemoryPages)
		}
		l.MemoryPages = uint32(*rl.MemoryPages)
	}
	if rl.ActivityTimeout != nil {
		if t.ActivityTimeout != nil && rl.ActivityTimeout.Duration > t.ActivityTimeout.Duration {
			return l, above("activityTimeout", rl.ActivityTimeout.Duration, t.ActivityTimeout.Duration)
		}
		l.Timeout = rl.ActivityTimeout.Duration
	}
	if rl.MaxConcurrentActivities != nil {
		if *rl.MaxConcurrentActivities > t.MaxConcurrentActivities {
			return l, above("maxConcurrentActivities", *rl.MaxConcurrentActivities, t.MaxConcurrentActivities)
		}
		l.MaxConcurrency = int(*rl.MaxConcurrentActivities)
	}
	if rl.MaxRequestBodyBytes != nil && *rl.MaxRequestBodyBytes > t.MaxRequestBodyBytes {
		return l, above("maxRequestBodyBytes", *rl.MaxRequestBodyBytes, t.MaxRequestBodyBytes)
	}
	return l, nil
}

func fetchFailure(pack string, err error) *failure {
	msg := fmt.Sprintf("pack %s: %v", pack, err)
	switch {
	case errors.Is(err, source.ErrDigestMismatch):
		return &failure{v1.RevisionPacksFetched, v1.ReasonDigestMismatch, msg + ": the source no longer holds the pack this Revision pins (spec.packs[].sha256, or for a ConfigMap without it the digest first loaded, in status.packs): restore the source, or create a new Revision", false}
	case errors.Is(err, source.ErrInvalidSource):
		return &failure{v1.RevisionPacksFetched, v1.ReasonInvalidSource, msg, false}
	}
	return &failure{v1.RevisionPacksFetched, v1.ReasonSourceUnreachable, msg, true}
}

func compileFailure(pack string, err error) *failure {
	msg := err.Error()
	if pack != "" {
		msg = fmt.Sprintf("pack %s: %v", pack, err)
	}
	switch {
	case errors.Is(err, runtime.ErrCapabilityDenied):
		return &failure{v1.RevisionLoaded, v1.ReasonCapabilityNotAllowed, msg + ": allow it in the Tenant's spec.policy or drop it from the pack's manifest", true}
	case errors.Is(err, runtime.ErrMemoryLimit):
		return &failure{v1.RevisionLoaded, v1.ReasonMemoryLimitTooLow, msg, true}
	case errors.Is(err, runtime.ErrInvalidManifest):
		return &failure{v1.RevisionLoaded, v1.ReasonInvalidManifest, msg, false}
	}
	return &failure{v1.RevisionLoaded, v1.ReasonInvalidWasm, msg, false}
}

// finalize unloads the runtime and, on the leader, applies the state retention and
// releases the Revision.
func (r *RevisionReconciler) finalize(ctx context.Context, rev *v1.Revision, leader bool) error {
	key := types.NamespacedName{Namespace: rev.Namespace, Name: rev.Name}
	r.Runtimes.Unload(ctx, key)
	if !leader || !controllerutil.ContainsFinalizer(rev, RevisionFinalizer) {
		return nil
	}
	retain := rev.Spec.State.Retention == v1.StateRetentionRetain
	if err := r.State.Remove(ctx, state.Spec{Namespace: rev.Namespace, Revision: rev.Name, RevisionUID: rev.UID, Tenant: rev.Spec.TenantRef.Name, Shards: int(rev.Spec.State.Shards)}, retain); err != nil {
		return err
	}
	controllerutil.RemoveFinalizer(rev, RevisionFinalizer)
	return r.Update(ctx, rev)
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
