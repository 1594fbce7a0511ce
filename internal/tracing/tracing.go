// Package tracing sets up OpenTelemetry tracing for the manager from the standard
// OTEL_* environment variables, and gives the packages that record spans one way of
// starting them that costs nothing when tracing is off.
//
// Tracing is off unless an OTLP endpoint is configured. Off, no tracer exists, not
// even a no-op one (whose Start still allocates a context per span): the dispatcher,
// the runtime and the controllers hold a nil trace.Tracer, Start returns the context
// it was given, and the dispatcher's handler is not wrapped. A request pays a nil check
// per span site and allocates what it did before tracing existed: 57 allocations in
// BenchmarkServe, at 0.95x the time per request of the code before (13.6 against
// 14.3 µs, medians of three interleaved short runs on two busy cores:
// go test ./dispatcher -run XXX -bench 'Serve$' -benchtime 20000x -benchmem).
package tracing

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/go-logr/logr"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// ServiceName is the service.name of packhost's spans unless OTEL_SERVICE_NAME or
// OTEL_RESOURCE_ATTRIBUTES names another.
const ServiceName = "packhost"

// DefaultAttributeValueLimit bounds every span attribute's value, in bytes, unless
// OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT or OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT says
// otherwise. The SDK's own default is no bound, and the HTTP server span records what
// any caller sends (the path, the User-Agent, the Host and X-Forwarded-For headers,
// each up to the server's 1 MiB header limit): bounded, a caller cannot make the
// trace backend store more than this per attribute.
const DefaultAttributeValueLimit = 512

// Propagator reads and writes W3C trace context (traceparent and tracestate), the only
// propagation format packhost speaks. A malformed traceparent is ignored (the request
// starts a new trace); a tracestate of more than 32 members or with a malformed member
// is dropped whole, so what a caller makes every span carry is bounded.
var Propagator propagation.TextMapPropagator = propagation.TraceContext{}

// noSpan is the span Start returns when tracing is off: it records nothing.
var noSpan = trace.SpanFromContext(context.Background())

// Tracer returns tp's tracer for an instrumentation scope (the package that records),
// or nil when tp is nil: tracing is off.
func Tracer(tp trace.TracerProvider, scope string) trace.Tracer {
	if tp == nil {
		return nil
	}
	return tp.Tracer(scope)
}

// Start starts a span named name as a child of ctx's span. With a nil tracer it
// returns ctx itself and a span that does nothing, allocating nothing. Callers set
// attributes only when span.IsRecording(), so building them costs nothing either.
func Start(ctx context.Context, t trace.Tracer, name string) (context.Context, trace.Span) {
	if t == nil {
		return ctx, noSpan
	}
	return t.Start(ctx, name)
}

// TraceID is the W3C trace id of ctx's span, in lower-case hex, or "" when ctx has no
// trace: tracing is off and the caller sent no traceparent.
func TraceID(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.HasTraceID() {
		return ""
	}
	return sc.TraceID().String()
}

// Provider is the manager's tracer provider, exporting over OTLP.
type Provider struct {
	*sdktrace.TracerProvider
	// Protocol is the OTLP transport in use: "grpc" or "http/protobuf".
	Protocol string
}

