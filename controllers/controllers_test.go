package controllers_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/controllers"
	"github.com/packhost/packhost/dispatcher"
	"github.com/packhost/packhost/internal/packs"
	"github.com/packhost/packhost/internal/testenv"
	"github.com/packhost/packhost/internal/wasmbin"
	"github.com/packhost/packhost/runtime"
	"github.com/packhost/packhost/source"
	"github.com/packhost/packhost/state"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Run(m, &env)) }

// replica is one manager's worth of packhost, in process.
type replica struct {
	runtimes *controllers.Runtimes
	router   *dispatcher.Router
	stop     context.CancelFunc
}

// replicaConfig is what a test may change about a replica.
type replicaConfig struct {
	manager       ctrl.Options // with LeaderElection, the replica leads once it holds the lease
	countsRefresh time.Duration
	// clock, when set, is the time rollouts are judged and counted by.
	clock func() time.Time
	// replicaName, when set, names the replica and runs its analysis counts publisher.
	replicaName string
	// apiReader, when set, wraps the manager's API reader for the controllers.
	apiReader func(client.Reader) client.Reader
	// restConfig, when set, is who the replica acts as; a cluster admin otherwise.
	restConfig *rest.Config
	// egress, when set, is the pack sources' egress policy.
	egress *source.EgressPolicy
	// tracing, when set, records the replica's spans.
	tracing trace.TracerProvider
}

// startReplica starts a replica that acts as leader or follower as told, unless an
// option turns on leader election.
func startReplica(t *testing.T, leader bool, options ...func(*replicaConfig)) *replica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cfg := replicaConfig{manager: ctrl.Options{
		Scheme: env.Scheme, Metrics: metricsserver.Options{BindAddress: "0"}, Logger: logr.Discard(),
		// Several replicas share this test process.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	}}
	for _, o := range options {
		o(&cfg)
	}
	restConfig := env.Config
	if cfg.restConfig != nil {
		restConfig = cfg.restConfig
	}
	mgr, err := ctrl.NewManager(restConfig, cfg.manager)
	if err != nil {
		t.Fatal(err)
	}
	engine, err := runtime.NewEngine(ctx, runtime.EngineConfig{})
	if err != nil {
		t.Fatal(err)
	}
	store, err := state.New(restConfig, env.Scheme, state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := mgr.Add(store); err != nil {
		t.Fatal(err)
	}
	r := &replica{runtimes: controllers.NewRuntimes(), router: dispatcher.NewRouter(), stop: cancel}
	isLeader := func() bool { return leader }
	if cfg.manager.LeaderElection {
		isLeader = controllers.LeaderFunc(mgr)
	}
	apiReader := mgr.GetAPIReader()
	if cfg.apiReader != nil {
		apiReader = cfg.apiReader(apiReader)
	}
	splits := &controllers.TrafficSplitReconciler{Client: mgr.GetClient(), Router: r.router, Runtimes: r.runtimes, IsLeader: isLeader,
		CountsRefresh: cfg.countsRefresh, APIReader: apiReader, Clock: cfg.clock, Recorder: mgr.GetEventRecorder("packhost-trafficsplit")}
	if cfg.replicaName != "" {
		clock := cfg.clock
		if clock == nil {
			clock = time.Now
		}
		splits.Counts = &controllers.CountsPublisher{Client: mgr.GetClient(), Router: r.router, Replica: cfg.replicaName,
			Clock: clock, Log: logr.Discard()}
		if err := mgr.Add(splits.Counts); err != nil {
			t.Fatal(err)
		}
	}
	err = controllers.Setup(mgr,
		&controllers.RevisionReconciler{Client: mgr.GetClient(), APIReader: apiReader, Engine: engine, State: store,
			Recorder: mgr.GetEventRecorder("packhost-revision"),
			Fetcher:  &source.Fetcher{Reader: apiReader, CacheDir: t.TempDir(), Egress: cfg.egress}, Runtimes: r.runtimes, IsLeader: isLeader, Clock: time.Now,
			Tracing: cfg.tracing},
		&controllers.TenantReconciler{Client: mgr.GetClient(), APIReader: apiReader, Router: r.router, IsLeader: isLeader,
			Recorder: mgr.GetEventRecorder("packhost-tenant")},
		splits,
	)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = mgr.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done; _ = engine.Close(context.Background()) })
	return r
}

