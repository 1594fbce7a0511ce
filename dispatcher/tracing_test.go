package dispatcher

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/packhost/packhost/internal/tracing"
)

// A caller's trace: what the spans must continue.
const (
	callerTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
	callerSpan   = "00f067aa0ba902b7"
	callerParent = "00-" + callerTrace + "-" + callerSpan + "-01"
)

// tracedServer serves pack with tracing on, its spans collected in memory.
func tracedServer(t *testing.T, pack string) (http.Handler, *tracetest.InMemoryExporter) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp), sdktrace.WithSpanLimits(tracing.SpanLimits()))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	s, _ := newTracedServer(t, pack, tp)
	return s.Handler(), exp
}

// postTraced sends body to path as tenant acme's caller with the given extra headers and
// returns the response, which must be 200.
func postTraced(t *testing.T, h http.Handler, path, body string, headers map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer tok")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != http.StatusOK {
		t.Fatalf("%s: %d %s", path, w.Code, w.Body)
	}
	return w
}

const activitiesPath = "/v1/namespaces/default/tenants/acme/activities"

// byName indexes spans by name; a name recorded more than once fails the test unless
// it is in many.
func byName(t *testing.T, spans tracetest.SpanStubs, many ...string) map[string]tracetest.SpanStub {
	t.Helper()
	out := map[string]tracetest.SpanStub{}
	for _, s := range spans {
		if _, dup := out[s.Name]; dup && !slices.Contains(many, s.Name) {
			t.Errorf("span %q recorded twice", s.Name)
		}
		out[s.Name] = s
	}
	return out
}

func attr(s tracetest.SpanStub, key string) string {
	for _, a := range s.Attributes {
		if string(a.Key) == key {
			return a.Value.Emit()
		}
	}
	return ""
}

// An activity with a traceparent: the server span is the caller's span's child; the
// routing, guest call and state commit spans are the server span's, in that order,
// all in the caller's trace; the guest gets the trace id.
func TestActivitySpanTree(t *testing.T) {
	h, exp := tracedServer(t, "counter")
	postTraced(t, h, activitiesPath, `{"kind":"message","user_id":"ann","payload":{"secret":"body-marker"}}`,
		map[string]string{"traceparent": callerParent})
	spans := exp.GetSpans()
	got := byName(t, spans)
	server, ok := got[activityPattern] // otelhttp names it by method and route
	route, guest, commit := got[spanRoute], got["packhost.guest_call"], got["packhost.state_commit"]
	if !ok || route.Name == "" || guest.Name == "" || commit.Name == "" {
		t.Fatalf("want a server, route, guest call and state commit span; got %v", names(spans))
	}
	if server.SpanKind != trace.SpanKindServer || !server.Parent.IsRemote() ||
		server.Parent.TraceID().String() != callerTrace || server.Parent.SpanID().String() != callerSpan {
		t.Errorf("server span %q (%v) is not the child of the caller's span: parent %v", server.Name, server.SpanKind, server.Parent)
	}
	for _, s := range spans {
		if s.SpanContext.TraceID().String() != callerTrace {
			t.Errorf("span %s is in trace %s, not the caller's", s.Name, s.SpanContext.TraceID())
		}
		if s.Name != server.Name && s.Parent.SpanID() != server.SpanContext.SpanID() {
			t.Errorf("span %s is not a child of the server span", s.Name)
		}
		for _, a := range s.Attributes {
			if strings.Contains(a.Value.Emit(), "body-marker") {
				t.Errorf("span %s attribute %s carries the request body", s.Name, a.Key)
			}
		}
	}
	if route.EndTime.After(guest.StartTime) || guest.EndTime.After(commit.StartTime) {
		t.Errorf("spans out of order: route %v–%v, guest call %v–%v, commit %v–%v",
			route.StartTime, route.EndTime, guest.StartTime, guest.EndTime, commit.StartTime, commit.EndTime)
	}
	for span, want := range map[*tracetest.SpanStub]map[string]string{
		&route: {"packhost.namespace": "default", "packhost.tenant": "acme", "packhost.revision": "v1"},
		&guest: {"packhost.namespace": "default", "packhost.revision": "v1", "packhost.pack": "counter", "packhost.flow": "count",
			"packhost.export": "packhost_handle", "packhost.attempt": "0"},
		&commit: {"packhost.namespace": "default", "packhost.revision": "v1", "packhost.attempt": "0"},
	} {
		for k, v := range want {
			if got := attr(*span, k); got != v {
				t.Errorf("%s: %s = %q, want %q", span.Name, k, got, v)
			}
		}
	}
}

