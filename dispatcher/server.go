package dispatcher

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"go.opentelemetry.io/otel/trace"

	"github.com/packhost/packhost/internal/tracing"
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

// BodyLimits, when the Revisions also implement it, gives a loaded revision's own body
// limit (its spec.limits.maxRequestBodyBytes, at most the tenant's); ok is false when
// it has none of its own.
type BodyLimits interface {
	MaxBodyBytes(namespace, tenant, name string) (limit int64, ok bool)
}

// Pins says which revisions hold live waits for a session key, and for which flows.
type Pins interface {
	SessionPins(session string, now time.Time) []runtime.Pin
}

// Server is the dispatcher's HTTP server.
type Server struct {
	Addr      string
	Router    *Router
	Revisions Revisions
	Pins      Pins
	// MaxInFlight bounds the activities this replica runs at once, over all tenants;
	// past it requests get 429 with Retry-After. It is the last line: each tenant is
	// held to its own share first (see admission.go).
	MaxInFlight int
	// Ready answers /readyz (see Readiness).
	Ready   func(*http.Request) error
	Metrics *Metrics
	Log     logr.Logger
	// Tracing records a span per request, activity routing, guest call and state
	// commit (see tracing.go); nil turns tracing off.
	Tracing trace.TracerProvider
	// ShutdownTimeout bounds how long in-flight activities may finish on shutdown.
	ShutdownTimeout time.Duration
	// ReadTimeout bounds reading a whole request, headers and body (default 30 s): a
	// client sending its body slowly holds one of its tenant's slots at most this long.
	ReadTimeout time.Duration
	// IdleTimeout closes a keep-alive connection idle this long (default 2 min).
	IdleTimeout time.Duration

	// RefusalDelay is how long a caller the dispatcher refuses (401) waits for its answer
	// (default 250 ms; negative: none). See delayRefusal.
	RefusalDelay time.Duration

	inFlight atomic.Int64
	listener net.Listener
	tracer   trace.Tracer  // from Tracing, set by Handler; nil: off
	refusals chan struct{} // places of delayed refusals (maxDelayedRefusals)
}

// Handler returns the dispatcher's routes: activities, the provider endpoints and
// plain /healthz and /readyz. Metrics are not served here but on the manager's metrics
// port, behind authentication. Every other answer is the JSON error body, 404 and 405
// included, and nothing here names a tenant or revision to a caller not authenticated.
func (s *Server) Handler() http.Handler {
	s.tracer = tracing.Tracer(s.Tracing, tracerScope)
	s.refusals = make(chan struct{}, maxDelayedRefusals)
	mux := http.NewServeMux()
	routes := []struct {
		path     string
		handlers map[string]http.HandlerFunc
	}{
		{"/v1/namespaces/{ns}/tenants/{tenant}/activities", map[string]http.HandlerFunc{"POST": s.activities}},
		{"/v1/namespaces/{ns}/tenants/{tenant}/tags/{tag}/activities", map[string]http.HandlerFunc{"POST": s.activities}},
		{"/v1/namespaces/{ns}/tenants/{tenant}/revisions/{revision}/identify", map[string]http.HandlerFunc{"POST": s.identify, "GET": s.describe}},
		{"/v1/namespaces/{ns}/tenants/{tenant}/revisions/{revision}/invoke", map[string]http.HandlerFunc{"POST": s.invoke}},
		{"/healthz", map[string]http.HandlerFunc{"GET": func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }}},
		{"/readyz", map[string]http.HandlerFunc{"GET": s.readyz}},
	}
	for _, rt := range routes {
		var allow []string
		for method, h := range rt.handlers {
			mux.HandleFunc(method+" "+rt.path, h)
			allow = append(allow, method)
			if method == http.MethodGet {
				allow = append(allow, http.MethodHead) // the mux serves HEAD with GET's handler
			}
		}
		slices.Sort(allow)
		// Without a method the pattern is less specific: it takes every other method.
		mux.HandleFunc(rt.path, methodNotAllowed(strings.Join(allow, ", ")))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, http.StatusNotFound, CodeNotFound, "no such path: see the README's HTTP API")
	})
	return s.traced(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ns, tenant, ok := activityPath(r); ok {
			r.Pattern = activityPattern
			s.serveActivity(w, r, ns, tenant, "")
			return
		}
		mux.ServeHTTP(w, r)
	}))
}

func methodNotAllowed(allow string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		writeError(w, http.StatusMethodNotAllowed, CodeMethodNotAllowed, fmt.Sprintf("%s is not served here; use %s", r.Method, allow))
	}
}

// readyzTimeout bounds one public readiness check.
const readyzTimeout = time.Second

// readyz answers "ok" when the replica is ready, and otherwise a 503 that says only
// that: why is for the manager's logs and probe port, not for callers.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	// The port is public and its callers are not authenticated: a check may wait for
	// the caches while the replica starts, so it gets a second, not the caller's time.
	ctx, cancel := context.WithTimeout(r.Context(), readyzTimeout)
	defer cancel()
	if s.Ready != nil && s.Ready(r.WithContext(ctx)) != nil {
		writeError(w, http.StatusServiceUnavailable, CodeNotReady, "the replica is not ready")
		return
	}
	io.WriteString(w, "ok")
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
