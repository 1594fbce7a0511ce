package tracing

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// clearEnv unsets, for the test, every variable FromEnv reads.
func clearEnv(t *testing.T) {
	for _, k := range []string{
		"OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
		"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
		"OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_TRACES_SAMPLER",
		"OTEL_TRACES_SAMPLER_ARG",
	} {
		t.Setenv(k, "")
	}
}

// Tracing is off without an endpoint, or when the environment turns it off; a value
// packhost cannot honour is an error that names the variable.
func TestFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name     string
		env      map[string]string
		protocol string // "" off
		err      string
	}{
		{"no endpoint", nil, "", ""},
		{"endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, "http/protobuf", ""},
		{"traces endpoint", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:1/v1/traces"}, "http/protobuf", ""},
		{"grpc", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc", ""},
		{"the traces protocol wins", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
			"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, "http/protobuf", ""},
		{"sdk disabled", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_SDK_DISABLED": "TRUE"}, "", ""},
		{"sdk not disabled", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_SDK_DISABLED": "false"}, "http/protobuf", ""},
		{"exporter none", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_EXPORTER": "none"}, "", ""},
		{"sdk disabled typo", map[string]string{"OTEL_SDK_DISABLED": "yes"}, "", "OTEL_SDK_DISABLED"},
		{"another exporter", map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, "", "OTEL_TRACES_EXPORTER"},
		{"http/json", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "", "http/json"},
		// A careless operator's endpoint: the exporters take these without a word and
		// post to no host, or to another scheme, or without the credentials.
		{"endpoint without a scheme", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "otel-collector:4318"}, "", "OTEL_EXPORTER_OTLP_ENDPOINT"},
		{"grpc endpoint without a scheme", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "otel-collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "", "OTEL_EXPORTER_OTLP_ENDPOINT"},
		{"endpoint of another scheme", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://127.0.0.1:1"}, "", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"},
		{"the traces endpoint is the one checked", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://127.0.0.1:1/v1/traces"}, "http/protobuf", ""},
		{"endpoint with credentials", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://user:pw@127.0.0.1:1"}, "", "OTEL_EXPORTER_OTLP_HEADERS"},
		// A sampler the SDK cannot read falls back to sampling everything, with one log
		// line: the opposite of what the operator asked for.
		{"sampler", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": " 0.05"}, "http/protobuf", ""},
		{"sampler typo", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_SAMPLER": "parentbased_traceidration"}, "", "OTEL_TRACES_SAMPLER"},
		{"sampler the Go SDK lacks", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_SAMPLER": "jaeger_remote"}, "", "OTEL_TRACES_SAMPLER"},
		{"sampler ratio in percent", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "10%"}, "", "OTEL_TRACES_SAMPLER_ARG"},
		{"sampler ratio past one", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "10"}, "", "OTEL_TRACES_SAMPLER_ARG"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			tp, err := FromEnv(context.Background(), logr.Discard())
			switch {
			case tc.err != "":
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one naming %s", err, tc.err)
				}
				return
			case err != nil:
				t.Fatal(err)
			case tc.protocol == "" && tp != nil:
				t.Fatalf("tracing is on (%s)", tp.Protocol)
			case tc.protocol == "":
				return
			case tp == nil:
				t.Fatal("tracing is off")
			}
			defer shutdown(t, tp)
			if tp.Protocol != tc.protocol {
				t.Errorf("protocol %s, want %s", tp.Protocol, tc.protocol)
			}
		})
	}
}

func shutdown(t *testing.T, tp *Provider) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = tp.Shutdown(ctx) // an unreachable collector's error is expected
}

// Span attribute values are cut to DefaultAttributeValueLimit unless the environment
// sets its own bound; the service is named packhost unless the environment names it.
func TestFromEnvBoundsAndNames(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		limit   int
		service string
	}{
		{"defaults", nil, DefaultAttributeValueLimit, ServiceName},
		{"operator's bound and name", map[string]string{"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "10", "OTEL_SERVICE_NAME": "edge"}, 10, "edge"},
		{"resource attribute", map[string]string{"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs"}, DefaultAttributeValueLimit, "from-attrs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			tp, err := FromEnv(context.Background(), logr.Discard())
			if err != nil || tp == nil {
				t.Fatalf("provider %v, %v", tp, err)
			}
			defer shutdown(t, tp)
			rec := tracetest.NewSpanRecorder()
			tp.RegisterSpanProcessor(rec)
			_, span := tp.Tracer("test").Start(context.Background(), "s")
			span.SetAttributes(attribute.String("big", strings.Repeat("x", 1<<20)))
			span.End()
			ended := rec.Ended()
			if len(ended) != 1 {
				t.Fatalf("%d spans", len(ended))
			}
			if got := len(ended[0].Attributes()[0].Value.AsString()); got != tc.limit {
				t.Errorf("a 1 MiB attribute is kept as %d bytes, want %d", got, tc.limit)
			}
			if v, _ := ended[0].Resource().Set().Value("service.name"); v.AsString() != tc.service {
				t.Errorf("service.name %q, want %q", v.AsString(), tc.service)
			}
		})
	}
}

// Spans reach an OTLP/HTTP collector, and shutting down flushes what is queued.
func TestExportsOverOTLPHTTP(t *testing.T) {
	var mu sync.Mutex
	var bodies [][]byte
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/v1/traces" && r.Header.Get("Content-Type") == "application/x-protobuf" {
			mu.Lock()
			bodies = append(bodies, b)
			mu.Unlock()
		}
	}))
	defer collector.Close()
	clearEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.URL)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "3600000") // only the shutdown sends
	tp, err := FromEnv(context.Background(), logr.Discard())
	if err != nil || tp == nil {
		t.Fatalf("provider %v, %v", tp, err)
	}
	tracer := Tracer(tp, "test")
	_, span := Start(context.Background(), tracer, "exported-span")
	id := span.SpanContext().TraceID()
	span.End()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tp.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bodies) != 1 || !bytes.Contains(bodies[0], []byte("exported-span")) || !bytes.Contains(bodies[0], id[:]) {
		t.Errorf("the collector got %d exports, want one with the span", len(bodies))
	}
}

// Off, Start hands back the context it was given and a span that records nothing,
// without allocating.
func TestStartOffAllocatesNothing(t *testing.T) {
	ctx := context.Background()
	got, span := Start(ctx, Tracer(nil, "test"), "s")
	if got != ctx || span.IsRecording() || span.SpanContext().IsValid() {
		t.Fatalf("off: a new context or a live span")
	}
	if n := testing.AllocsPerRun(100, func() {
		_, span := Start(ctx, nil, "s")
		span.End()
		_ = TraceID(ctx)
	}); n != 0 {
		t.Errorf("off, a span costs %v allocations", n)
	}
}