func names(spans tracetest.SpanStubs) []string {
	var out []string
	for _, s := range spans {
		out = append(out, fmt.Sprintf("%s (parent %s)", s.Name, s.Parent.SpanID()))
	}
	return out
}

// replyTraceID is the trace_id the webhook pack answered an activity with ("" for
// none).
func replyTraceID(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	var resp struct {
		Activities []struct {
			Payload struct {
				Received bool   `json:"received"`
				TraceID  string `json:"trace_id"`
			} `json:"payload"`
		} `json:"activities"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil || len(resp.Activities) != 1 || !resp.Activities[0].Payload.Received {
		t.Fatalf("answer %s: %v", w.Body, err)
	}
	return resp.Activities[0].Payload.TraceID
}

// The guest's trace id: the caller's own trace_id as sent, else its traceparent's,
// else the trace packhost started (tracing on) or none (off); a traceparent alone
// carries it through a replica that does not trace.
func TestGuestGetsTheTraceID(t *testing.T) {
	on, exp := tracedServer(t, "webhook")
	off, _ := newTestServer(t, "webhook")
	for _, tc := range []struct {
		name        string
		h           http.Handler
		traceparent string
		body        string
		want        string // "new": the id of the trace packhost started
	}{
		{"traceparent", on, callerParent, `{"kind":"message"}`, callerTrace},
		{"caller's trace_id wins", on, callerParent, `{"kind":"message","trace_id":"mine-1"}`, "mine-1"},
		{"no traceparent: a new trace", on, "", `{"kind":"message"}`, "new"},
		{"off, traceparent", off.Handler(), callerParent, `{"kind":"message"}`, callerTrace},
		{"off, trace_id", off.Handler(), "", `{"kind":"message","trace_id":"mine-2"}`, "mine-2"},
		{"off, neither", off.Handler(), "", `{"kind":"message"}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exp.Reset()
			headers := map[string]string{}
			if tc.traceparent != "" {
				headers["traceparent"] = tc.traceparent
			}
			got := replyTraceID(t, postTraced(t, tc.h, activitiesPath, tc.body, headers))
			want := tc.want
			if want == "new" {
				spans := exp.GetSpans()
				if len(spans) == 0 || spans[len(spans)-1].Parent.IsValid() { // the server span ends last
					t.Fatalf("no new root trace: %v", names(spans))
				}
				want = spans[len(spans)-1].SpanContext.TraceID().String()
			}
			if got != want {
				t.Errorf("the guest got trace id %q, want %q", got, want)
			}
		})
	}
}

// Health checks record no span.
func TestHealthChecksAreNotTraced(t *testing.T) {
	h, exp := tracedServer(t, "echo")
	for _, path := range []string{"/healthz", "/readyz"} {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.Header.Set("traceparent", callerParent)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			t.Fatalf("%s: %d", path, w.Code)
		}
	}
	if spans := exp.GetSpans(); len(spans) != 0 {
		t.Errorf("health checks recorded %v", names(spans))
	}
}