var ctx = context.Background()

func create(t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := env.Client.Create(ctx, o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}
}

func eventually(t *testing.T, what string, ok func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		var done bool
		if done, last = ok(); done {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out waiting until %s; last: %s", what, last)
}

func revisionState(t *testing.T, ns, name string) (v1.RevisionPhase, string, string) {
	rev := &v1.Revision{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, rev); err != nil {
		return "", "", err.Error()
	}
	for _, c := range rev.Status.Conditions {
		if c.Type == v1.ConditionReady {
			return rev.Status.Phase, c.Reason, c.Message
		}
	}
	return rev.Status.Phase, "", ""
}

func waitPhase(t *testing.T, ns, name string, phase v1.RevisionPhase, reason string) string {
	t.Helper()
	var msg string
	eventually(t, name+" is "+string(phase)+"/"+reason, func() (bool, string) {
		p, r, m := revisionState(t, ns, name)
		msg = m
		return p == phase && (reason == "" || r == reason), string(p) + "/" + r + ": " + m
	})
	return msg
}

// smallPack is a pack that fits a ConfigMap, with the given manifest.
func smallPack(manifest string) []byte {
	return packs.WithManifest(packs.Synthetic(8<<10), manifest)
}

const okManifest = `{"abi":1,"pack_id":"small","version":"1","flows":[{"id":"f","entry":true}]}`

func tenant(ns, name string, mutate ...func(*v1.Tenant)) *v1.Tenant {
	t := &v1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1.TenantSpec{Auth: &v1.TenantAuth{SecretRef: v1.LocalObjectReference{Name: name + "-tokens"}}}}
	for _, m := range mutate {
		m(t)
	}
	return t
}

// tokens is tenant name's token Secret, opted in for it.
func tokens(ns, name string) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name + "-tokens", Namespace: ns, Annotations: map[string]string{v1.AnnotationTenants: name}},
		StringData: map[string]string{"ci": "tok"}}
}

func packConfigMap(ns string, packs map[string][]byte) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "packs", Namespace: ns}, BinaryData: packs}
}

func revision(ns, name, tenant, key string, mutate ...func(*v1.Revision)) *v1.Revision {
	r := &v1.Revision{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: v1.RevisionSpec{
		TenantRef: v1.LocalObjectReference{Name: tenant},
		Packs:     []v1.Pack{{Name: "main", ConfigMapRef: &v1.ConfigMapKeyReference{Name: "packs", Key: key}}},
		State:     v1.RevisionState{Shards: 1, Retention: v1.StateRetentionDelete},
	}}
	for _, m := range mutate {
		m(r)
	}
	return r
}

// acme creates tenant acme in ns, its tokens, the pack ConfigMap holding ok.wasm, and objs.
func acme(t *testing.T, ns string, objs ...client.Object) {
	t.Helper()
	create(t, append([]client.Object{tokens(ns, "acme"), packConfigMap(ns, map[string][]byte{"ok.wasm": smallPack(okManifest)}), tenant(ns, "acme")}, objs...)...)
}

func split(ns, name, tenant string, routes ...v1.Route) *v1.TrafficSplit {
	return &v1.TrafficSplit{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1.TrafficSplitSpec{TenantRef: v1.LocalObjectReference{Name: tenant}, Routes: routes, Stickiness: v1.StickinessSession}}
}

