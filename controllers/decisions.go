package controllers

// The pure decisions of the controllers: each takes what a reconcile gathered and
// returns what to do, so a table test covers it without an API server
// (go test -short ./controllers).

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/dispatcher"
	"github.com/packhost/packhost/runtime"
	"github.com/packhost/packhost/source"
)

// failure is why a Revision cannot load.
type failure struct {
	condition string
	reason    string
	message   string
	// retry: the cause may pass without a change to the Revision or its Tenant (a
	// source unreachable), so the load is tried again after retryFailedLoad.
	retry bool
}

func (f *failure) Error() string { return f.message }

// effectiveLimits lowers the tenant's limits by the revision's; a revision limit above
// the tenant's fails the revision. maxBody is the largest activity the revision takes.
func effectiveLimits(t v1.TenantLimits, rl *v1.RevisionLimits) (l runtime.Limits, maxBody int64, f *failure) {
	l = runtime.Limits{MemoryPages: uint32(t.MemoryPages), MaxConcurrency: int(t.MaxConcurrentActivities)}
	maxBody = t.MaxRequestBodyBytes
	if t.ActivityTimeout != nil {
		l.Timeout = t.ActivityTimeout.Duration
	}
	if rl == nil {
		return l, maxBody, nil
	}
	above := func(what string, rev, ten any) *failure {
		return &failure{v1.RevisionLoaded, v1.ReasonLimitAboveTenant, fmt.Sprintf("spec.limits.%s %v is above the tenant's %v: a Revision may only lower its tenant's limits", what, rev, ten), false}
	}
	if rl.MemoryPages != nil {
		if *rl.MemoryPages > t.MemoryPages {
			return l, maxBody, above("memoryPages", *rl.MemoryPages, t.MemoryPages)
		}
		l.MemoryPages = uint32(*rl.MemoryPages)
	}
	if rl.ActivityTimeout != nil {
		if t.ActivityTimeout != nil && rl.ActivityTimeout.Duration > t.ActivityTimeout.Duration {
			return l, maxBody, above("activityTimeout", rl.ActivityTimeout.Duration, t.ActivityTimeout.Duration)
		}
		l.Timeout = rl.ActivityTimeout.Duration
	}
	if rl.MaxConcurrentActivities != nil {
		if *rl.MaxConcurrentActivities > t.MaxConcurrentActivities {
			return l, maxBody, above("maxConcurrentActivities", *rl.MaxConcurrentActivities, t.MaxConcurrentActivities)
		}
		l.MaxConcurrency = int(*rl.MaxConcurrentActivities)
	}
	if rl.MaxRequestBodyBytes != nil {
		if *rl.MaxRequestBodyBytes > t.MaxRequestBodyBytes {
			return l, maxBody, above("maxRequestBodyBytes", *rl.MaxRequestBodyBytes, t.MaxRequestBodyBytes)
		}
		maxBody = *rl.MaxRequestBodyBytes
	}
	return l, maxBody, nil
}

// tenantFailure classifies an error reading a Revision's Tenant: missing is a
// failure that lasts until the Tenant is created, anything else is unreadable for now.
func tenantFailure(rev *v1.Revision, err error) *failure {
	if apierrors.IsNotFound(err) {
		return &failure{v1.RevisionPacksFetched, v1.ReasonTenantNotFound, fmt.Sprintf("Tenant %q not found in namespace %s: create it or fix spec.tenantRef", rev.Spec.TenantRef.Name, rev.Namespace), true}
	}
	return &failure{v1.RevisionPacksFetched, v1.ReasonTenantUnreadable, fmt.Sprintf("read Tenant %q: %v", rev.Spec.TenantRef.Name, err), true}
}

// keepsServing reports whether a failed reload leaves the runtime loaded before
// serving: only for failures that say nothing against it. A revoked capability or
// secret, or a changed pack, must take effect even though it is retried.
func keepsServing(f *failure) bool {
	switch f.reason {
	case v1.ReasonSourceUnreachable, v1.ReasonTenantUnreadable, v1.ReasonMemoryBudget:
		return true
	}
	return false
}

// fetchFailure classifies an error fetching pack.
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

