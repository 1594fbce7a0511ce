package state_test

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/utils/ptr"

	"github.com/packhost/packhost/internal/testenv"
	"github.com/packhost/packhost/runtime"
	"github.com/packhost/packhost/state"
)

// park commits a wait for session on ns.
func park(t *testing.T, ns runtime.Store, session string, expires time.Time) {
	t.Helper()
	ctx := context.Background()
	txn, err := ns.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	txn.SetWaits(session, []runtime.Wait{{Pack: "bot", Flow: "ask", Expires: expires}})
	if err := txn.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// stateSpec is a revision's state namespace with a fresh UID, as the controller gives it.
func stateSpec(namespace, revision, tenant string, shards int) state.Spec {
	return state.Spec{Namespace: namespace, Revision: revision, RevisionUID: uuid.NewUUID(), Tenant: tenant, Shards: shards}
}

// A session's pin is found only among the waits of its own namespace and tenant: a wait
// for the same session key parked by a revision of another namespace, or of another
// tenant of the same namespace, neither moves the pin nor counts as the victim's session.
func TestWaitIndexIsPerNamespaceAndTenant(t *testing.T) {
	testenv.Require(t, env)
	s := newStore(t, state.Options{})
	nsA, nsB := env.Namespace(t, "victim"), env.Namespace(t, "attacker")
	session := runtime.SessionKey("prod", nsA+"/acme", &runtime.Activity{UserID: "ann"})

	victim := ensure(t, s, stateSpec(nsA, "bot", "acme", 1))
	park(t, victim, session, time.Now().Add(time.Hour))
	// Anyone who may write ConfigMaps in their own namespace can craft a wait entry for
	// any session key in their own revision's state.
	for _, spec := range []state.Spec{stateSpec(nsB, "evil", "acme", 1), stateSpec(nsA, "mal", "mallory", 1)} {
		park(t, ensure(t, s, spec), session, time.Now().Add(2*time.Hour))
	}
	check := func(when string) {
		t.Helper()
		want := runtime.Pin{Revision: nsA + "/bot", Pack: "bot", Flow: "ask"}
		for name, pins := range map[string][]runtime.Pin{"SessionPins": s.SessionPins(session, time.Now()), "Pins": s.Pins(nsA, "acme", session, time.Now())} {
			if len(pins) != 1 || pins[0].Revision != want.Revision || pins[0].Pack != want.Pack || pins[0].Flow != want.Flow {
				t.Errorf("%s: %s = %+v, want one pin of flow ask on %s/bot", when, name, pins, nsA)
			}
		}
		if n := s.OpenSessions(nsA, "bot", time.Now()); n != 1 {
			t.Errorf("%s: bot holds %d open sessions, want 1", when, n)
		}
	}
	check("after the commits")
	time.Sleep(time.Second) // the watch delivers every commit again
	check("after the watch")

	// The attacker's wait going away does not clear the victim's pin either.
	park(t, s.Namespace(stateSpec(nsB, "evil", "acme", 1)), session, time.Now().Add(-time.Hour))
	time.Sleep(500 * time.Millisecond)
	check("after the attacker's wait expired")
}

// A ConfigMap that carries the state labels of a revision but is not that revision's
// own (no owner, another owner's UID, another tenant's label) is ignored: its waits pin
// nothing, it is not read as state, and it is reported for the revision it claims.
func TestForeignStateConfigMapsAreIgnoredAndReported(t *testing.T) {
	testenv.Require(t, env)
	ctx := context.Background()
	s := newStore(t, state.Options{})
	nsName := env.Namespace(t, "claims")
	spec := stateSpec(nsName, "bot", "acme", 1)
	victim := ensure(t, s, spec)

	// Take a well-formed wait entry from the revision's own shard, then clear it there.
	session := runtime.SessionKey("prod", nsName+"/acme", &runtime.Activity{UserID: "bob"})
	park(t, victim, session, time.Now().Add(time.Hour))
	own := &corev1.ConfigMap{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: nsName, Name: "bot-state-0"}, own); err != nil {
		t.Fatal(err)
	}
	entries := own.BinaryData
	txn, _ := victim.Begin(ctx)
	txn.SetWaits(session, nil)
	if err := txn.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	labels := func(tenant string) map[string]string {
		return map[string]string{state.LabelComponent: state.ComponentState, state.LabelTenant: tenant, state.LabelRevision: "bot", state.LabelShard: "0"}
	}
	owner := func(uid types.UID) []metav1.OwnerReference {
		return []metav1.OwnerReference{{APIVersion: "packhost.io/v1alpha1", Kind: "Revision", Name: "bot", UID: uid, Controller: ptr.To(true)}}
	}
	for _, cm := range []*corev1.ConfigMap{
		{ObjectMeta: metav1.ObjectMeta{Name: "no-owner", Labels: labels("acme")}},
		{ObjectMeta: metav1.ObjectMeta{Name: "forged-owner", Labels: labels("acme"), OwnerReferences: owner(uuid.NewUUID())}},
		{ObjectMeta: metav1.ObjectMeta{Name: "other-tenant", Labels: labels("evil"), OwnerReferences: owner(spec.RevisionUID)}},
	} {
		cm.Namespace, cm.BinaryData = nsName, entries
		if err := env.Client.Create(ctx, cm); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(s.Claims(nsName, "bot")) < 3 && time.Now().Before(deadline) {
		if len(s.SessionPins(session, time.Now())) > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if pins := s.SessionPins(session, time.Now()); len(pins) > 0 {
		t.Fatalf("a foreign ConfigMap pinned the session: %+v", pins)
	}
	if n := s.OpenSessions(nsName, "bot", time.Now()); n != 0 {
		t.Fatalf("foreign ConfigMaps count as %d open sessions of bot", n)
	}
	claims := strings.Join(s.Claims(nsName, "bot"), "\n")
	for _, name := range []string{"no-owner", "forged-owner", "other-tenant"} {
		if !strings.Contains(claims, nsName+"/"+name) {
			t.Errorf("the claim of ConfigMap %s is not reported: %q", name, claims)
		}
	}
	if p := s.Problems(nsName, "bot", 1); len(p) > 0 {
		t.Errorf("the revision's own state reports problems: %q", p)
	}
}

// An existing <revision>-state-<n> is taken over only when it names the same tenant and
// is owned by this Revision, or was retained by a Revision of the same tenant and name.
func TestAdoptionOnlyOfOwnOrRetainedState(t *testing.T) {
	testenv.Require(t, env)
	ctx := context.Background()
	s := newStore(t, state.Options{})
	nsName := env.Namespace(t, "adopt")

	// acme's bot-v1 is deleted with retention Retain.
	retained := stateSpec(nsName, "bot-v1", "acme", 1)
	ensure(t, s, retained)
	if err := s.Remove(ctx, retained, true); err != nil {
		t.Fatal(err)
	}
	// A ConfigMap with the right labels that nobody retained.
	unclaimed := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "bot-v2-state-0", Namespace: nsName, Labels: map[string]string{
		state.LabelComponent: state.ComponentState, state.LabelTenant: "acme", state.LabelRevision: "bot-v2", state.LabelShard: "0"}}}
	if err := env.Client.Create(ctx, unclaimed); err != nil {
		t.Fatal(err)
	}
	// A live revision's state, which a new Revision of that name (another UID) must not take.
	ensure(t, s, stateSpec(nsName, "bot-v3", "acme", 1))

	for _, tc := range []struct {
		name  string
		spec  state.Spec
		adopt bool
	}{
		{"another tenant's retained state", stateSpec(nsName, "bot-v1", "evil", 1), false},
		{"labelled but never retained", stateSpec(nsName, "bot-v2", "acme", 1), false},
		{"owned by another live revision", stateSpec(nsName, "bot-v3", "acme", 1), false},
		{"retained by the same tenant and name", stateSpec(nsName, "bot-v1", "acme", 1), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Ensure(ctx, tc.spec)
			if !tc.adopt {
				if err == nil {
					t.Fatal("adopted")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			cm := &corev1.ConfigMap{}
			if err := env.Client.Get(ctx, types.NamespacedName{Namespace: nsName, Name: state.ShardName(tc.spec.Revision, 0)}, cm); err != nil {
				t.Fatal(err)
			}
			if len(cm.OwnerReferences) != 1 || cm.OwnerReferences[0].UID != tc.spec.RevisionUID {
				t.Errorf("adopted state is owned by %v, want the new revision %s", cm.OwnerReferences, tc.spec.RevisionUID)
			}
		})
	}
}

// Remove deletes or releases only the ConfigMaps this Revision owns, never others that
// carry its labels.
func TestRemoveTouchesOnlyWhatItOwns(t *testing.T) {
	testenv.Require(t, env)
	ctx := context.Background()
	s := newStore(t, state.Options{})
	nsName := env.Namespace(t, "remove")
	for _, retain := range []bool{false, true} {
		spec := stateSpec(nsName, "r", "acme", 1)
		if retain {
			spec.Revision = "k"
		}
		ensure(t, s, spec)
		foreign := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: spec.Revision + "-notes", Namespace: nsName,
			Labels:          map[string]string{state.LabelComponent: state.ComponentState, state.LabelTenant: "acme", state.LabelRevision: spec.Revision},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: "x", UID: uuid.NewUUID()}}}}
		if err := env.Client.Create(ctx, foreign); err != nil {
			t.Fatal(err)
		}
		if err := s.Remove(ctx, spec, retain); err != nil {
			t.Fatal(err)
		}
		got := &corev1.ConfigMap{}
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: nsName, Name: foreign.Name}, got); err != nil {
			t.Fatalf("retain %v: the foreign ConfigMap: %v", retain, err)
		}
		if len(got.OwnerReferences) != 1 || len(got.Annotations) != 0 {
			t.Errorf("retain %v: the foreign ConfigMap was changed: %v %v", retain, got.OwnerReferences, got.Annotations)
		}
		err := env.Client.Get(ctx, types.NamespacedName{Namespace: nsName, Name: state.ShardName(spec.Revision, 0)}, got)
		if retain != (err == nil) || (!retain && !apierrors.IsNotFound(err)) {
			t.Errorf("retain %v: the revision's own shard: %v", retain, err)
		}
	}
}