func TestRevisionPhasesAndFailureReasons(t *testing.T) {
	testenv.Require(t, env)
	startReplica(t, true)
	ns := env.Namespace(t, "phases")
	garbage := append([]byte("\x00asm\x01\x00\x00\x00"), 0x01, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff)
	create(t, tokens(ns, "acme"),
		packConfigMap(ns, map[string][]byte{
			"ok.wasm":      smallPack(okManifest),
			"state.wasm":   smallPack(`{"abi":1,"pack_id":"small","version":"1","flows":[{"id":"f","entry":true}],"capabilities":{"state":{"read":true,"write":true}}}`),
			"nomanif.wasm": wasmbin.Strip(packs.Synthetic(4<<10), runtime.ManifestSection),
			"garbage.wasm": packs.WithManifest(garbage, okManifest),
		}),
		tenant(ns, "acme", func(t *v1.Tenant) {
			t.Spec.Policy.State = v1.StatePolicy{Read: ptr.To(true), Write: ptr.To(false)}
			t.Spec.Limits = v1.TenantLimits{MemoryPages: 1024, MaxConcurrentActivities: 16, MaxRequestBodyBytes: 1 << 20, ActivityTimeout: &metav1.Duration{Duration: 5 * time.Second}}
		}),
		revision(ns, "ok", "acme", "ok.wasm"),
		revision(ns, "no-tenant", "ghost", "ok.wasm"),
		revision(ns, "cap", "acme", "state.wasm"),
		revision(ns, "no-manifest", "acme", "nomanif.wasm"),
		revision(ns, "garbage", "acme", "garbage.wasm"),
		revision(ns, "missing-key", "acme", "absent.wasm"),
		revision(ns, "wrong-sha", "acme", "ok.wasm", func(r *v1.Revision) { r.Spec.Packs[0].SHA256 = strings.Repeat("0", 64) }),
		revision(ns, "too-much", "acme", "ok.wasm", func(r *v1.Revision) { r.Spec.Limits = &v1.RevisionLimits{MemoryPages: ptr.To[int32](2048)} }),
		revision(ns, "too-little", "acme", "ok.wasm", func(r *v1.Revision) { r.Spec.Limits = &v1.RevisionLimits{MemoryPages: ptr.To[int32](1)} }),
	)
	waitPhase(t, ns, "ok", v1.RevisionReady, "")
	for _, tc := range []struct{ name, reason, says string }{
		{"no-tenant", v1.ReasonTenantNotFound, `Tenant "ghost" not found`},
		{"cap", v1.ReasonCapabilityNotAllowed, "state writes"},
		{"no-manifest", v1.ReasonInvalidManifest, "packhost.manifest"},
		{"garbage", v1.ReasonInvalidWasm, "invalid pack"},
		{"missing-key", v1.ReasonSourceUnreachable, `no binaryData key "absent.wasm"`},
		{"wrong-sha", v1.ReasonDigestMismatch, strings.Repeat("0", 64)},
		{"too-much", v1.ReasonLimitAboveTenant, "above the tenant's"},
		{"too-little", v1.ReasonMemoryLimitTooLow, "needs 2 memory pages"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := waitPhase(t, ns, tc.name, v1.RevisionFailed, tc.reason)
			if !strings.Contains(msg, tc.says) {
				t.Errorf("message %q does not say %q", msg, tc.says)
			}
		})
	}

	// The healthy revision's status is complete and truthful.
	rev := &v1.Revision{}
	_ = env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "ok"}, rev)
	if len(rev.Status.Packs) != 1 || !strings.HasPrefix(rev.Status.Packs[0].Digest, "sha256:") || rev.Status.Packs[0].Size == 0 ||
		len(rev.Status.StateConfigMaps) != 1 || rev.Status.ObservedGeneration != rev.Generation {
		t.Errorf("status: %+v", rev.Status)
	}
	for _, c := range rev.Status.Conditions {
		want := metav1.ConditionTrue
		if c.Type == v1.ConditionReconciling || c.Type == v1.ConditionStalled {
			want = metav1.ConditionFalse // kstatus: neither working nor stuck
		}
		if c.Status != want || c.ObservedGeneration != rev.Generation {
			t.Errorf("condition %s: %s (generation %d), want %s", c.Type, c.Status, c.ObservedGeneration, want)
		}
	}

	// A missing tenant that appears lets the revision load.
	create(t, tokens(ns, "ghost"), tenant(ns, "ghost"))
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "no-tenant"}, rev); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "no-tenant", v1.RevisionReady, "")
}

