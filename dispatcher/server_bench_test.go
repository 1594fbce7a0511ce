package dispatcher

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/packhost/packhost/internal/packs"
	"github.com/packhost/packhost/internal/tracing"
	"github.com/packhost/packhost/runtime"
)

type oneRevision struct{ rev *runtime.Revision }

func (o oneRevision) Revision(_, _, name string) *runtime.Revision {
	if name == "v1" {
		return o.rev
	}
	return nil
}

// newEngine starts a wasm engine that is closed when the test ends; tp, when not nil,
// records its spans.
func newEngine(tb testing.TB, tp ...trace.TracerProvider) *runtime.Engine {
	tb.Helper()
	cfg := runtime.EngineConfig{Logger: logr.Discard()}
	if len(tp) > 0 {
		cfg.Tracing = tp[0]
	}
	e, err := runtime.NewEngine(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = e.Close(context.Background()) })
	return e
}

// newTestServer serves tenant default/acme (token "tok") with one revision v1 of pack.
func newTestServer(tb testing.TB, pack string) (*Server, *runtime.Revision) {
	return newTracedServer(tb, pack, nil)
}

// newTracedServer is newTestServer recording spans with tp; nil turns tracing off.
func newTracedServer(tb testing.TB, pack string, tp trace.TracerProvider) (*Server, *runtime.Revision) {
	tb.Helper()
	rev, err := packs.Revision(context.Background(), newEngine(tb, tp), runtime.RevisionConfig{Name: "default/v1", Env: "prod", Tenant: "default/acme",
		Policy: runtime.Policy{StateRead: true, StateWrite: true}, Logger: logr.Discard()}, pack)
	if err != nil {
		tb.Fatal(err)
	}
	router := NewRouter()
	router.PublishTenant("default", "acme", &TenantConfig{Namespace: "default", Name: "acme", Env: "prod",
		Tokens: map[string]string{"tok": "ci", "ops": "ops"}, RoutingCallers: []string{"ops"}, MaxBodyBytes: 4096})
	router.PublishTable("default", "acme", NewTable("s", []Route{{Revision: "v1", Percent: 100, Tag: "stable"}}, true))
	reg := prometheus.NewRegistry()
	// Refusals are not delayed here; TestRefusalsAreDelayedAndBounded delays them.
	return &Server{Router: router, Revisions: oneRevision{rev}, MaxInFlight: 1024, Metrics: NewMetrics(reg), Log: logr.Discard(), Tracing: tp, RefusalDelay: -1}, rev
}

// BenchmarkServe is one activity request through the dispatcher's handler, without a
// network: auth, body, parse, routing, Handle, encoding, metrics. Tracing is off.
func BenchmarkServe(b *testing.B) {
	s, _ := newTestServer(b, "echo")
	benchmarkServe(b, s.Handler())
}

// BenchmarkServeTraced is BenchmarkServe with tracing on, every span sampled and
// handed to an exporter that drops it: what recording spans costs.
func BenchmarkServeTraced(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(dropSpans{}), sdktrace.WithSpanLimits(tracing.SpanLimits()))
	s, _ := newTracedServer(b, "echo", tp)
	benchmarkServe(b, s.Handler())
}

type dropSpans struct{}

func (dropSpans) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (dropSpans) Shutdown(context.Context) error                             { return nil }

func benchmarkServe(b *testing.B, h http.Handler) {
	body := `{"kind":"message","user_id":"u1","payload":{"text":"` + strings.Repeat("x", 900) + `"}}`
	b.ResetTimer()
	for range b.N {
		req := httptest.NewRequest(http.MethodPost, "/v1/namespaces/default/tenants/acme/activities", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer tok")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
}

// BenchmarkServeTCP compares, over loopback TCP in one process, the dispatcher with a
// bare net/http handler answering the same bytes (the HTTP floor).
func BenchmarkServeTCP(b *testing.B) {
	s, _ := newTestServer(b, "echo")
	body := `{"kind":"message","user_id":"u1","payload":{"text":"` + strings.Repeat("x", 900) + `"}}`
	disp := httptest.NewServer(s.Handler())
	defer disp.Close()
	var sample []byte
	for _, bc := range []struct {
		name string
		url  func() string
	}{
		{"dispatcher", func() string { return disp.URL + "/v1/namespaces/default/tenants/acme/activities" }},
		{"floor", func() string {
			floor := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Length", strconv.Itoa(len(sample)))
				_, _ = w.Write(sample)
			}))
			b.Cleanup(floor.Close)
			return floor.URL
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			url := bc.url()
			client := &http.Client{}
			for i := 0; i < b.N; i++ {
				req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer tok")
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				out, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if sample == nil {
					sample = out
				}
			}
		})
	}
}
