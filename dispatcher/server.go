package dispatcher

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
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
