package controllers

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/internal/tracing"
	"github.com/packhost/packhost/source"
)

// A revision's load records one span per pack fetched (RevisionReconciler.Tracing):
// a root span, since a load runs on the background loader, not for a request.
const (
	tracerScope   = "github.com/packhost/packhost/controllers"
	spanPackFetch = "packhost.pack_fetch"
)

// Span attributes: names the API server validated and what the fetch found. Never
// the url or image reference, which a namespace user writes at any length.
var (
	attrNamespace = tracing.AttrNamespace
	attrRevision  = tracing.AttrRevision
	attrPack      = tracing.AttrPack
	attrSource    = attribute.Key("packhost.source")
	attrDigest    = attribute.Key("packhost.digest")
	attrSize      = attribute.Key("packhost.size")
)

// fetch fetches pack p of rev (resolved: its pinned image, if any) under a span that
// says where it came from and what it was, or why it failed (the Revision's reason).
func (r *RevisionReconciler) fetch(ctx context.Context, rev *v1.Revision, p v1.Pack, resolved string) (*source.Fetched, error) {
	ctx, span := tracing.Start(ctx, tracing.Tracer(r.Tracing, tracerScope), spanPackFetch)
	defer span.End()
	fetched, err := r.Fetcher.Fetch(ctx, rev.Namespace, p, rev.Spec.ImagePullSecrets, resolved)
	if !span.IsRecording() {
		return fetched, err
	}
	kind := "configMap"
	switch {
	case p.URL != "":
		kind = "url"
	case p.Image != "":
		kind = "image"
	}
	span.SetAttributes(attrNamespace.String(rev.Namespace), attrRevision.String(rev.Name), attrPack.String(p.Name), attrSource.String(kind))
	if err != nil {
		span.SetStatus(codes.Error, fetchFailure(p.Name, err).reason)
		return nil, err
	}
	span.SetAttributes(attrDigest.String(fetched.Digest), attrSize.Int(len(fetched.Bytes)))
	return fetched, nil
}
