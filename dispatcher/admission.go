package dispatcher

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"unicode/utf8"
)

// Admission: one tenant uses its own share of the dispatcher, never more (DESIGN.md,
// "Trust model"; the operators' guide, "Fair shares"). A request passes, in order:
//
//  1. authentication, from the headers alone: a refused caller costs no body read, no
//     slot and no series;
//  2. the tenant's share (tenantShare): requests of one tenant in the dispatcher at
//     once, from here until the answer; past it, 429 at once;
//  3. reading and checking the body, under the tenant's share and its body limit, so a
//     slow sender holds only its own tenant's slots, for at most ReadTimeout;
//  4. the replica's MaxInFlight slots, taken only to run the activity on the guest:
//     the last line, reached only when many tenants are busy at once.
//
// A tenant's stuck guests hold replica slots too, but no more than its share, which
// is at most half the replica's slots: filling a replica takes at least two busy
// tenants, and the default limit (1024) holds 16 tenants at the CRD's default share
// (64) before any of them meets the last line.

// DefaultMaxConcurrentActivities is the CRD's default for a Tenant's
// spec.limits.maxConcurrentActivities, used when a config leaves it zero.
const DefaultMaxConcurrentActivities = 16

// tenantShareFactor is how many requests a tenant may have in the dispatcher per
// activity one of its revisions runs at once: room for a canary and a stable revision
// both running at their limit, with as many again reading their bodies or waiting for
// an instance (a revision queues up to four times its limit; past the share, the
// dispatcher refuses before the runtime would).
const tenantShareFactor = 4

// tenantShare is how many of a tenant's requests this replica's dispatcher holds at
// once: tenantShareFactor × maxConcurrentActivities, and never more than half of the
// replica's limit (at least one), so that no one tenant can take every slot.
func tenantShare(cfg *TenantConfig, replica int) int {
	n := cfg.MaxConcurrentActivities
	if n <= 0 {
		n = DefaultMaxConcurrentActivities
	}
	n *= tenantShareFactor
	if replica > 0 {
		n = min(n, max(1, replica/2))
	}
	return n
}

// tenantSlot takes one of the authenticated tenant's slots. It writes the 429 and
// returns false when the tenant is at its share.
func (s *Server) tenantSlot(w http.ResponseWriter, cfg *TenantConfig) (release func(), ok bool) {
	e := s.Router.entry(cfg.Namespace, cfg.Name, true)
	share := tenantShare(cfg, s.MaxInFlight)
	if n := e.active.Add(1); n > int64(share) {
		e.active.Add(-1)
		writeError(w, http.StatusTooManyRequests, CodeOverloaded, fmt.Sprintf("the tenant has %d requests in flight on this replica, its share: retry later", share))
		return nil, false
	}
	return func() { e.active.Add(-1) }, true
}

// replicaSlot takes one of the replica's MaxInFlight slots to run an activity. It
// writes the 429 and returns false when the replica is at its limit.
func (s *Server) replicaSlot(w http.ResponseWriter) (release func(), ok bool) {
	if n := s.inFlight.Add(1); s.MaxInFlight > 0 && n > int64(s.MaxInFlight) {
		s.inFlight.Add(-1)
		writeError(w, http.StatusTooManyRequests, CodeOverloaded, "the dispatcher is at its in-flight limit")
		return nil, false
	}
	return func() { s.inFlight.Add(-1) }, true
}

// preallocBody is the largest declared body read into a buffer allocated before its
// bytes arrive; larger ones grow as they come, so a slow sender cannot make the
// dispatcher hold memory it has not sent.
const preallocBody = 64 << 10

// readBody reads at most limit bytes; past it the response is 413. A body whose length
// is declared and small is read into one buffer of that size. A body that is not valid
// UTF-8 is refused with 400: every string the host takes from a caller is UTF-8, so
// session keys, logs and what guests echo back stay parseable by a strict client.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	if limit <= 0 {
		limit = 1 << 20
	}
	tooLarge := func() ([]byte, bool) {
		writeError(w, http.StatusRequestEntityTooLarge, CodeTooLarge, fmt.Sprintf("the body is larger than the tenant's %d-byte limit", limit))
		return nil, false
	}
	if r.ContentLength > limit {
		return tooLarge()
	}
	var body []byte
	var err error
	if r.ContentLength >= 0 && r.ContentLength <= preallocBody {
		// net/http's body reader ends at the declared length and fails a shorter body.
		body = make([]byte, r.ContentLength)
		_, err = io.ReadFull(r.Body, body)
	} else {
		body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return tooLarge()
		}
		writeError(w, http.StatusBadRequest, CodeInvalidActivity, "read body: "+err.Error())
		return nil, false
	}
	if !utf8.Valid(body) {
		writeError(w, http.StatusBadRequest, CodeInvalidActivity, "the body is not valid UTF-8")
		return nil, false
	}
	return body, true
}