// compileFailure classifies an error compiling pack ("" for the revision as a whole).
func compileFailure(pack string, err error) *failure {
	msg := err.Error()
	if pack != "" {
		msg = fmt.Sprintf("pack %s: %v", pack, err)
	}
	switch {
	case errors.Is(err, runtime.ErrMemoryBudget):
		return &failure{v1.RevisionLoaded, v1.ReasonMemoryBudget, msg + ": not loaded on this replica until room frees up", true}
	case errors.Is(err, runtime.ErrOverloaded):
		return &failure{v1.RevisionLoaded, v1.ReasonReplicaBusy, msg + ": tried again", true}
	case errors.Is(err, runtime.ErrCapabilityDenied):
		return &failure{v1.RevisionLoaded, v1.ReasonCapabilityNotAllowed, msg + ": allow it in the Tenant's spec.policy or drop it from the pack's manifest", true}
	case errors.Is(err, runtime.ErrMemoryLimit):
		return &failure{v1.RevisionLoaded, v1.ReasonMemoryLimitTooLow, msg, true}
	case errors.Is(err, runtime.ErrInvalidManifest):
		return &failure{v1.RevisionLoaded, v1.ReasonInvalidManifest, msg, false}
	}
	return &failure{v1.RevisionLoaded, v1.ReasonInvalidWasm, msg, false}
}

// secretFailure classifies an error reading the tenant's allowlisted Secrets.
func secretFailure(err error) *failure {
	if errors.Is(err, errSecretNotOptedIn) {
		return &failure{v1.RevisionLoaded, v1.ReasonSecretNotOptedIn, err.Error(), true}
	}
	return &failure{v1.RevisionLoaded, v1.ReasonSecretMissing, err.Error(), true}
}

