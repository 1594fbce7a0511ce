package controllers_test

import (
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/internal/testenv"
)

// Retention never deletes a Revision that is routed or was routed within the last
// minutes (status.lastRoutedTime), even when its split is deleted; a routed Revision
// that is deleted keeps serving until no split routes to it, then unloads and goes.
// (Retention used to delete Ready revisions as soon as the split was deleted, and a
// deleted routed revision was unloaded at once while the table still routed to it.)
func TestRetentionAndDeletionAreSafe(t *testing.T) {
	testenv.Require(t, env)
	r := startReplica(t, true)
	ns := env.Namespace(t, "retention")
	exists := func(name string) bool {
		err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &v1.Revision{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		return err == nil
	}
	// The split exists first, so a and c are routed as soon as they are Ready; b is
	// never routed and history limit 0 leaves it no room.
	sp := split(ns, "main", "acme", v1.Route{RevisionName: "a", Percent: 50}, v1.Route{RevisionName: "c", Percent: 50})
	create(t, tokens(ns, "acme"), packConfigMap(ns, map[string][]byte{"ok.wasm": smallPack(okManifest)}),
		tenant(ns, "acme", func(tn *v1.Tenant) { tn.Spec.RevisionHistoryLimit = ptr.To[int32](0) }), sp,
		revision(ns, "a", "acme", "ok.wasm"), revision(ns, "b", "acme", "ok.wasm"), revision(ns, "c", "acme", "ok.wasm"))
	waitPhase(t, ns, "a", v1.RevisionReady, v1.ReasonRouted)
	waitPhase(t, ns, "c", v1.RevisionReady, v1.ReasonRouted)
	eventually(t, "the never-routed revision b is deleted by retention", func() (bool, string) { return !exists("b"), "" })

	// c leaves the split: it retires, and retention keeps it, having been routed just now.
	setRoutes(t, sp, v1.Route{RevisionName: "a", Percent: 100})
	waitPhase(t, ns, "c", v1.RevisionRetired, v1.ReasonRetired)
	// The split is deleted: a retires too and stays.
	if err := env.Client.Delete(ctx, sp); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "a", v1.RevisionRetired, v1.ReasonRetired)
	time.Sleep(2 * time.Second) // the tenant has reconciled the retirements
	for _, name := range []string{"a", "c"} {
		if !exists(name) {
			t.Fatalf("retention deleted %s, routed a moment ago", name)
		}
	}

	// A new split routes to a again; a is deleted while routed: it keeps serving.
	sp = split(ns, "main2", "acme", v1.Route{RevisionName: "a", Percent: 100})
	create(t, sp)
	waitPhase(t, ns, "a", v1.RevisionReady, v1.ReasonRouted)
	if err := env.Client.Delete(ctx, &v1.Revision{ObjectMeta: objectMeta(ns, "a")}); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "a", v1.RevisionDraining, v1.ReasonDeleted)
	time.Sleep(time.Second)
	key := types.NamespacedName{Namespace: ns, Name: "a"}
	if r.runtimes.Get(key) == nil || !exists("a") {
		t.Fatal("a deleted revision that a split routes to was unloaded")
	}
	if _, table := r.router.Tenant(ns, "acme"); table == nil || table.Summary() != "a=100" {
		t.Fatalf("the table in use changed while a is deleted: %v", table)
	}
	// Once the split routes elsewhere, a unloads and goes.
	setRoutes(t, sp, v1.Route{RevisionName: "c", Percent: 100})
	eventually(t, "a is unloaded and gone", func() (bool, string) { return !exists("a") && r.runtimes.Get(key) == nil, "" })
}
