package runtime

import (
	"context"
	"errors"
	"strings"

	"github.com/tetratelabs/wazero/api"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/packhost/packhost/internal/tracing"
)

// The runtime's spans, children of the caller's span (the dispatcher's request):
// one per guest call (each run of an activity, each identify and invoke export call)
// and one per state commit. Off (EngineConfig.Tracing nil) they cost a nil check.
const (
	tracerScope     = "github.com/packhost/packhost/runtime"
	spanGuestCall   = "packhost.guest_call"
	spanStateCommit = "packhost.state_commit"
)

// Span attributes. Every value is bounded: names from the revision's spec and the
// pack's manifest, never what a caller or guest sent.
var (
	attrNamespace = tracing.AttrNamespace
	attrRevision  = tracing.AttrRevision
	attrPack      = tracing.AttrPack
	attrFlow      = attribute.Key("packhost.flow")
	attrExport    = attribute.Key("packhost.export")
	attrAttempt   = attribute.Key("packhost.attempt")
)

// spanErrors are the errors a span's status names: a fixed set, so a span says what
// failed without carrying a message a guest or caller could fill.
var spanErrors = []error{
	ErrTimeout, ErrTrap, ErrResourceLimit, ErrInvalidOutput, ErrOverloaded, ErrConflict,
	ErrStateFull, ErrStateUnavailable, ErrNotLoaded, ErrNoSuchFlow, ErrInvalidActivity,
	ErrInProgress, ErrUnsupported, ErrAmbiguous, ErrOpNotAllowed,
	context.DeadlineExceeded, context.Canceled,
}

// endSpan ends span, marking it failed with err's kind when err is not nil.
func endSpan(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		desc := "error"
		for _, e := range spanErrors {
			if errors.Is(err, e) {
				desc = e.Error()
				break
			}
		}
		span.SetStatus(codes.Error, desc)
	}
	span.End()
}

// revisionAttrs name a revision ("namespace/name") as the dispatcher's and the
// controllers' spans do: namespace and name apart.
func revisionAttrs(revision string) [2]attribute.KeyValue {
	ns, name, _ := strings.Cut(revision, "/")
	return [2]attribute.KeyValue{attrNamespace.String(ns), attrRevision.String(name)}
}

// tracedStore records a span around every commit of the store it wraps: the runtime
// side of the Store interface, so every store is traced alike.
type tracedStore struct {
	Store
	tracer   trace.Tracer
	revision [2]attribute.KeyValue
}

func (s *tracedStore) Begin(ctx context.Context) (Txn, error) {
	txn, err := s.Store.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return tracedTxn{Txn: txn, store: s}, nil
}

type tracedTxn struct {
	Txn
	store *tracedStore
}

func (t tracedTxn) Commit(ctx context.Context) (err error) {
	ctx, span := tracing.Start(ctx, t.store.tracer, spanStateCommit)
	if span.IsRecording() {
		span.SetAttributes(t.store.revision[:]...)
		span.SetAttributes(attrAttempt.Int(Attempt(ctx)))
	}
	defer func() { endSpan(span, err) }()
	return t.Txn.Commit(ctx)
}

// startGuestCall starts the span of one call of c's pack's export fn.
func startGuestCall(ctx context.Context, c *call, fn api.Function) (context.Context, trace.Span) {
	ctx, span := tracing.Start(ctx, c.rev.engine.tracer, spanGuestCall)
	if span.IsRecording() {
		export := ""
		if names := fn.Definition().ExportNames(); len(names) > 0 {
			export = names[0]
		}
		rev := revisionAttrs(c.rev.name)
		span.SetAttributes(rev[:]...)
		span.SetAttributes(attrPack.String(c.pack.id), attrExport.String(export), attrAttempt.Int(Attempt(ctx)))
		if c.flow != "" {
			span.SetAttributes(attrFlow.String(c.flow))
		}
	}
	return ctx, span
}
