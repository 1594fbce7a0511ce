package dispatcher

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/packhost/packhost/runtime"
)

// RevisionHeader names, on a request, the revision a routing caller chooses, and on a
// response, the revision that served it.
const RevisionHeader = "Packhost-Revision"

// Revisions finds the runtimes loaded on this replica. A revision that belongs to
// another tenant is not found, so no caller reaches another tenant's revisions.
type Revisions interface {
	Revision(namespace, tenant, name string) *runtime.Revision
}

// Pins says which revision holds a live wait for a session key.
type Pins interface {
	PinnedRevision(session string, now time.Time) (string, bool)
}

// Server is the dispatcher's HTTP server.
type Server struct {
	Addr      string
	Router    *Router
	Revisions Revisions
	Pins      Pins
	// MaxInFlight bounds the activities served at once by this replica; past it
	// requests get 429 with Retry-After.
	MaxInFlight int
	// Ready answers /readyz.
	Ready   func(*http.Request) error
	Metrics *Metrics
	Log     logr.Logger
	// ShutdownTimeout bounds how long in-flight activities may finish on shutdown.
	ShutdownTimeout time.Duration
	// ReadTimeout bounds reading a whole request, headers and body (default 30 s): a
	// client sending its body slowly holds an in-flight slot at most this long.
	ReadTimeout time.Duration
	// IdleTimeout closes a keep-alive connection idle this long (default 2 min).
	IdleTimeout time.Duration

	inFlight atomic.Int64
	listener net.Listener
}

// Error codes in error bodies: stable, for clients to branch on.
const (
	CodeInvalidActivity = "invalid_activity"
	CodeUnknownTenant   = "unknown_tenant"
	CodeNoSplit         = "no_split"
	CodeUnauthenticated = "unauthenticated"
	CodeForbidden       = "forbidden"
	CodeTooLarge        = "body_too_large"
	CodeConflict        = "session_conflict"
	CodeOverloaded      = "overloaded"
	CodeGuestTrap       = "guest_error"
	CodeTimeout         = "timeout"
	CodeNoReadyRevision = "no_ready_revision"
	CodeNoSuchFlow      = "no_such_flow"
	CodeUnknownTag      = "unknown_tag"
	CodeStateFull       = "state_full"
	CodeUnsupported     = "unsupported"
	CodeInternal        = "internal"
)

// Handler returns the dispatcher's routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/namespaces/{ns}/tenants/{tenant}/activities", s.activities)
	mux.HandleFunc("POST /v1/namespaces/{ns}/tenants/{tenant}/tags/{tag}/activities", s.activities)
	mux.HandleFunc("POST /v1/namespaces/{ns}/tenants/{tenant}/revisions/{revision}/identify", s.identify)
	mux.HandleFunc("GET /v1/namespaces/{ns}/tenants/{tenant}/revisions/{revision}/identify", s.describe)
	mux.HandleFunc("POST /v1/namespaces/{ns}/tenants/{tenant}/revisions/{revision}/invoke", s.invoke)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.Metrics.gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if s.Ready != nil {
			if err := s.Ready(r); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		io.WriteString(w, "ok")
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ns, tenant, ok := activityPath(r); ok {
			s.serveActivity(w, r, ns, tenant, "")
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// activityPath recognizes the route nearly every request takes,
// POST /v1/namespaces/{ns}/tenants/{tenant}/activities, without the mux's pattern
// matching. Anything unusual (escaped bytes, empty or dot segments, a trailing slash)
// is left to the mux, which answers as it always does (FuzzActivityPathMatchesMux).
func activityPath(r *http.Request) (ns, tenant string, ok bool) {
	if r.Method != http.MethodPost || r.URL.RawPath != "" {
		return "", "", false
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/v1/namespaces/")
	if !ok {
		return "", "", false
	}
	ns, rest, _ = strings.Cut(rest, "/")
	rest, ok = strings.CutPrefix(rest, "tenants/")
	if !ok {
		return "", "", false
	}
	tenant, rest, _ = strings.Cut(rest, "/")
	if rest != "activities" || !plainSegment(ns) || !plainSegment(tenant) {
		return "", "", false
	}
	return ns, tenant, true
}

func plainSegment(s string) bool { return s != "" && s != "." && s != ".." }

// Listen binds the server's address; Start then serves on it. Tests use it to learn
// the port before serving.
func (s *Server) Listen() (net.Addr, error) {
	l, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return nil, fmt.Errorf("dispatcher listen on %s: %w", s.Addr, err)
	}
	s.listener = l
	return l.Addr(), nil
}

// Start serves until ctx is done, then stops taking requests and lets in-flight
// activities finish (up to ShutdownTimeout). It is a manager Runnable.
func (s *Server) Start(ctx context.Context) error {
	if s.listener == nil {
		if _, err := s.Listen(); err != nil {
			return err
		}
	}
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       cmp.Or(s.ReadTimeout, 30*time.Second),
		IdleTimeout:       cmp.Or(s.IdleTimeout, 2*time.Minute),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(s.listener) }()
	s.Log.Info("Dispatcher serving", "address", s.listener.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("dispatcher: %w", err)
	case <-ctx.Done():
	}
	timeout := s.ShutdownTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("dispatcher shutdown: %w", err)
	}
	return nil
}

