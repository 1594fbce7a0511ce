package dispatcher

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultWarmUp bounds how long a starting replica waits for routed revisions to load
// before it reports Ready anyway. A pack loads in well under a second from the
// compilation cache and in seconds when it must be fetched and compiled; a revision
// still not loaded after this is one tenant's problem (its activities get 503
// no_ready_revision), not a reason to keep the replica out of the Service.
const DefaultWarmUp = time.Minute

// Readiness is a replica's readiness: Ready once it has synced and loaded what it can,
// and from then on Ready for good. Readiness is about the replica, not about tenants:
// a revision that is missing, failing, deleted or routed but not loaded never makes a
// replica NotReady, or one tenant could take every replica out of the Service at once.
//
// "Loaded what it can" means every revision that a split routes to is loaded here or
// settled (deleted, failed: waiting will not load it), or WarmUp has passed since
// Start. Until then a new replica keeps out of the Service, so a rolling update does
// not send activities to a replica that would answer them 503.
type Readiness struct {
	// Synced reports whether the replica's view of the cluster is complete (its
	// informer caches have synced).
	Synced func(context.Context) bool
	// Pending counts the routed revisions that are neither loaded on this replica nor
	// settled. An error counts as pending: it is waited out like one.
	Pending func(context.Context) (int, error)
	// WarmUp is how long after Start pending revisions may hold the replica back
	// (DefaultWarmUp when zero).
	WarmUp time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time

	startOnce sync.Once
	start     time.Time
	ready     atomic.Bool
}

// errStarting is what Check says while the replica warms up; no tenant or revision
// names, since the dispatcher's /readyz is public.
var errStarting = errors.New("the replica is starting")

// Start sets the time the warm-up counts from; Check calls it with the time of the
// first probe when it was not called.
func (r *Readiness) Start(t time.Time) { r.startOnce.Do(func() { r.start = t }) }

// Check is a readiness check for the manager's probe port and the dispatcher's /readyz.
func (r *Readiness) Check(req *http.Request) error {
	if r.ready.Load() {
		return nil
	}
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	t := now()
	r.Start(t)
	if !r.Synced(req.Context()) {
		return fmt.Errorf("%w: caches are not synced", errStarting)
	}
	n, err := r.Pending(req.Context())
	if (err != nil || n > 0) && t.Sub(r.start) < cmp.Or(r.WarmUp, DefaultWarmUp) {
		if err != nil {
			return fmt.Errorf("%w: count routed revisions: %w", errStarting, err)
		}
		return fmt.Errorf("%w: %d routed revisions are still loading", errStarting, n)
	}
	r.ready.Store(true)
	return nil
}
