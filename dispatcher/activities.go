package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/packhost/packhost/internal/tracing"
	"github.com/packhost/packhost/runtime"
)

// Response is what an activity request answers.
type Response struct {
	Revision   string             `json:"revision"`
	Activities []runtime.Activity `json:"activities"`
}

// statusWriter remembers the status a handler answered with, for the metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}

func (s *Server) activities(w http.ResponseWriter, r *http.Request) {
	s.serveActivity(w, r, r.PathValue("ns"), r.PathValue("tenant"), r.PathValue("tag"))
}

// serveActivity serves one activity for tenant ns/tenant, routed by the tenant's split
// or, when tag is set, to the route with that tag.
func (s *Server) serveActivity(rw http.ResponseWriter, r *http.Request, ns, tenant, tag string) {
	start := time.Now()
	w := &statusWriter{ResponseWriter: rw, status: http.StatusOK}
	cfg, table, caller := s.authenticate(w, r, ns, tenant)
	if cfg == nil {
		return // counted without labels: a refused caller makes no series
	}
	revision := ""
	// Every authenticated answer is counted once, with the status it actually had.
	defer func() {
		// One clock read serves both, so the metrics and the analysis see one latency.
		now := time.Now()
		s.Metrics.request(ns, tenant, revision, w.status, now.Sub(start))
		if s.Router.Analyzing() {
			status := w.status
			if errors.Is(r.Context().Err(), context.Canceled) {
				status = StatusCallerGone
			}
			s.Router.Observe(ns, tenant, revision, status, now.Sub(start), now)
		}
	}()
	release, ok := s.tenantSlot(w, cfg)
	if !ok {
		return
	}
	defer release()
	body, ok := readBody(w, r, cfg.MaxBodyBytes)
	if !ok {
		return
	}
	a, err := runtime.ParseActivity(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, CodeInvalidActivity, err.Error())
		return
	}
	if a.TraceID == "" {
		a.TraceID = tracing.TraceID(r.Context()) // the caller's own trace_id wins
	}
	var status int
	var code, msg string
	_, span := tracing.Start(r.Context(), s.tracer, spanRoute)
	revision, status, code, msg = s.route(r, cfg, table, caller, tag, a)
	var rt *runtime.Revision
	if status == 0 {
		if rt = s.Revisions.Revision(ns, tenant, revision); rt == nil {
			code = CodeNoReadyRevision
		}
	}
	endRoute(span, ns, tenant, tag, revision, code)
	if status != 0 {
		writeError(w, status, code, msg)
		return
	}
	if bl, ok := s.Revisions.(BodyLimits); ok && rt != nil {
		// The body was read under the tenant's limit; the revision's may be lower.
		if limit, ok := bl.MaxBodyBytes(ns, tenant, revision); ok && limit > 0 && int64(len(body)) > limit {
			writeError(w, http.StatusRequestEntityTooLarge, CodeTooLarge, fmt.Sprintf("the body is larger than revision %s's %d-byte limit", revision, limit))
			return
		}
	}
	if rt == nil {
		writeError(w, http.StatusServiceUnavailable, CodeNoReadyRevision, fmt.Sprintf("revision %s is not loaded on this replica", revision))
		// Only loaded revisions get series: a name a routing caller made up, or one
		// unloaded after its series were removed, must not leave series behind.
		revision = ""
		return
	}
	releaseSlot, ok := s.replicaSlot(w)
	if !ok {
		return
	}
	defer releaseSlot()
	done := s.Metrics.inFlight(ns, tenant, revision)
	// The revision's runtime enforces the activity deadline (the tenant's, or lower).
	out, err := rt.Handle(r.Context(), a)
	done()
	w.Header().Set(RevisionHeader, revision)
	if err != nil {
		writeRuntimeError(w, err)
		if errors.Is(err, runtime.ErrNotLoaded) {
			revision = "" // unloaded meanwhile: as above
		}
		return
	}
	s.Router.Count(ns, tenant, revision)
	resp := appendResponse(make([]byte, 0, 256+outputBytes(out)), revision, out)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(resp)))
	_, _ = w.Write(resp)
}

func outputBytes(out []runtime.Activity) int {
	n := 0
	for _, a := range out {
		n += len(a.Payload) + len(a.Action) + 48
	}
	return n
}

