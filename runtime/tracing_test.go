package runtime_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/packhost/packhost/runtime"
)

// conflictOnce is a store whose first commit conflicts, as a concurrent writer would
// make it: the activity then runs again.
type conflictOnce struct {
	runtime.Store
	done atomic.Bool
}

func (s *conflictOnce) Begin(ctx context.Context) (runtime.Txn, error) {
	txn, err := s.Store.Begin(ctx)
	return &conflictTxn{Txn: txn, s: s}, err
}

type conflictTxn struct {
	runtime.Txn
	s *conflictOnce
}

func (t *conflictTxn) Commit(ctx context.Context) error {
	if !t.s.done.Swap(true) {
		return fmt.Errorf("%w: another writer came first", runtime.ErrConflict)
	}
	return t.Txn.Commit(ctx)
}

// callerContext is a context holding a caller's remote span, as the dispatcher's
// request context does.
func callerContext(t *testing.T) (context.Context, trace.SpanContext) {
	t.Helper()
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled, Remote: true})
	return trace.ContextWithRemoteSpanContext(context.Background(), sc), sc
}

// Each run of an activity records a guest call span and a state commit span, children
// of the caller's span; a commit that conflicted says so and the rerun is attempt 1;
// a failed guest call records no commit; the guest's log lines carry the trace id.
func TestGuestCallAndCommitSpans(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	e, err := runtime.NewEngine(context.Background(), runtime.EngineConfig{Logger: logr.Discard(), CacheDir: cacheDir, Tracing: tp})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close(context.Background()) })
	var mu sync.Mutex
	var lines []string
	logger := funcr.New(func(_, args string) { mu.Lock(); lines = append(lines, args); mu.Unlock() }, funcr.Options{Verbosity: 1})
	rev := load(t, e, []revOpt{func(c *runtime.RevisionConfig) {
		c.Store = &conflictOnce{Store: runtime.NewMemStore()}
		c.Logger = logger
	}}, "counter")
	ctx, caller := callerContext(t)

	if _, err := rev.Handle(ctx, msg(`{}`)); err != nil {
		t.Fatal(err)
	}
	type want struct {
		name, attempt, status string
	}
	check := func(wants []want) {
		t.Helper()
		spans := exp.GetSpans()
		if len(spans) != len(wants) {
			t.Fatalf("%d spans, want %d: %+v", len(spans), len(wants), spans)
		}
		for i, w := range wants {
			s := spans[i]
			attempt := ""
			for _, a := range s.Attributes {
				if a.Key == "packhost.attempt" {
					attempt = a.Value.Emit()
				}
			}
			if s.Name != w.name || attempt != w.attempt || s.Status.Description != w.status ||
				(w.status != "") != (s.Status.Code == codes.Error) {
				t.Errorf("span %d: %s attempt %s status %v %q, want %s attempt %s status %q", i, s.Name, attempt, s.Status.Code, s.Status.Description, w.name, w.attempt, w.status)
			}
			if s.Parent.SpanID() != caller.SpanID() || s.SpanContext.TraceID() != caller.TraceID() {
				t.Errorf("span %s is not a child of the caller's span", s.Name)
			}
		}
		exp.Reset()
	}
	check([]want{
		{"packhost.guest_call", "0", ""},
		{"packhost.state_commit", "0", runtime.ErrConflict.Error()},
		{"packhost.guest_call", "1", ""},
		{"packhost.state_commit", "1", ""},
	})

	fail := msg(`{}`)
	fail.Kind, fail.Action = runtime.KindCustom, "fail-after-write"
	if _, err := rev.Handle(ctx, fail); err == nil {
		t.Fatal("fail-after-write succeeded")
	}
	check([]want{{"packhost.guest_call", "0", runtime.ErrInvalidOutput.Error()}})

	mu.Lock()
	defer mu.Unlock()
	if len(lines) != 1 || !strings.Contains(lines[0], `"trace_id"="4bf92f3577b34da6a3ce929d0e0e4736"`) || !strings.Contains(lines[0], "failing on purpose") {
		t.Errorf("guest log lines %q: want the handler's error with the trace id", lines)
	}
	lines = nil
	mu.Unlock()

	// Without a caller's trace, the guest call starts one of its own.
	_, _ = rev.Handle(context.Background(), fail)
	mu.Lock()
	if spans := exp.GetSpans(); len(spans) != 1 || spans[0].Parent.IsValid() ||
		len(lines) != 1 || !strings.Contains(lines[0], `"trace_id"="`+spans[0].SpanContext.TraceID().String()+`"`) {
		t.Errorf("guest log lines %q: want one with the trace id of the root span of %+v", lines, spans)
	}
}

// With tracing off, guest log lines carry no trace id unless the caller's context
// holds a trace.
func TestGuestLogWithoutTracing(t *testing.T) {
	var lines []string
	logger := funcr.New(func(_, args string) { lines = append(lines, args) }, funcr.Options{})
	rev := load(t, newEngine(t), []revOpt{func(c *runtime.RevisionConfig) { c.Logger = logger }}, "counter")
	fail := msg(`{}`)
	fail.Kind, fail.Action = runtime.KindCustom, "fail-after-write"
	ctx, _ := callerContext(t)
	_, _ = rev.Handle(ctx, fail)
	_, _ = rev.Handle(context.Background(), fail)
	if len(lines) != 2 || !strings.Contains(lines[0], `"trace_id"="4bf92f3577b34da6a3ce929d0e0e4736"`) || strings.Contains(lines[1], "trace_id") {
		t.Errorf("guest log lines %q: want the caller's trace id in the first only", lines)
	}
}

// The activity's trace id is the guest's input field 15, as it is.
func TestGuestReadsTraceID(t *testing.T) {
	rev := load(t, newEngine(t), nil, "webhook")
	a := msg(`{}`)
	a.TraceID = `caller "trace" \ 1`
	out, err := rev.Handle(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"received":true,"trace_id":"caller \"trace\" \\ 1"}`; len(out) != 1 || string(out[0].Payload) != want {
		t.Fatalf("webhook answered %+v, want %s", out, want)
	}
}

// A caller's trace_id is bounded like the routing hints: it reaches the guest, never
// a span, but an activity still may not make the host copy an unbounded string.
func TestTraceIDIsBounded(t *testing.T) {
	for n, ok := range map[int]bool{256: true, 257: false} {
		body := `{"kind":"message","trace_id":"` + strings.Repeat("t", n) + `"}`
		a, err := runtime.ParseActivity([]byte(body))
		if ok != (err == nil) || (ok && len(a.TraceID) != n) {
			t.Errorf("a %d-byte trace_id: %v", n, err)
		}
	}
}