func TestSplitsPublishKeepLastGoodAndConflict(t *testing.T) {
	testenv.Require(t, env)
	r := startReplica(t, true)
	ns := env.Namespace(t, "splits")
	acme(t, ns, revision(ns, "a", "acme", "ok.wasm"), revision(ns, "b", "acme", "ok.wasm"),
		revision(ns, "broken", "acme", "absent.wasm"))
	waitPhase(t, ns, "a", v1.RevisionReady, "")
	waitPhase(t, ns, "b", v1.RevisionReady, "")
	create(t, split(ns, "main", "acme", v1.Route{RevisionName: "a", Percent: 90}, v1.Route{RevisionName: "b", Percent: 10, Tag: "canary"}))
	eventually(t, "the table is published", func() (bool, string) {
		_, table := r.router.Tenant(ns, "acme")
		return table != nil && table.Summary() == "a=90,b=10", ""
	})

	// A second split for the tenant is a Conflict and changes nothing.
	time.Sleep(10 * time.Millisecond)
	create(t, split(ns, "rival", "acme", v1.Route{RevisionName: "b", Percent: 100}))
	eventually(t, "the rival split is marked Conflict", func() (bool, string) {
		s := &v1.TrafficSplit{}
		_ = env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "rival"}, s)
		for _, c := range s.Status.Conditions {
			if c.Type == v1.ConditionReady && c.Reason == v1.ReasonConflict {
				return true, c.Message
			}
		}
		return false, ""
	})
	if _, table := r.router.Tenant(ns, "acme"); table.Summary() != "a=90,b=10" {
		t.Fatalf("a conflicting split changed the table to %s", table.Summary())
	}

	// Routing to a revision that failed keeps the last good table, and says so: the
	// split is Stalled on it (kstatus Failed), not Ready.
	s := &v1.TrafficSplit{}
	_ = env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "main"}, s)
	s.Spec.Routes = []v1.Route{{RevisionName: "a", Percent: 50}, {RevisionName: "broken", Percent: 50}}
	if err := env.Client.Update(ctx, s); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the split reports the last good table", func() (bool, string) {
		_ = env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "main"}, s)
		for _, c := range s.Status.Conditions {
			if c.Type == v1.TrafficSplitRoutesReady && c.Reason == v1.ReasonRevisionFailed {
				return s.Status.Summary == "a=90,b=10", s.Status.Summary
			}
		}
		return false, s.Status.Summary
	})
	if _, table := r.router.Tenant(ns, "acme"); table.Summary() != "a=90,b=10" {
		t.Fatalf("the table in use changed to %s while broken cannot load", table.Summary())
	}
}

func TestFinalizersRetentionAndTenantDeletion(t *testing.T) {
	testenv.Require(t, env)
	startReplica(t, true)
	ns := env.Namespace(t, "lifecycle")
	create(t, tokens(ns, "acme"), packConfigMap(ns, map[string][]byte{"ok.wasm": smallPack(okManifest)}),
		tenant(ns, "acme", func(t *v1.Tenant) { t.Spec.RevisionHistoryLimit = ptr.To[int32](1) }),
		revision(ns, "kept-state", "acme", "ok.wasm", func(r *v1.Revision) { r.Spec.State.Retention = v1.StateRetentionRetain }))
	waitPhase(t, ns, "kept-state", v1.RevisionReady, "")
	time.Sleep(1100 * time.Millisecond) // creation timestamps have second resolution
	create(t, revision(ns, "newest", "acme", "ok.wasm"))
	waitPhase(t, ns, "newest", v1.RevisionReady, "")

	// History limit 1: the older unrouted revision is retired and deleted; Retain keeps
	// its state ConfigMap, without owner.
	eventually(t, "the older unrouted revision is deleted", func() (bool, string) {
		err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "kept-state"}, &v1.Revision{})
		return apierrors.IsNotFound(err), ""
	})
	cm := &corev1.ConfigMap{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "kept-state-state-0"}, cm); err != nil || len(cm.OwnerReferences) != 0 {
		t.Fatalf("retained state: %v %v", err, cm.OwnerReferences)
	}

	// Deleting the tenant waits for its revisions.
	tn := &v1.Tenant{}
	_ = env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "acme"}, tn)
	if err := env.Client.Delete(ctx, tn); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the tenant says revisions remain", func() (bool, string) {
		_ = env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "acme"}, tn)
		for _, c := range tn.Status.Conditions {
			if c.Reason == v1.ReasonRevisionsRemain {
				return true, c.Message
			}
		}
		return false, ""
	})
	rev := &v1.Revision{}
	_ = env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "newest"}, rev)
	if err := env.Client.Delete(ctx, rev); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the revision, its Delete-retention state and then the tenant are gone", func() (bool, string) {
		errRev := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "newest"}, &v1.Revision{})
		errCM := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "newest-state-0"}, &corev1.ConfigMap{})
		errTenant := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "acme"}, &v1.Tenant{})
		return apierrors.IsNotFound(errRev) && apierrors.IsNotFound(errCM) && apierrors.IsNotFound(errTenant), ""
	})
}

