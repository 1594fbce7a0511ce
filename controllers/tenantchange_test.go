package controllers_test

import (
	"testing"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/internal/testenv"
)

// updateTenant changes a tenant, retrying on conflict with the controller's writes.
func updateTenant(t *testing.T, ns, name string, mutate func(*v1.Tenant)) {
	t.Helper()
	tn := &v1.Tenant{}
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, tn); err != nil {
			return err
		}
		mutate(tn)
		return env.Client.Update(ctx, tn)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A tenant's change reaches its loaded revisions within seconds: a new limit or env
// loads the revision again (the old runtime finishes what it runs), and a capability
// revoked that the pack needs fails the revision and unloads it, so its traffic gets
// 503. (A revision used to reload only when its UID changed: until a restart.)
func TestTenantChangesReachLoadedRevisions(t *testing.T) {
	testenv.Require(t, env)
	r := startReplica(t, true)
	ns := env.Namespace(t, "tenantchange")
	stateManifest := `{"abi":1,"pack_id":"small","version":"1","flows":[{"id":"f","entry":true}],"capabilities":{"state":{"read":true,"write":true}}}`
	create(t, tokens(ns, "acme"), packConfigMap(ns, map[string][]byte{"state.wasm": smallPack(stateManifest)}),
		tenant(ns, "acme"), revision(ns, "r", "acme", "state.wasm"))
	waitPhase(t, ns, "r", v1.RevisionReady, "")
	key := types.NamespacedName{Namespace: ns, Name: "r"}
	first := r.runtimes.Get(key)
	if first == nil {
		t.Fatal("not loaded")
	}

	for _, tc := range []struct {
		name   string
		mutate func(*v1.Tenant)
	}{
		{"a lower limit", func(tn *v1.Tenant) { tn.Spec.Limits.MaxConcurrentActivities = 2 }},
		{"another env", func(tn *v1.Tenant) { tn.Spec.Env = "staging" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := r.runtimes.Get(key)
			updateTenant(t, ns, "acme", tc.mutate)
			eventually(t, "the revision is loaded again", func() (bool, string) {
				l := r.runtimes.Get(key)
				return l != nil && l != before && l.Runtime != before.Runtime, ""
			})
			waitPhase(t, ns, "r", v1.RevisionReady, "")
		})
	}

	// Revoking state writes, which the pack declares, fails it and unloads it.
	updateTenant(t, ns, "acme", func(tn *v1.Tenant) { tn.Spec.Policy.State.Write = ptr.To(false) })
	waitPhase(t, ns, "r", v1.RevisionFailed, v1.ReasonCapabilityNotAllowed)
	if r.runtimes.Revision(ns, "acme", "r") != nil {
		t.Fatal("a revision that needs a revoked capability still serves")
	}
	// Allowed again, it loads again.
	updateTenant(t, ns, "acme", func(tn *v1.Tenant) { tn.Spec.Policy.State.Write = ptr.To(true) })
	waitPhase(t, ns, "r", v1.RevisionReady, "")
}
