package controllers

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"

	v1 "github.com/packhost/packhost/api/v1alpha1"
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

func TestSourceOrigins(t *testing.T) {
	got := sourceOrigins([]v1.Pack{
		{ConfigMapRef: &v1.ConfigMapKeyReference{Name: "p", Key: "k"}},
		{URL: "https://packs.example.com:8443/a.wasm"},
		{Image: "ghcr.io/acme/bot:v1"},
	})
	if !slices.Equal(got, []string{"packs.example.com:8443", "ghcr.io"}) {
		t.Fatalf("origins %v", got)
	}
}
