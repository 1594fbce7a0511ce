package controllers_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/internal/testenv"
	"github.com/packhost/packhost/state"
)

// A ConfigMap that claims to be a Revision's state but is not its own is ignored and the
// Revision's owner hears of it: a Warning event on the Revision names the ConfigMap.
func TestForeignStateIsReportedOnTheRevision(t *testing.T) {
	testenv.Require(t, env)
	startReplica(t, true)
	ns := env.Namespace(t, "claims")
	acme(t, ns, revision(ns, "r", "acme", "ok.wasm"))
	waitPhase(t, ns, "r", v1.RevisionReady, "")
	create(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "r-state-7", Namespace: ns, Labels: map[string]string{
		state.LabelComponent: state.ComponentState, state.LabelTenant: "acme", state.LabelRevision: "r", state.LabelShard: "7"}}})
	eventually(t, "a Warning event on r names the foreign ConfigMap", func() (bool, string) {
		var list eventsv1.EventList
		if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, e := range list.Items {
			seen = append(seen, e.Reason+": "+e.Note)
			if e.Regarding.Name == "r" && e.Type == corev1.EventTypeWarning && e.Reason == v1.ReasonForeignState && strings.Contains(e.Note, ns+"/r-state-7") {
				return true, ""
			}
		}
		return false, strings.Join(seen, "; ")
	})
	if phase, _, msg := revisionState(t, ns, "r"); phase != v1.RevisionReady {
		t.Fatalf("a foreign ConfigMap changed the revision's phase to %s: %s", phase, msg)
	}
}

func tenantCondition(ns, name string) (metav1.Condition, *v1.Tenant) {
	tn := &v1.Tenant{}
	_ = env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, tn)
	for _, c := range tn.Status.Conditions {
		if c.Type == v1.ConditionReady {
			return c, tn
		}
	}
	return metav1.Condition{}, tn
}

func waitTenantReason(t *testing.T, ns, name, reason string) string {
	t.Helper()
	var msg string
	eventually(t, "tenant "+name+" is "+reason, func() (bool, string) {
		c, _ := tenantCondition(ns, name)
		msg = c.Message
		return c.Reason == reason, c.Reason + ": " + c.Message
	})
	return msg
}

// A Secret serves a Tenant, as its tokens, in its allowlist or as a pull secret, only
// when its packhost.io/tenants annotation names the tenant; otherwise the Tenant (and a
// Revision that needs it) says which Secret and why.
func TestSecretsOptIn(t *testing.T) {
	testenv.Require(t, env)
	r := startReplica(t, true)
	ns := env.Namespace(t, "optin")
	plain := func(name string) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, StringData: map[string]string{"k": "v"}}
	}
	other := tokens(ns, "beta") // opted in for beta, not for the tenants below
	create(t, plain("sa-token"), plain("nobody-tokens"), other,
		packConfigMap(ns, map[string][]byte{"ok.wasm": smallPack(okManifest)}),
		tenant(ns, "nobody"),
		tenant(ns, "borrower", func(tn *v1.Tenant) { tn.Spec.Auth.SecretRef.Name = other.Name }),
		tokens(ns, "reader"),
		tenant(ns, "reader", func(tn *v1.Tenant) {
			tn.Spec.Secrets = []v1.LocalObjectReference{{Name: "sa-token"}}
			tn.Spec.Policy.Secrets = true
		}),
		revision(ns, "reads", "reader", "ok.wasm"),
		tokens(ns, "puller"), tenant(ns, "puller"),
		revision(ns, "pulls", "puller", "", func(rv *v1.Revision) {
			rv.Spec.Packs[0] = v1.Pack{Name: "main", Image: "localhost:1/packs/ok:v1"}
			rv.Spec.ImagePullSecrets = []v1.LocalObjectReference{{Name: "sa-token"}}
		}),
	)
	for _, tc := range []struct{ tenant, secret string }{
		{"nobody", "nobody-tokens"}, {"borrower", other.Name}, {"reader", "sa-token"},
	} {
		t.Run(tc.tenant, func(t *testing.T) {
			msg := waitTenantReason(t, ns, tc.tenant, v1.ReasonSecretNotOptedIn)
			if !strings.Contains(msg, tc.secret) || !strings.Contains(msg, v1.AnnotationTenants) {
				t.Errorf("message %q does not name Secret %s and the annotation", msg, tc.secret)
			}
			if cfg, _ := r.router.Tenant(ns, tc.tenant); cfg != nil && len(cfg.Tokens) > 0 && tc.tenant != "reader" {
				t.Errorf("tokens of a Secret that did not opt in were published: %d", len(cfg.Tokens))
			}
		})
	}
	for _, name := range []string{"reads", "pulls"} {
		msg := waitPhase(t, ns, name, v1.RevisionFailed, v1.ReasonSecretNotOptedIn)
		if !strings.Contains(msg, "sa-token") {
			t.Errorf("revision %s: message %q does not name the Secret", name, msg)
		}
	}

	// Opting in is enough: the tenant serves with the Secret's tokens.
	s := &corev1.Secret{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "nobody-tokens"}, s); err != nil {
		t.Fatal(err)
	}
	s.Annotations = map[string]string{v1.AnnotationTenants: "someone, nobody"}
	if err := env.Client.Update(ctx, s); err != nil {
		t.Fatal(err)
	}
	touchTenant(t, ns, "nobody")
	waitTenantReason(t, ns, "nobody", v1.ReasonTenantReady)
	if cfg, _ := r.router.Tenant(ns, "nobody"); cfg == nil || cfg.Tokens["v"] != "k" {
		t.Fatalf("the opted-in tokens were not published: %+v", cfg)
	}
}

