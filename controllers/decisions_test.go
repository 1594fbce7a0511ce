package controllers

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/dispatcher"
	"github.com/packhost/packhost/runtime"
	"github.com/packhost/packhost/source"
)

func TestEffectiveLimits(t *testing.T) {
	ten := v1.TenantLimits{MemoryPages: 256, MaxConcurrentActivities: 8, MaxRequestBodyBytes: 1 << 20,
		ActivityTimeout: &metav1.Duration{Duration: 10 * time.Second}}
	for _, tc := range []struct {
		name     string
		rev      *v1.RevisionLimits
		want     runtime.Limits
		wantBody int64
		above    bool
	}{
		{"tenant's", nil, runtime.Limits{MemoryPages: 256, MaxConcurrency: 8, Timeout: 10 * time.Second}, 1 << 20, false},
		{"lowered", &v1.RevisionLimits{MemoryPages: ptr.To[int32](64), MaxConcurrentActivities: ptr.To[int32](2),
			ActivityTimeout: &metav1.Duration{Duration: time.Second}, MaxRequestBodyBytes: ptr.To[int64](4096)},
			runtime.Limits{MemoryPages: 64, MaxConcurrency: 2, Timeout: time.Second}, 4096, false},
		{"memory above", &v1.RevisionLimits{MemoryPages: ptr.To[int32](512)}, runtime.Limits{}, 0, true},
		{"timeout above", &v1.RevisionLimits{ActivityTimeout: &metav1.Duration{Duration: time.Minute}}, runtime.Limits{}, 0, true},
		{"concurrency above", &v1.RevisionLimits{MaxConcurrentActivities: ptr.To[int32](9)}, runtime.Limits{}, 0, true},
		{"body above", &v1.RevisionLimits{MaxRequestBodyBytes: ptr.To[int64](2 << 20)}, runtime.Limits{}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, body, f := effectiveLimits(ten, tc.rev)
			if tc.above {
				if f == nil || f.reason != v1.ReasonLimitAboveTenant || f.retry {
					t.Fatalf("failure %+v, want a final LimitAboveTenant", f)
				}
				return
			}
			if f != nil || got != tc.want || body != tc.wantBody {
				t.Fatalf("got %+v, body %d, %v; want %+v, body %d", got, body, f, tc.want, tc.wantBody)
			}
		})
	}
}

func TestFailureClassification(t *testing.T) {
	rev := &v1.Revision{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "r"}, Spec: v1.RevisionSpec{TenantRef: v1.LocalObjectReference{Name: "acme"}}}
	notFound := apierrors.NewNotFound(schema.GroupResource{Group: "packhost.io", Resource: "tenants"}, "acme")
	for _, tc := range []struct {
		name   string
		f      *failure
		reason string
		retry  bool
	}{
		{"tenant missing", tenantFailure(rev, notFound), v1.ReasonTenantNotFound, true},
		{"tenant unreadable", tenantFailure(rev, apierrors.NewServiceUnavailable("etcd")), v1.ReasonTenantUnreadable, true},
		{"digest mismatch", fetchFailure("main", fmt.Errorf("x: %w", source.ErrDigestMismatch)), v1.ReasonDigestMismatch, false},
		{"invalid source", fetchFailure("main", fmt.Errorf("x: %w", source.ErrInvalidSource)), v1.ReasonInvalidSource, false},
		{"unreachable", fetchFailure("main", errors.New("dial: refused")), v1.ReasonSourceUnreachable, true},
		{"capability", compileFailure("main", fmt.Errorf("x: %w", runtime.ErrCapabilityDenied)), v1.ReasonCapabilityNotAllowed, true},
		{"memory", compileFailure("main", fmt.Errorf("x: %w", runtime.ErrMemoryLimit)), v1.ReasonMemoryLimitTooLow, true},
		{"memory budget", compileFailure("main", fmt.Errorf("%w: %w", runtime.ErrInvalidPack, runtime.ErrMemoryBudget)), v1.ReasonMemoryBudget, true},
		{"memory budget for an instance", compileFailure("", fmt.Errorf("%w: %w", runtime.ErrOverloaded, runtime.ErrMemoryBudget)), v1.ReasonMemoryBudget, true},
		{"a busy tenant's first instance", compileFailure("", fmt.Errorf("%w: %w", runtime.ErrOverloaded, runtime.ErrTimeout)), v1.ReasonReplicaBusy, true},
		{"manifest", compileFailure("main", fmt.Errorf("x: %w", runtime.ErrInvalidManifest)), v1.ReasonInvalidManifest, false},
		{"wasm", compileFailure("", errors.New("bad magic")), v1.ReasonInvalidWasm, false},
		{"secret not opted in", secretFailure(fmt.Errorf("x: %w", errSecretNotOptedIn)), v1.ReasonSecretNotOptedIn, true},
		{"secret missing", secretFailure(notFound), v1.ReasonSecretMissing, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.f.reason != tc.reason || tc.f.retry != tc.retry {
				t.Fatalf("got %s (retry %v), want %s (retry %v): %s", tc.f.reason, tc.f.retry, tc.reason, tc.retry, tc.f.message)
			}
		})
	}
}