// Two replicas against one API server: both load the runtimes, only the leader writes
// status.
// Under traffic the split's dispatched counts change with every activity; they reach
// status once per refresh, and writing them wakes no controller. (Each count written
// used to trigger the next reconcile of the split, of its revisions and of its tenant: a
// status write and a table rebuild per API round trip while traffic flowed.)
func TestDispatchedCountsReachStatusOncePerRefresh(t *testing.T) {
	testenv.Require(t, env)
	const refresh = 500 * time.Millisecond
	r := startReplica(t, true, func(c *replicaConfig) { c.countsRefresh = refresh })
	ns := env.Namespace(t, "counts")
	acme(t, ns, revision(ns, "a", "acme", "ok.wasm"))
	waitPhase(t, ns, "a", v1.RevisionReady, "")
	create(t, split(ns, "main", "acme", v1.Route{RevisionName: "a", Percent: 100}))
	key := types.NamespacedName{Namespace: ns, Name: "main"}
	s := &v1.TrafficSplit{}
	eventually(t, "the split reports its table", func() (bool, string) {
		_ = env.Client.Get(ctx, key, s)
		return s.Status.Summary == "a=100", s.Status.Summary
	})
	time.Sleep(time.Second) // let the writes that publishing caused settle

	// Traffic flows while the test watches the split's resource version.
	traffic, stop := context.WithCancel(ctx)
	counted := make(chan int)
	go func() {
		n := 0
		for traffic.Err() == nil {
			r.router.Count(ns, "acme", "a")
			n++
			time.Sleep(100 * time.Microsecond)
		}
		counted <- n
	}()
	writes := map[string]bool{}
	start := time.Now()
	for time.Since(start) < 3*time.Second {
		if err := env.Client.Get(ctx, key, s); err != nil {
			t.Fatal(err)
		}
		writes[s.ResourceVersion] = true
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	stop()
	n := <-counted
	// One write per refresh in the window, and one that may have been in flight when it opened.
	if most := int(elapsed/refresh) + 2; len(writes) > most {
		t.Errorf("the split's status was written %d times in %v of traffic; once per %v allows %d", len(writes), elapsed.Round(time.Millisecond), refresh, most)
	}
	if len(writes) < 2 {
		t.Errorf("the split's status was never refreshed in %v of traffic", elapsed.Round(time.Millisecond))
	}
	eventually(t, "status shows the dispatched activities", func() (bool, string) {
		_ = env.Client.Get(ctx, key, s)
		return len(s.Status.Routes) == 1 && s.Status.Routes[0].Dispatched == int64(n), fmt.Sprintf("%+v, dispatched %d", s.Status.Routes, n)
	})
}

func TestOnlyTheLeaderWritesStatusButEveryReplicaLoads(t *testing.T) {
	testenv.Require(t, env)
	follower := startReplica(t, false)
	ns := env.Namespace(t, "replicas")
	acme(t, ns, revision(ns, "r", "acme", "ok.wasm"))
	key := types.NamespacedName{Namespace: ns, Name: "r"}
	eventually(t, "the follower loads the revision", func() (bool, string) { return follower.runtimes.Get(key) != nil, "" })
	time.Sleep(time.Second)
	rev := &v1.Revision{}
	_ = env.Client.Get(ctx, key, rev)
	if rev.Status.Phase != "" || len(rev.Finalizers) != 0 {
		t.Fatalf("a follower wrote status or finalizers: %+v %v", rev.Status, rev.Finalizers)
	}
	leader := startReplica(t, true)
	waitPhase(t, ns, "r", v1.RevisionReady, "")
	if leader.runtimes.Get(key) == nil || follower.runtimes.Get(key) == nil {
		t.Fatal("both replicas must hold the runtime")
	}
	// The dispatcher's lookup is scoped by tenant: another tenant never gets this runtime.
	if follower.runtimes.Revision(ns, "acme", "r") == nil || follower.runtimes.Revision(ns, "other", "r") != nil {
		t.Fatal("a revision's runtime is reachable through another tenant")
	}
}

// A revision taken out of its split drains while a session is pinned to it, then retires
// and unloads once the session is gone.
func TestDrainingThenRetired(t *testing.T) {
	testenv.Require(t, env)
	r := startReplica(t, true)
	ns := env.Namespace(t, "drain")
	acme(t, ns, revision(ns, "old", "acme", "ok.wasm"), revision(ns, "new", "acme", "ok.wasm"))
	waitPhase(t, ns, "old", v1.RevisionReady, "")
	waitPhase(t, ns, "new", v1.RevisionReady, "")
	create(t, split(ns, "main", "acme", v1.Route{RevisionName: "old", Percent: 100}, v1.Route{RevisionName: "new", Percent: 0}))
	waitPhase(t, ns, "old", v1.RevisionReady, "Routed")

	// A session parks a wait on the old revision.
	store, err := state.New(env.Config, env.Scheme, state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = store.Start(sctx) }()
	store.WaitForSync(sctx)
	old := &v1.Revision{}
	_ = env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "old"}, old)
	nsState := store.Namespace(state.Spec{Namespace: ns, Revision: "old", RevisionUID: old.UID, Tenant: "acme", Shards: 1})
	txn, _ := nsState.Begin(ctx)
	txn.SetWaits("prod/acme/ann", []runtime.Wait{{Pack: "small", Flow: "f", Expires: time.Now().Add(time.Hour)}})
	if err := txn.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	s := &v1.TrafficSplit{}
	_ = env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "main"}, s)
	s.Spec.Routes = []v1.Route{{RevisionName: "new", Percent: 100}}
	if err := env.Client.Update(ctx, s); err != nil {
		t.Fatal(err)
	}
	msg := waitPhase(t, ns, "old", v1.RevisionDraining, v1.ReasonDraining)
	if !strings.Contains(msg, "1 sessions still pinned") {
		t.Errorf("draining message: %q", msg)
	}
	if r.runtimes.Get(types.NamespacedName{Namespace: ns, Name: "old"}) == nil {
		t.Fatal("a draining revision was unloaded while a session is pinned to it")
	}

	txn, _ = nsState.Begin(ctx)
	txn.SetWaits("prod/acme/ann", nil)
	if err := txn.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "old", v1.RevisionRetired, v1.ReasonRetired)
	eventually(t, "the retired revision is unloaded", func() (bool, string) {
		return r.runtimes.Get(types.NamespacedName{Namespace: ns, Name: "old"}) == nil, ""
	})
}