// touchTenant changes a label of the tenant, so it is reconciled now.
func touchTenant(t *testing.T, ns, name string) {
	t.Helper()
	// A merge patch, not an update: the controller writes the Tenant's status and
	// finalizer meanwhile, and an update would conflict with them.
	tn := &v1.Tenant{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	patch := fmt.Sprintf(`{"metadata":{"labels":{"touched":%q}}}`, time.Now().Format("150405.000000"))
	if err := env.Client.Patch(ctx, tn, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
		t.Fatal(err)
	}
}

// flakyReader fails every Secret read while broken is set, as an API server that
// cannot be reached would.
type flakyReader struct {
	client.Reader
	broken atomic.Bool
}

func (f *flakyReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if _, ok := obj.(*corev1.Secret); ok && f.broken.Load() {
		return errors.New("connection refused")
	}
	return f.Reader.Get(ctx, key, obj, opts...)
}

// A transient error reading the token Secret keeps the tokens last read, and the
// Tenant's condition says so.
func TestTokensSurviveATransientReadError(t *testing.T) {
	testenv.Require(t, env)
	flaky := &flakyReader{}
	r := startReplica(t, true, func(c *replicaConfig) {
		c.apiReader = func(rd client.Reader) client.Reader { flaky.Reader = rd; return flaky }
	})
	ns := env.Namespace(t, "flaky")
	create(t, tokens(ns, "acme"), tenant(ns, "acme"))
	waitTenantReason(t, ns, "acme", v1.ReasonTenantReady)
	flaky.broken.Store(true)
	touchTenant(t, ns, "acme")
	msg := waitTenantReason(t, ns, "acme", v1.ReasonAuthSecretUnreadable)
	if !strings.Contains(msg, "acme-tokens") || !strings.Contains(msg, "last") {
		t.Errorf("message %q does not say the last good tokens of acme-tokens are kept", msg)
	}
	if cfg, _ := r.router.Tenant(ns, "acme"); cfg == nil || cfg.Tokens["tok"] != "ci" {
		t.Fatalf("the tokens were dropped on a transient read error: %+v", cfg)
	}
	flaky.broken.Store(false)
	touchTenant(t, ns, "acme")
	waitTenantReason(t, ns, "acme", v1.ReasonTenantReady)
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// A Revision gets a pack from the local cache only after its own source gave it once:
// pinning another tenant's digest gets nothing when the Revision's source is a
// ConfigMap that does not exist or a URL that cannot be fetched.
func TestCacheHonoursTheSource(t *testing.T) {
	testenv.Require(t, env)
	startReplica(t, true)
	private := smallPack(`{"abi":1,"pack_id":"private","version":"1","flows":[{"id":"f","entry":true}]}`)
	sum := digestOf(private)
	nsA, nsB := env.Namespace(t, "owner"), env.Namespace(t, "thief")
	create(t, tokens(nsA, "acme"), packConfigMap(nsA, map[string][]byte{"private.wasm": private}), tenant(nsA, "acme"),
		revision(nsA, "a", "acme", "private.wasm", func(r *v1.Revision) { r.Spec.Packs[0].SHA256 = sum }))
	waitPhase(t, nsA, "a", v1.RevisionReady, "")

	create(t, tokens(nsB, "evil"), tenant(nsB, "evil"),
		revision(nsB, "from-missing-configmap", "evil", "private.wasm", func(r *v1.Revision) {
			r.Spec.Packs[0].ConfigMapRef.Name = "does-not-exist"
			r.Spec.Packs[0].SHA256 = sum
		}),
		revision(nsB, "from-dead-url", "evil", "", func(r *v1.Revision) {
			r.Spec.Packs[0] = v1.Pack{Name: "main", URL: "http://127.0.0.1:1/private.wasm", SHA256: sum}
		}),
		revision(nsA, "same-namespace-other-key", "acme", "absent.wasm", func(r *v1.Revision) { r.Spec.Packs[0].SHA256 = sum }),
	)
	for _, tc := range []struct{ ns, name string }{
		{nsB, "from-missing-configmap"}, {nsB, "from-dead-url"}, {nsA, "same-namespace-other-key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eventually(t, tc.name+" fails", func() (bool, string) {
				phase, reason, msg := revisionState(t, tc.ns, tc.name)
				if phase == v1.RevisionReady {
					t.Fatalf("%s got the pack from the cache although its own source never gave it", tc.name)
				}
				return phase == v1.RevisionFailed, string(phase) + "/" + reason + ": " + msg
			})
		})
	}
}