// NeedLeaderElection is false: every replica serves activities.
func (s *Server) NeedLeaderElection() bool { return false }

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	var b errorBody
	b.Error.Code, b.Error.Message = code, msg
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(b)
}

// writeRuntimeError answers with the status and code of a runtime error.
func writeRuntimeError(w http.ResponseWriter, err error) {
	status, code := statusOf(err)
	writeError(w, status, code, err.Error())
}

// statusOf maps a runtime error to an HTTP status and code.
func statusOf(err error) (int, string) {
	switch {
	case errors.Is(err, runtime.ErrInvalidActivity):
		return http.StatusBadRequest, CodeInvalidActivity
	case errors.Is(err, runtime.ErrNoSuchFlow):
		return http.StatusNotFound, CodeNoSuchFlow
	case errors.Is(err, runtime.ErrOverloaded):
		return http.StatusTooManyRequests, CodeOverloaded
	case errors.Is(err, runtime.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, CodeTimeout
	case errors.Is(err, runtime.ErrTrap), errors.Is(err, runtime.ErrInvalidOutput):
		return http.StatusBadGateway, CodeGuestTrap
	case errors.Is(err, runtime.ErrNotLoaded):
		return http.StatusServiceUnavailable, CodeNoReadyRevision
	case errors.Is(err, runtime.ErrConflict):
		return http.StatusConflict, CodeConflict
	case errors.Is(err, runtime.ErrStateFull):
		return http.StatusInsufficientStorage, CodeStateFull
	case errors.Is(err, runtime.ErrUnsupported), errors.Is(err, runtime.ErrAmbiguous), errors.Is(err, runtime.ErrOpNotAllowed):
		return http.StatusUnprocessableEntity, CodeUnsupported
	}
	return http.StatusInternalServerError, CodeInternal
}

// authenticate finds the tenant and checks the caller's bearer token. It writes the
// error response and returns nil when the request may not go on.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request, ns, name string) (*TenantConfig, *Table, string) {
	cfg, table := s.Router.Tenant(ns, name)
	if cfg == nil {
		writeError(w, http.StatusNotFound, CodeUnknownTenant, fmt.Sprintf("no tenant %s/%s", ns, name))
		return nil, nil, ""
	}
	auth := r.Header.Get("Authorization")
	token, ok := strings.CutPrefix(auth, "Bearer ")
	if auth == "" || !ok || token == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="packhost"`)
		writeError(w, http.StatusUnauthorized, CodeUnauthenticated, "send Authorization: Bearer <token> with a token from the tenant's auth Secret")
		return nil, nil, ""
	}
	caller, ok := cfg.Caller(token)
	if !ok {
		writeError(w, http.StatusForbidden, CodeForbidden, fmt.Sprintf("the token is not one of tenant %s/%s's", ns, name))
		return nil, nil, ""
	}
	return cfg, table, caller
}

// preallocBody is the largest declared body read into a buffer allocated before its
// bytes arrive; larger ones grow as they come, so a slow sender cannot make the
// dispatcher hold memory it has not sent.
const preallocBody = 64 << 10

// readBody reads at most limit bytes; past it the response is 413. A body whose length
// is declared and small is read into one buffer of that size.
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
	return body, true
}

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
	revision := ""
	// Every answer is counted once, with the status it actually had.
	defer func() { s.Metrics.request(ns, tenant, revision, w.status, start) }()
	if n := s.inFlight.Add(1); s.MaxInFlight > 0 && n > int64(s.MaxInFlight) {
		s.inFlight.Add(-1)
		writeError(w, http.StatusTooManyRequests, CodeOverloaded, "the dispatcher is at its in-flight limit")
		return
	}
	defer s.inFlight.Add(-1)

	cfg, table, caller := s.authenticate(w, r, ns, tenant)
	if cfg == nil {
		return
	}
	body, ok := readBody(w, r, cfg.MaxBodyBytes)
	if !ok {
		return
	}
	a, err := runtime.ParseActivity(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, CodeInvalidActivity, err.Error())
		return
	}
	var status int
	var code, msg string
	revision, status, code, msg = s.route(r, cfg, table, caller, tag, a)
	if status != 0 {
		writeError(w, status, code, msg)
		return
	}
	rt := s.Revisions.Revision(ns, tenant, revision)
	if rt == nil {
		writeError(w, http.StatusServiceUnavailable, CodeNoReadyRevision, fmt.Sprintf("revision %s is not loaded on this replica", revision))
		// Only loaded revisions get series: a name a routing caller made up, or one
		// unloaded after its series were removed, must not leave series behind.
		revision = ""
		return
	}
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
		if pinned, ok := s.Pins.PinnedRevision(session, time.Now()); ok {
			if ns, name, _ := strings.Cut(pinned, "/"); ns == cfg.Namespace && s.Revisions.Revision(ns, cfg.Name, name) != nil {
				return name, 0, "", ""
			}
		}
	}
	if table == nil {
		return "", http.StatusNotFound, CodeNoSplit, "the tenant has no TrafficSplit in use"
	}
	return table.Pick(session).Revision, 0, "", ""
}

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

// Metrics are the dispatcher's Prometheus series.
type Metrics struct {
	gatherer prometheus.Gatherer
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	inflight *prometheus.GaugeVec
	// served holds each revision's series for answered activities, so the hot path
	// does not hash four label values per series per request.
	served sync.Map // revisionSeriesKey -> *revisionSeries
}

type revisionSeriesKey struct{ namespace, tenant, revision string }

type revisionSeries struct {
	ok       prometheus.Counter
	latency  prometheus.Observer
	inflight prometheus.Gauge
}

// NewMetrics registers the dispatcher's series with reg.
func NewMetrics(reg prometheus.Registerer, gatherer prometheus.Gatherer) *Metrics {
	m := &Metrics{
		gatherer: gatherer,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "packhost_dispatcher_requests_total", Help: "Activity requests by tenant, revision and HTTP status.",
		}, []string{"namespace", "tenant", "revision", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "packhost_dispatcher_request_duration_seconds", Help: "Activity request latency by tenant and revision.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"namespace", "tenant", "revision"}),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "packhost_dispatcher_in_flight", Help: "Activities being served by tenant and revision.",
		}, []string{"namespace", "tenant", "revision"}),
	}
	reg.MustRegister(m.requests, m.latency, m.inflight)
	return m
}

// series returns a revision's series, creating them on its first activity.
func (m *Metrics) series(ns, tenant, revision string) *revisionSeries {
	key := revisionSeriesKey{ns, tenant, revision}
	if s, ok := m.served.Load(key); ok {
		return s.(*revisionSeries)
	}
	s, _ := m.served.LoadOrStore(key, &revisionSeries{
		ok:       m.requests.WithLabelValues(ns, tenant, revision, "200"),
		latency:  m.latency.WithLabelValues(ns, tenant, revision),
		inflight: m.inflight.WithLabelValues(ns, tenant, revision),
	})
	return s.(*revisionSeries)
}

func (m *Metrics) request(ns, tenant, revision string, status int, start time.Time) {
	if m == nil {
		return
	}
	if status != http.StatusOK {
		m.requests.WithLabelValues(ns, tenant, revision, strconv.Itoa(status)).Inc()
		return
	}
	s := m.series(ns, tenant, revision)
	s.ok.Inc()
	s.latency.Observe(time.Since(start).Seconds())
}

func (m *Metrics) inFlight(ns, tenant, revision string) func() {
	if m == nil {
		return func() {}
	}
	g := m.series(ns, tenant, revision).inflight
	g.Inc()
	return g.Dec
}

// ForgetRevision removes a revision's series, when it is unloaded.
func (m *Metrics) ForgetRevision(namespace, revision string) {
	if m == nil {
		return
	}
	m.served.Range(func(k, _ any) bool {
		if key := k.(revisionSeriesKey); key.namespace == namespace && key.revision == revision {
			m.served.Delete(k)
		}
		return true
	})
	labels := prometheus.Labels{"namespace": namespace, "revision": revision}
	m.requests.DeletePartialMatch(labels)
	m.latency.DeletePartialMatch(labels)
	m.inflight.DeletePartialMatch(labels)
}