// A status write from a stale copy is a retry, not a reconcile error: controller-runtime
// would log it as one and back off, while the newer copy only needs reconciling again.
func TestStatusConflictIsARetryNotAnError(t *testing.T) {
	testenv.Require(t, env)
	ns := env.Namespace(t, "conflict")
	create(t, tenant(ns, "acme"))
	key := types.NamespacedName{Namespace: ns, Name: "acme"}
	stale, fresh := &v1.Tenant{}, &v1.Tenant{}
	if err := env.Client.Get(ctx, key, stale); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Get(ctx, key, fresh); err != nil {
		t.Fatal(err)
	}
	fresh.Status.Revisions = 2
	res, written, err := controllers.WriteStatus(ctx, env.Client, fresh, ctrl.Result{RequeueAfter: time.Minute}, nil)
	if err != nil || !written || res.RequeueAfter != time.Minute {
		t.Fatalf("a current copy: written %v, %+v, %v", written, res, err)
	}

	stale.Status.Revisions = 5
	res, written, err = controllers.WriteStatus(ctx, env.Client, stale, ctrl.Result{RequeueAfter: time.Minute}, nil)
	if err != nil || written || res.RequeueAfter != time.Second {
		t.Fatalf("a stale copy: written %v, %+v, %v; want a retry within a second and no error", written, res, err)
	}
	got := &v1.Tenant{}
	if err := env.Client.Get(ctx, key, got); err != nil || got.Status.Revisions != 2 {
		t.Fatalf("the stale write changed status to %+v (%v)", got.Status, err)
	}
	failed := errors.New("load failed")
	if _, _, err = controllers.WriteStatus(ctx, env.Client, stale, ctrl.Result{}, failed); err != failed {
		t.Fatalf("the reconcile's own error was replaced by %v", err)
	}

	if err := env.Client.Delete(ctx, got); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the tenant is gone", func() (bool, string) {
		return apierrors.IsNotFound(env.Client.Get(ctx, key, &v1.Tenant{})), ""
	})
	if _, _, err = controllers.WriteStatus(ctx, env.Client, got, ctrl.Result{}, nil); !apierrors.IsNotFound(err) {
		t.Fatalf("writing the status of a deleted tenant: %v, want NotFound", err)
	}
}

