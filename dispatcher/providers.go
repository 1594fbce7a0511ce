package dispatcher

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/packhost/packhost/internal/tracing"
	"github.com/packhost/packhost/runtime"
)

// The provider endpoints run a revision's identify, describe-identify and
// provider-invoke exports for a caller that names the revision in the path. They are
// admitted as activities are: authentication, the tenant's share, the body, then a
// replica slot to run the guest.

// providerCall is an admitted request to a provider endpoint.
type providerCall struct {
	rt      *runtime.Revision
	name    string
	release func()
}

// admitProvider authenticates the caller, takes the tenant's and then the replica's
// slots, finds the revision the path names and, when v is not nil, decodes the JSON
// body into v. It writes the error response and returns false when the request may
// not go on; otherwise the caller must call release.
func (s *Server) admitProvider(w http.ResponseWriter, r *http.Request, what string, v any) (providerCall, bool) {
	return s.admitProviderAs(w, r, what, v, CodeNoReadyRevision)
}

// admitProviderAs is admitProvider answering a revision that is not loaded with
// notLoadedCode.
func (s *Server) admitProviderAs(w http.ResponseWriter, r *http.Request, what string, v any, notLoadedCode string) (providerCall, bool) {
	cfg, _, _ := s.authenticate(w, r, r.PathValue("ns"), r.PathValue("tenant"))
	if cfg == nil {
		return providerCall{}, false
	}
	releaseTenant, ok := s.tenantSlot(w, cfg)
	if !ok {
		return providerCall{}, false
	}
	fail := func() (providerCall, bool) { releaseTenant(); return providerCall{}, false }
	name := r.PathValue("revision")
	rt := s.Revisions.Revision(cfg.Namespace, cfg.Name, name)
	if rt == nil {
		writeError(w, http.StatusServiceUnavailable, notLoadedCode, fmt.Sprintf("revision %s is not loaded on this replica", name))
		return fail()
	}
	if v != nil {
		limit := cfg.MaxBodyBytes
		if bl, ok := s.Revisions.(BodyLimits); ok {
			// The revision's own limit, as for its activities, when it is lower.
			if l, ok := bl.MaxBodyBytes(cfg.Namespace, cfg.Name, name); ok && l > 0 && (limit <= 0 || l < limit) {
				limit = l
			}
		}
		body, ok := readBody(w, r, limit)
		if !ok {
			return fail()
		}
		if err := json.Unmarshal(body, v); err != nil {
			writeError(w, http.StatusBadRequest, CodeInvalidActivity, what+": "+err.Error())
			return fail()
		}
	}
	releaseReplica, ok := s.replicaSlot(w)
	if !ok {
		return fail()
	}
	return providerCall{rt: rt, name: name, release: func() { releaseReplica(); releaseTenant() }}, true
}

func writeJSON(w http.ResponseWriter, revision string, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(RevisionHeader, revision)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) invoke(w http.ResponseWriter, r *http.Request) {
	var req runtime.InvokeRequest
	c, ok := s.admitProviderAs(w, r, "invoke request", &req, CodeNotLoaded)
	if !ok {
		return
	}
	defer c.release()
	if req.ProviderType == "" || req.Op == "" {
		writeError(w, http.StatusBadRequest, CodeInvalidActivity, "invoke request needs provider_type and op")
		return
	}
	if req.TraceID == "" {
		req.TraceID = tracing.TraceID(r.Context()) // the caller's own trace_id wins
	}
	out, err := c.rt.Invoke(r.Context(), req)
	if err != nil {
		status, code := invokeStatusOf(err)
		writeError(w, status, code, err.Error())
		return
	}
	writeJSON(w, c.name, map[string]json.RawMessage{"result": out})
}

// invokeStatusOf maps an invoke's error: each way a provider op fails closed has its own
// code, so a caller can tell a misconfigured revision (no_binding, ambiguous_binding)
// from a request for an op the pack does not allow (op_not_allowed) and from a replica
// that does not have the revision (not_loaded).
func invokeStatusOf(err error) (int, string) {
	switch {
	case errors.Is(err, runtime.ErrInProgress):
		return http.StatusConflict, CodeInProgress
	case errors.Is(err, runtime.ErrAmbiguous):
		return http.StatusUnprocessableEntity, CodeAmbiguousBinding
	case errors.Is(err, runtime.ErrOpNotAllowed):
		return http.StatusUnprocessableEntity, CodeOpNotAllowed
	case errors.Is(err, runtime.ErrUnsupported):
		return http.StatusUnprocessableEntity, CodeNoBinding
	case errors.Is(err, runtime.ErrNotLoaded):
		return http.StatusServiceUnavailable, CodeNotLoaded
	}
	return statusOf(err)
}