// A ConfigMap source without sha256 is pinned to the digest first loaded: when the
// ConfigMap later holds other bytes, a reload (a restart, another replica) refuses them
// with DigestMismatch instead of running other code under the same Revision.
func TestConfigMapSourcePinnedToFirstDigest(t *testing.T) {
	testenv.Require(t, env)
	first := startReplica(t, true)
	ns := env.Namespace(t, "pinned")
	acme(t, ns, revision(ns, "r", "acme", "ok.wasm"))
	waitPhase(t, ns, "r", v1.RevisionReady, "")
	rev := &v1.Revision{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "r"}, rev); err != nil {
		t.Fatal(err)
	}
	pinned := "sha256:" + digestOf(smallPack(okManifest))
	if len(rev.Status.Packs) != 1 || rev.Status.Packs[0].Digest != pinned {
		t.Fatalf("status packs %+v, want the digest %s", rev.Status.Packs, pinned)
	}

	cm := &corev1.ConfigMap{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "packs"}, cm); err != nil {
		t.Fatal(err)
	}
	cm.BinaryData["ok.wasm"] = smallPack(`{"abi":1,"pack_id":"small","version":"2","flows":[{"id":"f","entry":true}]}`)
	if err := env.Client.Update(ctx, cm); err != nil {
		t.Fatal(err)
	}
	first.stop()
	second := startReplica(t, true)
	msg := waitPhase(t, ns, "r", v1.RevisionFailed, v1.ReasonDigestMismatch)
	if !strings.Contains(msg, strings.TrimPrefix(pinned, "sha256:")) {
		t.Errorf("message %q does not name the pinned digest", msg)
	}
	if second.runtimes.Get(types.NamespacedName{Namespace: ns, Name: "r"}) != nil {
		t.Fatal("the new replica runs the changed pack")
	}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "r"}, rev); err != nil {
		t.Fatal(err)
	}
	if len(rev.Status.Packs) != 1 || rev.Status.Packs[0].Digest != pinned {
		t.Fatalf("the pinned digest left status: %+v", rev.Status.Packs)
	}
}