// The pool collector reports each loaded revision's saturation and live instances, and
// drops a revision's series when it is unloaded.
func TestPoolCollector(t *testing.T) {
	testenv.Require(t, env)
	r := startReplica(t, true)
	ns := env.Namespace(t, "pool")
	acme(t, ns, revision(ns, "a", "acme", "ok.wasm"))
	waitPhase(t, ns, "a", v1.RevisionReady, "")
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(controllers.NewPoolCollector(r.runtimes))
	series := func() map[string]float64 {
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, f := range families {
			for _, m := range f.GetMetric() {
				labels := map[string]string{}
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				if labels["namespace"] == ns {
					out[f.GetName()+"/"+labels["revision"]+"/"+labels["pack"]] = m.GetGauge().GetValue()
				}
			}
		}
		return out
	}
	want := map[string]float64{
		"packhost_revision_activities_running/a/": 0,
		"packhost_revision_activities_waiting/a/": 0,
		"packhost_revision_instances/a/small":     1,
	}
	if got := series(); !maps.Equal(got, want) {
		t.Fatalf("series %v, want %v", got, want)
	}
	// The cache pruner keeps the packs of loaded revisions, by digest. (Not checked after
	// the unload: this replica also loads other tests' revisions of the same pack.)
	var rev v1.Revision
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "a"}, &rev); err != nil {
		t.Fatal(err)
	}
	digest := rev.Status.Packs[0].Digest
	if !r.runtimes.UsesDigest(digest) || r.runtimes.UsesDigest("sha256:"+strings.Repeat("0", 64)) {
		t.Fatalf("UsesDigest: %v for the loaded %s, %v for another", r.runtimes.UsesDigest(digest), digest,
			r.runtimes.UsesDigest("sha256:"+strings.Repeat("0", 64)))
	}
	if err := env.Client.Delete(ctx, &v1.Revision{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "a"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the unloaded revision's series are gone", func() (bool, string) {
		got := series()
		return len(got) == 0, fmt.Sprint(got)
	})
}

// A replica that saw a permanent failure while it followed writes it to status once it is
// elected: the failure is not retried, so only the resync on election reconciles it again.
func TestElectedReplicaWritesWhatItSawAsFollower(t *testing.T) {
	testenv.Require(t, env)
	ns := env.Namespace(t, "elected")
	// Another replica holds the lease; it expires unrenewed a few seconds after this one
	// first sees it.
	now := metav1.NewMicroTime(time.Now())
	create(t, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "packhost-test"}, Spec: coordinationv1.LeaseSpec{
		HolderIdentity: ptr.To("gone-replica"), LeaseDurationSeconds: ptr.To[int32](4), AcquireTime: &now, RenewTime: &now}})
	startReplica(t, false, func(c *replicaConfig) {
		c.manager.LeaderElection, c.manager.LeaderElectionID, c.manager.LeaderElectionNamespace = true, "packhost-test", ns
		c.manager.LeaseDuration, c.manager.RenewDeadline, c.manager.RetryPeriod = ptr.To(4*time.Second), ptr.To(3*time.Second), ptr.To(500*time.Millisecond)
	})
	badManifest := `{"abi":99,"pack_id":"small","version":"1","flows":[{"id":"f","entry":true}]}`
	create(t, tokens(ns, "acme"), packConfigMap(ns, map[string][]byte{"bad.wasm": smallPack(badManifest)}), tenant(ns, "acme"),
		revision(ns, "r", "acme", "bad.wasm"))
	time.Sleep(time.Second) // the follower has reconciled it and may write nothing
	if phase, _, _ := revisionState(t, ns, "r"); phase != "" {
		t.Fatalf("a follower wrote phase %q", phase)
	}
	msg := waitPhase(t, ns, "r", v1.RevisionFailed, v1.ReasonInvalidManifest)
	if !strings.Contains(msg, "abi") {
		t.Errorf("failure message %q does not say what is wrong", msg)
	}
}
