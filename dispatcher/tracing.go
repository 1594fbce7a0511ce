package dispatcher

import (
	"context"
	"net/http"

	"github.com/go-logr/logr"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/packhost/packhost/internal/tracing"
)

// Tracing. With Server.Tracing set, every request gets a server span (otelhttp), a
// child of the caller's W3C traceparent when it sent a valid one; an activity's
// routing gets a span of its own, and the runtime adds the guest call and state
// commit spans under the server span. Off, the handler is not wrapped at all: a
// request without a traceparent costs a header lookup, and one with a traceparent
// still hands its trace id to the guest and the request's logger, so a caller's trace
// can be followed in the logs of a replica that exports nothing.
const (
	tracerScope = "github.com/packhost/packhost/dispatcher"
	spanRoute   = "packhost.route"
	// activityPattern names the route the fast path serves (activityPath), as the mux
	// names its own routes in r.Pattern, for the server span's name.
	activityPattern = "POST /v1/namespaces/{ns}/tenants/{tenant}/activities"
)

// Span attributes: names from the path, the tenant's split and Revisions, each
// bounded by the API's own name rules or the tracer's attribute value limit.
var (
	attrNamespace = tracing.AttrNamespace
	attrTenant    = attribute.Key("packhost.tenant")
	attrRevision  = tracing.AttrRevision
	attrTag       = attribute.Key("packhost.tag")
)

// traced wraps the dispatcher's handler h for tracing (see above).
func (s *Server) traced(h http.Handler) http.Handler {
	if s.tracer == nil {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, ok := r.Header["Traceparent"]; ok {
				r = r.WithContext(s.withTraceLog(tracing.Propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))))
			}
			h.ServeHTTP(w, r)
		})
	}
	return otelhttp.NewHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rl := r.WithContext(s.withTraceLog(r.Context()))
		h.ServeHTTP(w, rl)
		r.Pattern = rl.Pattern // the route, which otelhttp names the span by
	}), "dispatcher",
		otelhttp.WithTracerProvider(s.Tracing),
		otelhttp.WithPropagators(tracing.Propagator),
		// Health checks are not requests anyone follows: a load balancer polling
		// /readyz would fill the backend with them.
		otelhttp.WithFilter(func(r *http.Request) bool { return r.URL.Path != "/healthz" && r.URL.Path != "/readyz" }),
		// The dispatcher's own Prometheus series count requests; no second set.
		otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()),
	)
}

// withTraceLog puts the dispatcher's logger, with the request's trace id as trace_id,
// into ctx when the request has a trace.
func (s *Server) withTraceLog(ctx context.Context) context.Context {
	id := tracing.TraceID(ctx)
	if id == "" {
		return ctx
	}
	return logr.NewContext(ctx, s.Log.WithValues("trace_id", id))
}

// endRoute ends an activity's routing span: the loaded revision it was routed to (and
// the split's tag that chose it), or the code of the error that refused it.
func endRoute(span trace.Span, ns, tenant, tag, revision, code string) {
	if span.IsRecording() {
		span.SetAttributes(attrNamespace.String(ns), attrTenant.String(tenant))
		switch {
		case code != "":
			// Neither the tag nor the revision: a refused choice may be any string.
			span.SetStatus(codes.Error, code)
		case tag != "":
			span.SetAttributes(attrRevision.String(revision), attrTag.String(tag))
		default:
			span.SetAttributes(attrRevision.String(revision))
		}
	}
	span.End()
}