// A provider invoke continues the caller's trace too, and its guest gets the trace id
// unless the caller sent its own.
func TestInvokeSpansAndTraceID(t *testing.T) {
	h, exp := tracedServer(t, "webhook")
	invoke := "/v1/namespaces/default/tenants/acme/revisions/v1/invoke"
	for body, want := range map[string]string{
		`{"provider_type":"webhook","op":"send","payload":{}}`:                   callerTrace,
		`{"provider_type":"webhook","op":"send","trace_id":"mine","payload":{}}`: "mine",
	} {
		exp.Reset()
		w := postTraced(t, h, invoke, body, map[string]string{"traceparent": callerParent})
		var resp struct {
			Result struct {
				TraceID string `json:"trace_id"`
			} `json:"result"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil || resp.Result.TraceID != want {
			t.Errorf("invoke %s answered %s, want trace id %q", body, w.Body, want)
		}
		got := byName(t, exp.GetSpans())
		server, guest := got["POST /v1/namespaces/{ns}/tenants/{tenant}/revisions/{revision}/invoke"], got["packhost.guest_call"]
		if !server.Parent.IsRemote() || server.Parent.SpanID().String() != callerSpan ||
			guest.Parent.SpanID() != server.SpanContext.SpanID() || attr(guest, "packhost.export") != "packhost_invoke" {
			t.Errorf("invoke spans: %v", names(exp.GetSpans()))
		}
	}
}

// Hostile trace context: a malformed traceparent starts a new trace; a tracestate
// past the W3C bounds is dropped whole (the parent still holds); what a caller writes
// into headers reaches span attributes cut to the attribute value limit.
func TestHostileTraceContext(t *testing.T) {
	h, exp := tracedServer(t, "echo")
	member := func(i int) string { return fmt.Sprintf("k%d=%s", i, strings.Repeat("v", 256)) }
	members := func(n int) string {
		var m []string
		for i := range n {
			m = append(m, member(i))
		}
		return strings.Join(m, ",")
	}
	for _, tc := range []struct {
		name            string
		traceparent     string
		tracestate      string
		wantParent      bool
		wantStateLength int
	}{
		{"not hex", "00-" + strings.Repeat("z", 32) + "-" + callerSpan + "-01", "", false, 0},
		{"zero trace id", "00-" + strings.Repeat("0", 32) + "-" + callerSpan + "-01", "", false, 0},
		{"version ff", "ff-" + callerTrace + "-" + callerSpan + "-01", "", false, 0},
		{"version 00 with more", callerParent + "-extra", "", false, 0},
		{"a megabyte", strings.Repeat("0", 1<<20), "", false, 0},
		{"32 members of 256 bytes are kept", callerParent, members(32), true, len(members(32))},
		{"33 members are dropped", callerParent, members(33), true, 0},
		{"a megabyte of tracestate is dropped", callerParent, strings.Repeat("a", 1<<20), true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exp.Reset()
			postTraced(t, h, activitiesPath, `{"kind":"message"}`, map[string]string{
				"traceparent": tc.traceparent, "tracestate": tc.tracestate,
				"User-Agent": strings.Repeat("u", 64<<10),
			})
			spans := exp.GetSpans()
			if len(spans) < 3 {
				t.Fatalf("spans: %v", names(spans))
			}
			server := spans[len(spans)-1] // ends last
			if got := server.Parent.IsValid(); got != tc.wantParent {
				t.Errorf("server span has a parent: %v, want %v", got, tc.wantParent)
			}
			if !tc.wantParent && server.SpanContext.TraceID().String() == callerTrace {
				t.Error("a malformed traceparent's trace was continued")
			}
			for _, s := range spans {
				if n := len(s.SpanContext.TraceState().String()); n != tc.wantStateLength {
					t.Errorf("span %s carries %d bytes of tracestate, want %d", s.Name, n, tc.wantStateLength)
				}
				for _, a := range s.Attributes {
					if n := len(a.Value.Emit()); n > tracing.DefaultAttributeValueLimit {
						t.Errorf("span %s attribute %s holds %d bytes", s.Name, a.Key, n)
					}
				}
			}
		})
	}
}

// The request's logger carries the trace id as trace_id, traced or not, when there
// is a trace; without one, the context holds no logger of the dispatcher's.
func TestRequestLoggerHasTraceID(t *testing.T) {
	var lines []string
	log := funcr.New(func(prefix, args string) { lines = append(lines, args) }, funcr.Options{})
	exp := tracetest.NewInMemoryExporter()
	on := &Server{Log: log, Tracing: sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))}
	off := &Server{Log: log}
	for _, tc := range []struct {
		name        string
		s           *Server
		traceparent string
		want        string
	}{
		{"on", on, callerParent, `"trace_id"="` + callerTrace + `"`},
		{"off", off, callerParent, `"trace_id"="` + callerTrace + `"`},
		{"off, malformed", off, "00-nope", ""},
		{"off, none", off, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lines = nil
			tc.s.tracer = tracing.Tracer(tc.s.Tracing, tracerScope)
			h := tc.s.traced(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				logr.FromContextOrDiscard(r.Context()).Info("Handled")
			}))
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			if tc.traceparent != "" {
				req.Header.Set("traceparent", tc.traceparent)
			}
			h.ServeHTTP(httptest.NewRecorder(), req)
			switch {
			case tc.want == "" && len(lines) != 0:
				t.Errorf("logged %q without a trace", lines)
			case tc.want != "" && (len(lines) != 1 || !strings.Contains(lines[0], tc.want)):
				t.Errorf("logged %q, want a line with %s", lines, tc.want)
			}
		})
	}
}
