package controllers_test

import (
	"strings"
	"testing"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/internal/testenv"
)

// Each pack a revision's load fetches is a span: where from and what it was, or the
// reason the Revision reports when the fetch failed.
func TestPackFetchSpans(t *testing.T) {
	testenv.Require(t, env)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	startReplica(t, true, func(c *replicaConfig) { c.tracing = tp })
	ns := env.Namespace(t, "tracing")
	acme(t, ns, revision(ns, "ok", "acme", "ok.wasm"),
		revision(ns, "wrong-sha", "acme", "ok.wasm", func(r *v1.Revision) { r.Spec.Packs[0].SHA256 = strings.Repeat("0", 64) }))
	waitPhase(t, ns, "ok", v1.RevisionReady, "")
	waitPhase(t, ns, "wrong-sha", v1.RevisionFailed, v1.ReasonDigestMismatch)
	rev := &v1.Revision{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "ok"}, rev); err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]string{
		"ok": {"packhost.namespace": ns, "packhost.pack": "main", "packhost.source": "configMap",
			"packhost.digest": rev.Status.Packs[0].Digest, "status": ""},
		"wrong-sha": {"packhost.namespace": ns, "packhost.pack": "main", "packhost.source": "configMap",
			"packhost.digest": "", "status": v1.ReasonDigestMismatch},
	}
	seen := map[string]bool{}
	for _, s := range exp.GetSpans() {
		if s.Name != "packhost.pack_fetch" {
			t.Errorf("unexpected span %s", s.Name)
			continue
		}
		got := map[string]string{"status": s.Status.Description}
		for _, a := range s.Attributes {
			got[string(a.Key)] = a.Value.Emit()
		}
		if got["packhost.namespace"] != ns {
			continue // another test's revisions, which this replica loads too
		}
		name := got["packhost.revision"]
		w, ok := want[name]
		if !ok || s.Parent.IsValid() || (w["status"] != "") != (s.Status.Code == codes.Error) {
			t.Errorf("span of revision %q: parent %v, status %v", name, s.Parent, s.Status)
			continue
		}
		seen[name] = true
		for k, v := range w {
			if got[k] != v {
				t.Errorf("revision %s: %s = %q, want %q", name, k, got[k], v)
			}
		}
	}
	if !seen["ok"] || !seen["wrong-sha"] {
		t.Errorf("fetch spans for %v, want ok and wrong-sha", seen)
	}
}