// loadKey names the runtime a revision needs: its incarnation and everything of its
// tenant that the runtime is built from (env, policy, effective limits, allowlisted
// Secrets). A loaded runtime with another key is loaded again, so a tenant change
// reaches loaded revisions.
func loadKey(rev *v1.Revision, tenant *v1.Tenant, limits runtime.Limits, maxBody int64) string {
	b, _ := json.Marshal(struct {
		UID     types.UID
		Env     string
		Policy  v1.TenantPolicy
		Limits  runtime.Limits
		MaxBody int64
		Secrets []v1.LocalObjectReference
	}{rev.UID, tenant.Spec.Env, tenant.Spec.Policy, limits, maxBody, tenant.Spec.Secrets})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// sourceOrigin is the remote origin pack p comes from (a url's host:port, an image's
// registry); "" for a ConfigMap source.
func sourceOrigin(p v1.Pack) string {
	switch {
	case p.URL != "":
		if u, err := url.Parse(p.URL); err == nil {
			return u.Host
		}
	case p.Image != "":
		if ref, err := name.ParseReference(p.Image); err == nil {
			return ref.Context().RegistryStr()
		}
	}
	return ""
}

// routedNames are the revisions a split routes to: its spec's routes, the table it
// serves (status), which lags the spec while a named revision is not Ready, and while a
// rollout runs the tables it walks between. The stable table is what an abort goes back
// to: its revisions stay loaded (not drained, nor released when deleted) even when the
// step's table gives them nothing, as the last step's does.
func routedNames(s *v1.TrafficSplit) []string {
	out := make([]string, 0, len(s.Spec.Routes)+len(s.Status.Routes))
	for _, rt := range s.Spec.Routes {
		out = append(out, rt.RevisionName)
	}
	tables := [][]v1.RouteStatus{s.Status.Routes}
	if ro := s.Status.Rollout; rolloutRunning(ro) {
		tables = append(tables, ro.StableRoutes, ro.TargetRoutes)
	}
	for _, rt := range slices.Concat(tables...) {
		if !slices.Contains(out, rt.RevisionName) {
			out = append(out, rt.RevisionName)
		}
	}
	return out
}

// routesTo reports whether any of splits routes to revision.
func routesTo(splits []v1.TrafficSplit, revision string) bool {
	return slices.ContainsFunc(splits, func(s v1.TrafficSplit) bool { return slices.Contains(routedNames(&s), revision) })
}

// Intervals of routing memory.
const (
	// routedRefresh is how often status.lastRoutedTime is refreshed while a split
	// routes to a revision.
	routedRefresh = time.Minute
	// retentionGrace is how long after it was last routed a revision is kept from
	// retention: a split deleted and recreated, or reverted, finds it still there.
	retentionGrace = 10 * time.Minute
)

// lastRouted is the status.lastRoutedTime to record at now: refreshed while routed,
// at most once per routedRefresh so a routed revision costs a status write a minute.
func lastRouted(routed bool, last *time.Time, now time.Time) *time.Time {
	if routed && (last == nil || now.Sub(*last) >= routedRefresh) {
		return &now
	}
	return last
}

// next is what becomes of a loaded revision once it is loaded: serve, drain, retire or
// (deleted) finalize.
type next int

const (
	// nextServe: stay Ready, reachable by the split or by tag and explicit choice.
	nextServe next = iota
	// nextDrain: keep serving the sessions pinned to it, and check again.
	nextDrain
	// nextRetire: unload; it loads again if a split routes to it.
	nextRetire
	// nextFinalize: unload, apply state retention and release the deleted Revision.
	nextFinalize
)

// nextPhase decides a revision's next step from whether a split routes to it, whether
// one ever did (status.lastRoutedTime), the sessions pinned to it and whether it is
// being deleted. A revision that a split routed to and no longer does drains, then
// retires; one that was never routed stays Ready (reachable by tag or explicit choice).
// A deleted revision keeps serving while a split routes to it or a session is pinned.
func nextPhase(routed, wasRouted bool, sessions int, deleting bool) next {
	switch {
	case deleting:
		if !routed && sessions == 0 {
			return nextFinalize
		}
		return nextDrain
	case routed, !wasRouted:
		return nextServe
	case sessions > 0:
		return nextDrain
	}
	return nextRetire
}

// retentionVictims are the revisions to delete so that at most limit unrouted ones
// remain, oldest first. Never a revision that is routed, being deleted, not yet
// settled (no phase, Pending, Loading), Draining, or routed within retentionGrace of
// now.
func retentionVictims(revs []v1.Revision, routed func(name string) bool, limit int, now time.Time) []*v1.Revision {
	var candidates []*v1.Revision
	for i := range revs {
		rev := &revs[i]
		last := rev.Status.LastRoutedTime
		switch {
		case routed(rev.Name), !rev.DeletionTimestamp.IsZero():
		case rev.Status.Phase == "", rev.Status.Phase == v1.RevisionPending, rev.Status.Phase == v1.RevisionLoading, rev.Status.Phase == v1.RevisionDraining:
		case last != nil && now.Sub(last.Time) < retentionGrace:
		default:
			candidates = append(candidates, rev)
		}
	}
	// Newest first; ties by name so the order is the same on every reconcile.
	slices.SortFunc(candidates, func(a, b *v1.Revision) int {
		if c := b.CreationTimestamp.Compare(a.CreationTimestamp.Time); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
	if len(candidates) <= limit {
		return nil
	}
	return candidates[limit:]
}

// oldestSplit is the split that routes a tenant: the oldest of its splits (by
// creation, then name) that is not being deleted; any other is in conflict with it.
// nil when there is none.
func oldestSplit(splits []v1.TrafficSplit) *v1.TrafficSplit {
	var active *v1.TrafficSplit
	for i := range splits {
		s := &splits[i]
		if !s.DeletionTimestamp.IsZero() {
			continue
		}
		if active == nil || s.CreationTimestamp.Before(&active.CreationTimestamp) ||
			(s.CreationTimestamp.Equal(&active.CreationTimestamp) && s.Name < active.Name) {
			active = s
		}
	}
	return active
}

// routeTarget is what a split's reconcile found for one of its routes, in the order
// of spec.routes.
type routeTarget struct {
	// name is the route's revisionName.
	name string
	// rev is the Revision it names; nil when there is none.
	rev *v1.Revision
	// loaded: this replica has loaded this incarnation (UID) of rev.
	loaded bool
}

// routesBlocked says why a split's table cannot be used yet, from what was found for
// each route: a route's revision missing or of another tenant (the first such route in
// spec order decides), else every Failed revision and every one not loaded on this
// replica. "" when every route's revision is loaded here. stalled says that the table
// cannot be used without someone's change (a Failed revision, one of another tenant);
// a missing or loading revision may still come.
func routesBlocked(tenant string, targets []routeTarget) (reason, message string, stalled bool) {
	var waiting, failed []string
	for _, t := range targets {
		switch {
		case t.rev == nil:
			return v1.ReasonRevisionNotFound, fmt.Sprintf("Revision %q not found", t.name), false
		case t.rev.Spec.TenantRef.Name != tenant:
			return v1.ReasonWrongTenant, fmt.Sprintf("Revision %q belongs to tenant %q, not %q", t.name, t.rev.Spec.TenantRef.Name, tenant), true
		case t.loaded:
		case t.rev.Status.Phase == v1.RevisionFailed:
			why := t.name + " is Failed"
			if c := meta.FindStatusCondition(t.rev.Status.Conditions, v1.ConditionReady); c != nil {
				why += " (" + c.Reason + ": " + c.Message + ")"
			}
			failed = append(failed, why)
		default:
			waiting = append(waiting, fmt.Sprintf("%s is not Ready: %s", t.name, cmp.Or(string(t.rev.Status.Phase), "not reconciled yet")))
		}
	}
	if len(failed) > 0 {
		return v1.ReasonRevisionFailed, strings.Join(append(failed, waiting...), "; "), true
	}
	if len(waiting) > 0 {
		return v1.ReasonRevisionNotReady, strings.Join(waiting, "; "), false
	}
	return "", "", false
}

// splitTable is the table split serves for routes: current when it already is that
// table (building one hashes every bucket, so a refresh keeps the one in use), else a
// new one, which publish says to publish.
func splitTable(current *dispatcher.Table, split string, routes []v1.RouteStatus, sticky bool) (t *dispatcher.Table, publish bool) {
	table := make([]dispatcher.Route, len(routes))
	for i, rt := range routes {
		table[i] = dispatcher.Route{Revision: rt.RevisionName, Percent: int(rt.Percent), Tag: rt.Tag}
	}
	if current != nil && current.Split == split && current.Sticky == sticky && slices.Equal(current.Routes, table) {
		return current, false
	}
	return dispatcher.NewTable(split, table, sticky), true
}

// routeStatuses are a split's status.routes and status.summary for the table in use
// (nil: none), with the activities dispatched to each revision.
func routeStatuses(t *dispatcher.Table, dispatched map[string]int64) ([]v1.RouteStatus, string) {
	if t == nil {
		return nil, ""
	}
	var out []v1.RouteStatus
	for _, rt := range t.Routes {
		out = append(out, v1.RouteStatus{RevisionName: rt.Revision, Percent: int32(rt.Percent), Tag: rt.Tag, Dispatched: dispatched[rt.Revision]})
	}
	return out, t.Summary()
}

// tenantConfig is what this replica's dispatcher needs of a tenant, its tokens aside.
func tenantConfig(t *v1.Tenant) *dispatcher.TenantConfig {
	cfg := &dispatcher.TenantConfig{
		Namespace: t.Namespace, Name: t.Name, Env: t.Spec.Env,
		MaxBodyBytes: t.Spec.Limits.MaxRequestBodyBytes, Tokens: map[string]string{},
		// The dispatcher's share for this tenant's requests derives from it.
		MaxConcurrentActivities: int(t.Spec.Limits.MaxConcurrentActivities),
	}
	if t.Spec.Auth != nil {
		cfg.RoutingCallers = t.Spec.Auth.RoutingCallers
	}
	return cfg
}

// bearerTokens maps each token an auth Secret holds to its caller (the key); an empty
// value is no token.
func bearerTokens(data map[string][]byte) map[string]string {
	out := map[string]string{}
	for caller, token := range data {
		if len(token) > 0 {
			out[string(token)] = caller
		}
	}
	return out
}

// authFailure classifies an error reading a tenant's auth Secret name. One that does
// not opt in or does not exist ends the tokens last read from it (forget). Any other
// error may pass: the tokens last read from it (last, nil when there are none) stay
// accepted, and the reason says so.
func authFailure(name string, err error, last *goodTokens) (reason, message string, forget bool) {
	switch {
	case errors.Is(err, errSecretNotOptedIn):
		return v1.ReasonSecretNotOptedIn, err.Error(), true
	case apierrors.IsNotFound(err):
		return v1.ReasonAuthSecretMissing, fmt.Sprintf("auth Secret %q not found: create it, or fix spec.auth.secretRef", name), true
	case last == nil:
		return v1.ReasonAuthSecretMissing, err.Error(), false
	}
	return v1.ReasonAuthSecretUnreadable, fmt.Sprintf("%v; the %d tokens last read from it at %s are still accepted",
		err, len(last.tokens), last.read.UTC().Format(time.RFC3339)), false
}

// markTenant records a tenant's readiness from the reason auth gave: ready when there
// is none; waiting (kstatus InProgress) while its auth Secret is unreadable, which may
// pass; otherwise not ready until someone's change (Stalled).
func markTenant(s *v1.TenantStatus, generation int64, reason, message string) {
	switch reason {
	case "":
		s.MarkReady(generation)
	case v1.ReasonAuthSecretUnreadable:
		s.MarkWaiting(generation, reason, message)
	default:
		s.MarkNotReady(generation, reason, message)
	}
}

// deletionWait says why a deleted tenant is not released yet: the Revisions that still
// reference it (revs). "" when none does.
func deletionWait(revs []v1.Revision) string {
	if len(revs) == 0 {
		return ""
	}
	return fmt.Sprintf("deletion waits for %d Revisions that reference this tenant (first: %s): delete them first", len(revs), revs[0].Name)
}
