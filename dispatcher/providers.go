package dispatcher

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/packhost/packhost/runtime"
)

// revisionFor authenticates the caller and finds the revision the path names; it writes
// the error response and returns nil when the request may not go on.
func (s *Server) revisionFor(w http.ResponseWriter, r *http.Request) (*runtime.Revision, *TenantConfig, string) {
	cfg, _, _ := s.authenticate(w, r, r.PathValue("ns"), r.PathValue("tenant"))
	if cfg == nil {
		return nil, nil, ""
	}
	name := r.PathValue("revision")
	rt := s.Revisions.Revision(cfg.Namespace, cfg.Name, name)
	if rt == nil {
		writeError(w, http.StatusServiceUnavailable, CodeNoReadyRevision, fmt.Sprintf("revision %s is not loaded on this replica", name))
		return nil, nil, ""
	}
	return rt, cfg, name
}

// decodeFor is revisionFor plus a JSON body decoded into v.
func (s *Server) decodeFor(w http.ResponseWriter, r *http.Request, what string, v any) (*runtime.Revision, string) {
	rt, cfg, name := s.revisionFor(w, r)
	if rt == nil {
		return nil, ""
	}
	body, ok := readBody(w, r, cfg.MaxBodyBytes)
	if !ok {
		return nil, ""
	}
	if err := json.Unmarshal(body, v); err != nil {
		writeError(w, http.StatusBadRequest, CodeInvalidActivity, what+": "+err.Error())
		return nil, ""
	}
	return rt, name
}

func writeJSON(w http.ResponseWriter, revision string, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(RevisionHeader, revision)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) identify(w http.ResponseWriter, r *http.Request) {
	var req runtime.IdentifyRequest
	rt, name := s.decodeFor(w, r, "identify request", &req)
	if rt == nil {
		return
	}
	lower := make(map[string]string, len(req.Headers))
	for k, v := range req.Headers {
		lower[strings.ToLower(k)] = v
	}
	req.Headers = lower
	id, err := rt.Identify(r.Context(), req, r.URL.Query().Get("scoped") == "true")
	if err != nil {
		writeRuntimeError(w, err)
		return
	}
	writeJSON(w, name, struct {
		Outcome string `json:"outcome"`
		runtime.Identity
	}{id.OutcomeName(), id})
}

func (s *Server) describe(w http.ResponseWriter, r *http.Request) {
	rt, _, name := s.revisionFor(w, r)
	if rt == nil {
		return
	}
	hints, err := rt.DescribeIdentify(r.Context())
	if err != nil {
		writeRuntimeError(w, err)
		return
	}
	writeJSON(w, name, map[string]any{"hints": hints})
}

func (s *Server) invoke(w http.ResponseWriter, r *http.Request) {
	var req runtime.InvokeRequest
	rt, name := s.decodeFor(w, r, "invoke request", &req)
	if rt == nil {
		return
	}
	if req.ProviderType == "" || req.Op == "" {
		writeError(w, http.StatusBadRequest, CodeInvalidActivity, "invoke request needs provider_type and op")
		return
	}
	out, err := rt.Invoke(r.Context(), req)
	if err != nil {
		writeRuntimeError(w, err)
		return
	}
	writeJSON(w, name, map[string]json.RawMessage{"result": out})
}