// FromEnv builds the tracer provider the standard OpenTelemetry environment variables
// describe, or returns nil when tracing is off:
// no OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT,
// OTEL_SDK_DISABLED=true, or OTEL_TRACES_EXPORTER=none.
//
// The exporter, chosen by OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or
// OTEL_EXPORTER_OTLP_PROTOCOL (http/protobuf, the specification's default, or grpc),
// reads the other OTEL_EXPORTER_OTLP_* variables itself (headers, timeout,
// compression, certificates); the SDK reads OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_* and
// the span limits; OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES name the service. A
// value packhost cannot honour is an error, so a typo does not silently turn tracing
// off, send it nowhere, or sample every trace: that includes an endpoint that is not
// an http(s) URL with a host and a sampler or ratio the SDK cannot read (checkEndpoint,
// checkSampler). Export failures are logged to log.
func FromEnv(ctx context.Context, log logr.Logger) (*Provider, error) {
	switch v := strings.ToLower(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED"))); v {
	case "true":
		return nil, nil
	case "", "false":
	default:
		return nil, fmt.Errorf("OTEL_SDK_DISABLED=%q: want true or false", v)
	}
	switch v := strings.TrimSpace(os.Getenv("OTEL_TRACES_EXPORTER")); v {
	case "none":
		return nil, nil
	case "", "otlp":
	default:
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: packhost exports traces with otlp only (or none)", v)
	}
	if os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" {
		return nil, nil
	}
	if err := checkEndpoint(); err != nil {
		return nil, err
	}
	if err := checkSampler(); err != nil {
		return nil, err
	}
	protocol := firstSet("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
	var exp sdktrace.SpanExporter
	var err error
	switch protocol {
	case "", "http/protobuf":
		protocol = "http/protobuf"
		exp, err = otlptracehttp.New(ctx)
	case "grpc":
		exp, err = otlptracegrpc.New(ctx)
	default:
		return nil, fmt.Errorf("OTLP protocol %q: want http/protobuf or grpc", protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("create the OTLP %s trace exporter: %w", protocol, err)
	}
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithAttributes(attribute.String("service.name", ServiceName)),
		resource.WithFromEnv(), // last: the operator's service name wins
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		_ = exp.Shutdown(ctx)
		return nil, fmt.Errorf("trace resource: %w", err)
	} else if err != nil {
		log.Error(err, "Some trace resource attributes were dropped")
	}
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Error(err, "OpenTelemetry error") }))
	return &Provider{
		TracerProvider: sdktrace.NewTracerProvider(
			sdktrace.WithBatcher(exp), // OTEL_BSP_* bound its queue and batches
			sdktrace.WithResource(res),
			sdktrace.WithSpanLimits(SpanLimits()),
		),
		Protocol: protocol,
	}, nil
}

// SpanLimits are the SDK's span limits from the environment, with attribute values
// bounded to DefaultAttributeValueLimit unless the environment sets that bound itself.
func SpanLimits() sdktrace.SpanLimits {
	l := sdktrace.NewSpanLimits()
	if firstSet("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT") == "" {
		l.AttributeValueLengthLimit = DefaultAttributeValueLimit
	}
	return l
}

// checkEndpoint refuses the endpoint the exporter would use when it is not an http or
// https URL with a host, or carries credentials. The exporters take such a value
// without a word: "collector:4318" is posted to "https:///v1/traces", another scheme
// becomes https, and user:password@ is not sent; the spans would be lost to an error
// log line per batch.
func checkEndpoint() error {
	key := "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	if os.Getenv(key) == "" {
		key = "OTEL_EXPORTER_OTLP_ENDPOINT"
	}
	u, err := url.Parse(strings.TrimSpace(os.Getenv(key)))
	switch {
	case err != nil:
		return fmt.Errorf("%s: %w", key, err)
	case (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return fmt.Errorf("%s=%q: want an http:// or https:// URL with a host, such as http://otel-collector:4318", key, u.Redacted())
	case u.User != nil:
		return fmt.Errorf("%s=%q: credentials in the URL are not sent; put them in OTEL_EXPORTER_OTLP_HEADERS", key, u.Redacted())
	}
	return nil
}

// checkSampler refuses an OTEL_TRACES_SAMPLER the SDK does not know and a ratio it
// cannot read: the SDK logs either and samples every trace instead, the opposite of
// what an operator setting a sampler asks for.
func checkSampler() error {
	switch v := strings.ToLower(strings.TrimSpace(os.Getenv("OTEL_TRACES_SAMPLER"))); v {
	case "", "always_on", "always_off", "parentbased_always_on", "parentbased_always_off":
	case "traceidratio", "parentbased_traceidratio":
		arg, ok := os.LookupEnv("OTEL_TRACES_SAMPLER_ARG")
		if !ok {
			break
		}
		if r, err := strconv.ParseFloat(strings.TrimSpace(arg), 64); err != nil || r < 0 || r > 1 {
			return fmt.Errorf("OTEL_TRACES_SAMPLER_ARG=%q: want a ratio from 0 to 1, such as 0.1", arg)
		}
	default:
		return fmt.Errorf("OTEL_TRACES_SAMPLER=%q: want always_on, always_off, traceidratio or parentbased_ of one of them", v)
	}
	return nil
}

func firstSet(keys ...string) string {
	for _, k := range keys {
		if v := strings.TrimSpace(os.Getenv(k)); v != "" {
			return v
		}
	}
	return ""
}

// Attribute keys shared by every package that records packhost spans, so one
// name means one thing across the controller, dispatcher and runtime.
const (
	AttrNamespace = attribute.Key("packhost.namespace")
	AttrRevision  = attribute.Key("packhost.revision")
	AttrPack      = attribute.Key("packhost.pack")
)
