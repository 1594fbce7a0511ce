package controllers_test

import (
	"fmt"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/internal/testenv"
	"github.com/packhost/packhost/source"
)

// kstatusOf computes an object's health as Flux, kpt and Argo CD's generic check do,
// with sigs.k8s.io/cli-utils' kstatus itself.
func kstatusOf(t *testing.T, obj client.Object) (*status.Result, error) {
	t.Helper()
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
		return nil, err
	}
	m, err := k8sruntime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{Object: m}
	gvks, _, err := env.Scheme.ObjectKinds(obj)
	if err != nil {
		return nil, err
	}
	u.SetGroupVersionKind(gvks[0])
	return status.Compute(u)
}

func waitKstatus(t *testing.T, obj client.Object, want status.Status) {
	t.Helper()
	eventually(t, fmt.Sprintf("%T %s reads %s", obj, obj.GetName(), want), func() (bool, string) {
		res, err := kstatusOf(t, obj)
		if err != nil {
			return false, err.Error()
		}
		return res.Status == want, fmt.Sprintf("%s: %s", res.Status, res.Message)
	})
}

// Every phase of every kind reads right to GitOps tools: loading is InProgress, a
// Revision that cannot become Ready without someone's change is Failed (Stalled=True)
// with the reason, and a split patched to route to such a Revision reads Failed (not
// Ready=True with an old observedGeneration) while it keeps serving its last good
// table. (A Failed Revision used to read InProgress forever, and the split Current.)
func TestKstatusOfEveryPhase(t *testing.T) {
	testenv.Require(t, env)
	egress, err := source.NewEgressPolicy([]string{"127.0.0.1/32"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	startReplica(t, true, func(c *replicaConfig) { c.egress = egress })
	ns := env.Namespace(t, "kstatus")
	hole := blackHole(t)
	acme(t, ns,
		revision(ns, "ok", "acme", "ok.wasm"),
		revision(ns, "canary", "acme", "ok.wasm"),
		revision(ns, "broken", "acme", "absent.wasm"),
		revision(ns, "orphan", "ghost", "ok.wasm"),
		revision(ns, "loading", "acme", "", func(r *v1.Revision) {
			r.Spec.Packs[0] = v1.Pack{Name: "main", URL: "http://" + hole + "/p.wasm", SHA256: strings.Repeat("b", 64)}
		}),
		tenant(ns, "no-auth", func(tn *v1.Tenant) { tn.Spec.Auth.SecretRef.Name = "absent" }),
	)
	rev := func(name string) *v1.Revision {
		return &v1.Revision{ObjectMeta: objectMeta(ns, name)}
	}
	for _, tc := range []struct {
		obj  client.Object
		want status.Status
	}{
		{rev("loading"), status.InProgressStatus},
		{rev("ok"), status.CurrentStatus},
		{rev("broken"), status.FailedStatus},
		{rev("orphan"), status.FailedStatus},
		{&v1.Tenant{ObjectMeta: objectMeta(ns, "acme")}, status.CurrentStatus},
		{&v1.Tenant{ObjectMeta: objectMeta(ns, "no-auth")}, status.FailedStatus},
	} {
		waitKstatus(t, tc.obj, tc.want)
	}
	if res, _ := kstatusOf(t, rev("broken")); !strings.Contains(res.Message, "absent.wasm") {
		t.Errorf("a Failed revision's kstatus message %q does not say what failed", res.Message)
	}

	// A split that serves reads Current; patched to route to a Failed revision it reads
	// Failed at its new generation while status.routes shows the last good table.
	sp := split(ns, "main", "acme", v1.Route{RevisionName: "ok", Percent: 100})
	create(t, sp)
	waitKstatus(t, sp, status.CurrentStatus)
	setRoutes(t, sp, []v1.Route{{RevisionName: "ok", Percent: 50}, {RevisionName: "broken", Percent: 50}}...)
	waitKstatus(t, sp, status.FailedStatus)
	if sp.Status.ObservedGeneration != sp.Generation || sp.Status.Summary != "ok=100" {
		t.Errorf("split status: observedGeneration %d of %d, table %q; want the new generation and the last good table ok=100",
			sp.Status.ObservedGeneration, sp.Generation, sp.Status.Summary)
	}
	// Routing to a revision that is still loading is InProgress.
	setRoutes(t, sp, []v1.Route{{RevisionName: "ok", Percent: 50}, {RevisionName: "loading", Percent: 50}}...)
	waitKstatus(t, sp, status.InProgressStatus)
	// A second split of the tenant is ignored until someone deletes one: Failed.
	rival := split(ns, "rival", "acme", v1.Route{RevisionName: "ok", Percent: 100})
	create(t, rival)
	waitKstatus(t, rival, status.FailedStatus)
	// (A conflicting split's routes keep their revisions loaded: it takes over when the
	// active one is deleted.)
	if err := env.Client.Delete(ctx, rival); err != nil {
		t.Fatal(err)
	}

	// Drained and retired revisions are where they should be: Current.
	setRoutes(t, sp, v1.Route{RevisionName: "canary", Percent: 100})
	waitPhase(t, ns, "ok", v1.RevisionRetired, v1.ReasonRetired)
	waitKstatus(t, rev("ok"), status.CurrentStatus)
	waitKstatus(t, sp, status.CurrentStatus)
	got := &v1.Revision{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "ok"}, got); err != nil || got.Status.LastRoutedTime == nil {
		t.Errorf("a revision that was routed has no status.lastRoutedTime (%v)", err)
	}
}

func objectMeta(ns, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: ns, Name: name}
}

// setRoutes changes a split's routes, retrying on conflict with the controller's writes.
func setRoutes(t *testing.T, sp *v1.TrafficSplit, routes ...v1.Route) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(sp), sp); err != nil {
			return err
		}
		sp.Spec.Routes = routes
		return env.Client.Update(ctx, sp)
	})
	if err != nil {
		t.Fatal(err)
	}
}
