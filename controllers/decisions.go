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

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/packhost/packhost/api/v1alpha1"
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

// sourceOrigins are the remote origins a revision's packs come from (a url's
// host:port, an image's registry); ConfigMap sources have none.
func sourceOrigins(packs []v1.Pack) []string {
	var out []string
	for _, p := range packs {
		switch {
		case p.URL != "":
			if u, err := url.Parse(p.URL); err == nil {
				out = append(out, u.Host)
			}
		case p.Image != "":
			registry, _, _ := strings.Cut(p.Image, "/")
			out = append(out, registry)
		}
	}
	return out
}

// routedNames are the revisions a split routes to: its spec's routes and the table
// it serves (status), which lags the spec while a named revision is not Ready.
func routedNames(s *v1.TrafficSplit) []string {
	out := make([]string, 0, len(s.Spec.Routes)+len(s.Status.Routes))
	for _, rt := range s.Spec.Routes {
		out = append(out, rt.RevisionName)
	}
	for _, rt := range s.Status.Routes {
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