// appendResponse encodes a Response by hand: the replies' payloads were checked as
// JSON by the runtime when the guest output them, so they are embedded as they are,
// not parsed and compacted again. Replies carry only kind, action and payload.
func appendResponse(b []byte, revision string, out []runtime.Activity) []byte {
	b = append(b, `{"revision":`...)
	b = appendString(b, revision)
	b = append(b, `,"activities":[`...)
	for i, a := range out {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"kind":`...)
		b = appendString(b, a.Kind)
		if a.Action != "" {
			b = append(b, `,"action":`...)
			b = appendString(b, a.Action)
		}
		if len(a.Payload) > 0 {
			b = append(b, `,"payload":`...)
			b = append(b, a.Payload...)
		}
		b = append(b, '}')
	}
	return append(b, "]}"...)
}

// appendString appends s as a JSON string.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x7f {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// route picks the revision: an explicit choice (tag or header) for routing callers,
// then the session's pin, then the table's sticky bucket or weighted random choice.
func (s *Server) route(r *http.Request, cfg *TenantConfig, table *Table, caller, tag string, a *runtime.Activity) (revision string, status int, code, msg string) {
	chosen := r.Header.Get(RevisionHeader)
	if tag != "" || chosen != "" {
		if !slices.Contains(cfg.RoutingCallers, caller) {
			return "", http.StatusForbidden, CodeForbidden, fmt.Sprintf("caller %q may not choose a revision: list it in the Tenant's spec.auth.routingCallers", caller)
		}
		if chosen != "" {
			return chosen, 0, "", ""
		}
		if table == nil {
			return "", http.StatusNotFound, CodeNoSplit, "the tenant has no TrafficSplit in use"
		}
		rt, ok := table.ByTag(tag)
		if !ok {
			return "", http.StatusNotFound, CodeUnknownTag, fmt.Sprintf("the split has no route tagged %q", tag)
		}
		return rt.Revision, 0, "", ""
	}
	session := runtime.SessionKey(cfg.Env, cfg.Namespace+"/"+cfg.Name, a)
	if session != "" && s.Pins != nil {
		name, err := s.pinned(cfg, a, session)
		if err != nil {
			status, code := statusOf(err)
			return "", status, code, err.Error()
		}
		if name != "" {
			return name, 0, "", ""
		}
	}
	if table == nil {
		return "", http.StatusNotFound, CodeNoSplit, "the tenant has no TrafficSplit in use"
	}
	return table.Pick(session).Revision, 0, "", ""
}

// pinned is the revision holding the session's parked wait that a continues, or "" to
// route a by the table. Only waits on the tenant's revisions loaded here count. Pins
// are per flow, as the runtime resumes them (see runtime's chooseFlow):
//   - an activity that names its flow (flow_id or flow_type) goes where the flow it
//     names on that revision is parked; a flow parked nowhere is routed by the table,
//     whatever other flows of the session are parked;
//   - one that does not goes where the session's waits (in its pack_id's pack, when it
//     names one) are parked, when they are all on one revision, whose runtime resumes
//     the one or refuses to choose among several; waits on several revisions get the
//     runtime's AmbiguousFlowError here.
func (s *Server) pinned(cfg *TenantConfig, a *runtime.Activity, session string) (string, error) {
	pins := s.Pins.SessionPins(session, time.Now())
	if len(pins) == 0 {
		return "", nil
	}
	var live []runtime.Pin
	loaded := map[string]*runtime.Revision{}
	for _, p := range pins {
		ns, name, _ := strings.Cut(p.Revision, "/")
		if ns != cfg.Namespace {
			continue
		}
		rt, seen := loaded[name]
		if !seen {
			rt = s.Revisions.Revision(ns, cfg.Name, name)
			loaded[name] = rt
		}
		if rt != nil {
			live = append(live, p)
		}
	}
	if a.FlowID != "" || a.FlowType != "" {
		for _, p := range live {
			_, name, _ := strings.Cut(p.Revision, "/")
			pack, flow, err := loaded[name].SelectFlow(a)
			if err == nil && pack == p.Pack && flow == p.Flow {
				return name, nil
			}
		}
		return "", nil
	}
	if a.PackID != "" {
		live = slices.DeleteFunc(live, func(p runtime.Pin) bool { return p.Pack != a.PackID })
	}
	if len(live) == 0 {
		return "", nil
	}
	for _, p := range live[1:] {
		if p.Revision != live[0].Revision {
			return "", &runtime.AmbiguousFlowError{Parked: live}
		}
	}
	_, name, _ := strings.Cut(live[0].Revision, "/")
	return name, nil
}