func TestNextPhase(t *testing.T) {
	for _, tc := range []struct {
		name              string
		routed, wasRouted bool
		sessions          int
		deleting          bool
		want              next
	}{
		{"routed", true, true, 0, false, nextServe},
		{"never routed stays reachable by tag", false, false, 0, false, nextServe},
		{"left the split with sessions", false, true, 2, false, nextDrain},
		{"left the split, drained", false, true, 0, false, nextRetire},
		{"deleted while routed", true, true, 0, true, nextDrain},
		{"deleted with sessions", false, true, 1, true, nextDrain},
		{"deleted, nothing routes or is pinned", false, true, 0, true, nextFinalize},
		{"deleted, never routed", false, false, 0, true, nextFinalize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := nextPhase(tc.routed, tc.wasRouted, tc.sessions, tc.deleting); got != tc.want {
				t.Fatalf("got %d, want %d", got, tc.want)
			}
		})
	}
}

func TestLastRouted(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	recent, old := now.Add(-30*time.Second), now.Add(-2*time.Minute)
	for _, tc := range []struct {
		name   string
		routed bool
		last   *time.Time
		want   *time.Time
	}{
		{"first routed", true, nil, &now},
		{"routed, fresh", true, &recent, &recent},
		{"routed, stale", true, &old, &now},
		{"not routed keeps the last", false, &old, &old},
		{"never routed", false, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := lastRouted(tc.routed, tc.last, now)
			if (got == nil) != (tc.want == nil) || (got != nil && !got.Equal(*tc.want)) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRetentionVictims(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	rev := func(name string, age time.Duration, phase v1.RevisionPhase, lastRouted time.Duration) v1.Revision {
		r := v1.Revision{ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(now.Add(-age))}, Status: v1.RevisionStatus{Phase: phase}}
		if lastRouted > 0 {
			r.Status.LastRoutedTime = &metav1.Time{Time: now.Add(-lastRouted)}
		}
		return r
	}
	deleting := rev("deleting", 9*time.Hour, v1.RevisionReady, 0)
	deleting.DeletionTimestamp = &metav1.Time{Time: now}
	revs := []v1.Revision{
		rev("oldest", 8*time.Hour, v1.RevisionReady, 0),
		rev("old-retired", 7*time.Hour, v1.RevisionRetired, time.Hour),
		rev("failed", 6*time.Hour, v1.RevisionFailed, 0),
		rev("routed", 5*time.Hour, v1.RevisionReady, time.Minute),
		rev("just-routed", 4*time.Hour, v1.RevisionRetired, 5*time.Minute),
		rev("draining", 3*time.Hour, v1.RevisionDraining, time.Hour),
		rev("loading", 2*time.Hour, v1.RevisionLoading, 0),
		rev("new", time.Hour, v1.RevisionReady, 0),
		deleting,
	}
	routed := func(name string) bool { return name == "routed" }
	for _, tc := range []struct {
		limit int
		want  []string
	}{
		{0, []string{"new", "failed", "old-retired", "oldest"}},
		{2, []string{"old-retired", "oldest"}},
		{4, nil},
	} {
		t.Run(fmt.Sprint("limit ", tc.limit), func(t *testing.T) {
			var got []string
			for _, r := range retentionVictims(revs, routed, tc.limit, now) {
				got = append(got, r.Name)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRoutesTo(t *testing.T) {
	s := v1.TrafficSplit{Spec: v1.TrafficSplitSpec{Routes: []v1.Route{{RevisionName: "a"}, {RevisionName: "b"}}},
		Status: v1.TrafficSplitStatus{Routes: []v1.RouteStatus{{RevisionName: "b"}, {RevisionName: "old"}}}}
	if got := routedNames(&s); !slices.Equal(got, []string{"a", "b", "old"}) {
		t.Fatalf("routedNames: %v", got)
	}
	for _, tc := range []struct {
		name string
		want bool
	}{{"a", true}, {"old", true}, {"c", false}} {
		t.Run(tc.name, func(t *testing.T) {
			if got := routesTo([]v1.TrafficSplit{s}, tc.name); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestLoadKeyFollowsTheRuntimeConfig(t *testing.T) {
	rev := &v1.Revision{ObjectMeta: metav1.ObjectMeta{UID: "u1"}}
	ten := &v1.Tenant{Spec: v1.TenantSpec{Env: "prod", Secrets: []v1.LocalObjectReference{{Name: "keys"}}}}
	limits := runtime.Limits{MemoryPages: 16}
	base := loadKey(rev, ten, limits, 1024)
	for _, tc := range []struct {
		name   string
		change func(*v1.Revision, *v1.Tenant, *runtime.Limits, *int64)
		same   bool
	}{
		{"nothing", func(*v1.Revision, *v1.Tenant, *runtime.Limits, *int64) {}, true},
		{"tokens are not runtime config", func(_ *v1.Revision, t *v1.Tenant, _ *runtime.Limits, _ *int64) {
			t.Spec.Auth = &v1.TenantAuth{SecretRef: v1.LocalObjectReference{Name: "x"}}
		}, true},
		{"uid", func(r *v1.Revision, _ *v1.Tenant, _ *runtime.Limits, _ *int64) { r.UID = "u2" }, false},
		{"env", func(_ *v1.Revision, t *v1.Tenant, _ *runtime.Limits, _ *int64) { t.Spec.Env = "staging" }, false},
		{"policy", func(_ *v1.Revision, t *v1.Tenant, _ *runtime.Limits, _ *int64) { t.Spec.Policy.Secrets = true }, false},
		{"secrets", func(_ *v1.Revision, t *v1.Tenant, _ *runtime.Limits, _ *int64) { t.Spec.Secrets = nil }, false},
		{"limits", func(_ *v1.Revision, _ *v1.Tenant, l *runtime.Limits, _ *int64) { l.MemoryPages = 8 }, false},
		{"body", func(_ *v1.Revision, _ *v1.Tenant, _ *runtime.Limits, b *int64) { *b = 2048 }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, tn, l, b := rev.DeepCopy(), ten.DeepCopy(), limits, int64(1024)
			tc.change(r, tn, &l, &b)
			if same := loadKey(r, tn, l, b) == base; same != tc.same {
				t.Fatalf("key unchanged: %v, want %v", same, tc.same)
			}
		})
	}
}

func TestSourceOrigin(t *testing.T) {
	var got []string
	for _, p := range []v1.Pack{
		{ConfigMapRef: &v1.ConfigMapKeyReference{Name: "p", Key: "k"}},
		{URL: "https://packs.example.com:8443/a.wasm"},
		{Image: "ghcr.io/acme/bot:v1"},
	} {
		got = append(got, sourceOrigin(p))
	}
	if !slices.Equal(got, []string{"", "packs.example.com:8443", "ghcr.io"}) {
		t.Fatalf("origins %q", got)
	}
}

func TestOldestSplit(t *testing.T) {
	at := func(name string, minute int) v1.TrafficSplit {
		return v1.TrafficSplit{ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(time.Date(2026, 1, 1, 12, minute, 0, 0, time.UTC))}}
	}
	deleted := at("deleted", 0)
	deleted.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	for _, tc := range []struct {
		name   string
		splits []v1.TrafficSplit
		want   string
	}{
		{"none", nil, ""},
		{"oldest", []v1.TrafficSplit{at("b", 2), at("a", 3), at("c", 1)}, "c"},
		{"same time: by name", []v1.TrafficSplit{at("b", 1), at("a", 1)}, "a"},
		{"a deleted one does not route", []v1.TrafficSplit{deleted, at("b", 5)}, "b"},
		{"only deleted", []v1.TrafficSplit{deleted}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ""
			if s := oldestSplit(tc.splits); s != nil {
				got = s.Name
			}
			if got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestRoutesBlocked(t *testing.T) {
	rev := func(tenant string, phase v1.RevisionPhase) *v1.Revision {
		r := &v1.Revision{Spec: v1.RevisionSpec{TenantRef: v1.LocalObjectReference{Name: tenant}}, Status: v1.RevisionStatus{Phase: phase}}
		if phase == v1.RevisionFailed {
			r.Status.Conditions = []metav1.Condition{{Type: v1.ConditionReady, Status: metav1.ConditionFalse, Reason: v1.ReasonInvalidWasm, Message: "bad magic"}}
		}
		return r
	}
	loaded := func(name string) routeTarget {
		return routeTarget{name: name, rev: rev("acme", v1.RevisionReady), loaded: true}
	}
	for _, tc := range []struct {
		name    string
		targets []routeTarget
		reason  string
		message string
		stalled bool
	}{
		{"no routes", nil, "", "", false},
		{"all loaded", []routeTarget{loaded("a"), loaded("b")}, "", "", false},
		{"missing", []routeTarget{loaded("a"), {name: "b"}}, v1.ReasonRevisionNotFound, `Revision "b" not found`, false},
		{"another tenant's", []routeTarget{{name: "a", rev: rev("evil", v1.RevisionReady), loaded: true}}, v1.ReasonWrongTenant,
			`Revision "a" belongs to tenant "evil", not "acme"`, true},
		{"the first missing or foreign route decides", []routeTarget{{name: "a", rev: rev("acme", v1.RevisionFailed)}, {name: "b"}, {name: "c", rev: rev("evil", v1.RevisionReady)}},
			v1.ReasonRevisionNotFound, `Revision "b" not found`, false},
		{"loading", []routeTarget{loaded("a"), {name: "b", rev: rev("acme", v1.RevisionLoading)}, {name: "c", rev: rev("acme", "")}},
			v1.ReasonRevisionNotReady, "b is not Ready: Loading; c is not Ready: not reconciled yet", false},
		{"ready elsewhere, not loaded here", []routeTarget{{name: "a", rev: rev("acme", v1.RevisionReady)}}, v1.ReasonRevisionNotReady, "a is not Ready: Ready", false},
		{"failed comes first and stalls", []routeTarget{{name: "a", rev: rev("acme", v1.RevisionLoading)}, {name: "b", rev: rev("acme", v1.RevisionFailed)}},
			v1.ReasonRevisionFailed, "b is Failed (InvalidWasm: bad magic); a is not Ready: Loading", true},
		{"a failed revision loaded here still serves", []routeTarget{{name: "a", rev: rev("acme", v1.RevisionFailed), loaded: true}}, "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reason, message, stalled := routesBlocked("acme", tc.targets)
			if reason != tc.reason || message != tc.message || stalled != tc.stalled {
				t.Fatalf("got %q %q stalled=%v, want %q %q stalled=%v", reason, message, stalled, tc.reason, tc.message, tc.stalled)
			}
		})
	}
}

func TestSplitTable(t *testing.T) {
	split := &v1.TrafficSplit{ObjectMeta: metav1.ObjectMeta{Name: "main"}, Spec: v1.TrafficSplitSpec{
		Routes: []v1.Route{{RevisionName: "a", Percent: 90}, {RevisionName: "b", Percent: 10, Tag: "canary"}}}}
	want := []dispatcher.Route{{Revision: "a", Percent: 90}, {Revision: "b", Percent: 10, Tag: "canary"}}
	// tableOfSplit is the table a split without a strategy serves: its spec's.
	tableOfSplit := func(current *dispatcher.Table, s *v1.TrafficSplit) (*dispatcher.Table, bool) {
		return splitTable(current, s.Name, routeStatusesOf(s.Spec.Routes), s.Spec.Stickiness != v1.StickinessNone)
	}
	first, publish := tableOfSplit(nil, split)
	if !publish || first.Split != "main" || !first.Sticky || !slices.Equal(first.Routes, want) {
		t.Fatalf("from nothing: %+v publish=%v", first, publish)
	}
	other := split.DeepCopy()
	other.Name = "other"
	lighter := split.DeepCopy()
	lighter.Spec.Routes[0].Percent, lighter.Spec.Routes[1].Percent = 50, 50
	random := split.DeepCopy()
	random.Spec.Stickiness = v1.StickinessNone
	for _, tc := range []struct {
		name    string
		split   *v1.TrafficSplit
		publish bool
	}{
		{"same spec keeps the table in use", split, false},
		{"another split", other, true},
		{"other weights", lighter, true},
		{"no stickiness", random, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, publish := tableOfSplit(first, tc.split)
			if publish != tc.publish || (got == first) == tc.publish {
				t.Fatalf("publish=%v, same table %v; want publish=%v", publish, got == first, tc.publish)
			}
			if got.Split != tc.split.Name || got.Sticky != (tc.split.Spec.Stickiness != v1.StickinessNone) {
				t.Fatalf("table %+v for %+v", got, tc.split.Spec)
			}
		})
	}
}

func TestRouteStatuses(t *testing.T) {
	if routes, summary := routeStatuses(nil, map[string]int64{"a": 1}); routes != nil || summary != "" {
		t.Fatalf("no table: %v %q", routes, summary)
	}
	table := dispatcher.NewTable("main", []dispatcher.Route{{Revision: "a", Percent: 90}, {Revision: "b", Percent: 10, Tag: "canary"}}, true)
	routes, summary := routeStatuses(table, map[string]int64{"a": 7, "gone": 3})
	want := []v1.RouteStatus{{RevisionName: "a", Percent: 90, Dispatched: 7}, {RevisionName: "b", Percent: 10, Tag: "canary"}}
	if !slices.Equal(routes, want) || summary != table.Summary() {
		t.Fatalf("got %+v %q, want %+v %q", routes, summary, want, table.Summary())
	}
}

func TestTenantConfig(t *testing.T) {
	ten := &v1.Tenant{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "acme"}, Spec: v1.TenantSpec{Env: "prod",
		Limits: v1.TenantLimits{MaxRequestBodyBytes: 4096, MaxConcurrentActivities: 8}}}
	cfg := tenantConfig(ten)
	if cfg.Namespace != "ns" || cfg.Name != "acme" || cfg.Env != "prod" || cfg.MaxBodyBytes != 4096 || cfg.MaxConcurrentActivities != 8 ||
		cfg.Tokens == nil || len(cfg.Tokens) != 0 || cfg.RoutingCallers != nil {
		t.Fatalf("without auth: %+v", cfg)
	}
	ten.Spec.Auth = &v1.TenantAuth{RoutingCallers: []string{"gateway"}}
	if cfg := tenantConfig(ten); !slices.Equal(cfg.RoutingCallers, []string{"gateway"}) {
		t.Fatalf("routing callers: %v", cfg.RoutingCallers)
	}
}

func TestBearerTokens(t *testing.T) {
	got := bearerTokens(map[string][]byte{"ci": []byte("t1"), "bot": []byte("t2"), "revoked": nil, "blank": {}})
	if len(got) != 2 || got["t1"] != "ci" || got["t2"] != "bot" {
		t.Fatalf("tokens %v", got)
	}
	if got := bearerTokens(nil); got == nil || len(got) != 0 {
		t.Fatalf("no data: %v", got)
	}
}

func TestAuthFailure(t *testing.T) {
	read := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	last := &goodTokens{tokens: map[string]string{"t1": "ci", "t2": "bot"}, read: read}
	notFound := apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, "auth")
	down := apierrors.NewServiceUnavailable("etcd")
	for _, tc := range []struct {
		name    string
		err     error
		last    *goodTokens
		reason  string
		message string
		forget  bool
	}{
		{"not opted in", fmt.Errorf("auth Secret %q: %w", "auth", errSecretNotOptedIn), last, v1.ReasonSecretNotOptedIn, "", true},
		{"not found", notFound, last, v1.ReasonAuthSecretMissing, `auth Secret "auth" not found: create it, or fix spec.auth.secretRef`, true},
		{"unreadable, never read", down, nil, v1.ReasonAuthSecretMissing, down.Error(), false},
		{"unreadable, tokens kept", down, last, v1.ReasonAuthSecretUnreadable,
			down.Error() + "; the 2 tokens last read from it at 2026-01-01T12:00:00Z are still accepted", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reason, message, forget := authFailure("auth", tc.err, tc.last)
			if reason != tc.reason || forget != tc.forget || (tc.message != "" && message != tc.message) {
				t.Fatalf("got %s %q forget=%v, want %s %q forget=%v", reason, message, forget, tc.reason, tc.message, tc.forget)
			}
		})
	}
}

func TestMarkTenant(t *testing.T) {
	for _, tc := range []struct {
		reason  string
		ready   metav1.ConditionStatus
		stalled bool
	}{
		{"", metav1.ConditionTrue, false},
		{v1.ReasonAuthSecretUnreadable, metav1.ConditionFalse, false},
		{v1.ReasonAuthSecretMissing, metav1.ConditionFalse, true},
		{v1.ReasonSecretNotOptedIn, metav1.ConditionFalse, true},
	} {
		t.Run(cmp.Or(tc.reason, "ready"), func(t *testing.T) {
			var s v1.TenantStatus
			markTenant(&s, 3, tc.reason, "why")
			ready := meta.FindStatusCondition(s.Conditions, v1.ConditionReady)
			if ready == nil || ready.Status != tc.ready || ready.ObservedGeneration != 3 || (tc.reason != "" && ready.Reason != tc.reason) {
				t.Fatalf("Ready %+v", ready)
			}
			if stalled := meta.IsStatusConditionTrue(s.Conditions, v1.ConditionStalled); stalled != tc.stalled {
				t.Fatalf("Stalled=%v, want %v: %+v", stalled, tc.stalled, s.Conditions)
			}
		})
	}
}

func TestDeletionWait(t *testing.T) {
	if got := deletionWait(nil); got != "" {
		t.Fatalf("no revisions: %q", got)
	}
	revs := []v1.Revision{{ObjectMeta: metav1.ObjectMeta{Name: "bot-v1"}}, {ObjectMeta: metav1.ObjectMeta{Name: "bot-v2"}}}
	if got, want := deletionWait(revs), "deletion waits for 2 Revisions that reference this tenant (first: bot-v1): delete them first"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// A failed reload leaves the runtime loaded before serving only when the failure says
// nothing against it; a revoked capability or secret, or a changed pack, unloads it.
func TestKeepsServing(t *testing.T) {
	for _, tc := range []struct {
		reason string
		keep   bool
	}{
		{v1.ReasonSourceUnreachable, true},
		{v1.ReasonTenantUnreadable, true},
		{v1.ReasonMemoryBudget, true},
		{v1.ReasonCapabilityNotAllowed, false},
		{v1.ReasonSecretMissing, false},
		{v1.ReasonSecretNotOptedIn, false},
		{v1.ReasonDigestMismatch, false},
		{v1.ReasonInvalidWasm, false},
	} {
		if got := keepsServing(&failure{reason: tc.reason}); got != tc.keep {
			t.Errorf("keepsServing(%s) = %v, want %v", tc.reason, got, tc.keep)
		}
	}
}
