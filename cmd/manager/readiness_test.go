package main

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/packhost/packhost/api/v1alpha1"
)

func TestCountPending(t *testing.T) {
	split := func(name, tenant string, spec, status []string, reason string) v1.TrafficSplit {
		s := v1.TrafficSplit{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}}
		s.Spec.TenantRef.Name = tenant
		for _, r := range spec {
			s.Spec.Routes = append(s.Spec.Routes, v1.Route{RevisionName: r})
		}
		for _, r := range status {
			s.Status.Routes = append(s.Status.Routes, v1.RouteStatus{RevisionName: r})
		}
		if reason != "" {
			s.Status.Conditions = []metav1.Condition{{Type: v1.ConditionReady, Status: metav1.ConditionFalse, Reason: reason}}
		}
		return s
	}
	rev := func(name, tenant string, phase v1.RevisionPhase) v1.Revision {
		r := v1.Revision{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}}
		r.Spec.TenantRef.Name = tenant
		r.Status.Phase = phase
		return r
	}
	revs := []v1.Revision{
		rev("loaded", "acme", v1.RevisionReady), rev("loading", "acme", v1.RevisionLoading),
		rev("ready-elsewhere", "acme", v1.RevisionReady), rev("failed", "acme", v1.RevisionFailed),
		rev("retired", "acme", v1.RevisionRetired), rev("beta-rev", "beta", v1.RevisionLoading),
	}
	loaded := func(_, tenant, name string) bool { return tenant == "acme" && name == "loaded" }
	for _, tc := range []struct {
		name   string
		splits []v1.TrafficSplit
		want   int
	}{
		{"nothing routed", nil, 0},
		{"loaded", []v1.TrafficSplit{split("s", "acme", []string{"loaded"}, nil, "")}, 0},
		{"still loading", []v1.TrafficSplit{split("s", "acme", []string{"loaded", "loading"}, nil, "")}, 1},
		{"Ready on the leader, not loaded here", []v1.TrafficSplit{split("s", "acme", []string{"ready-elsewhere"}, nil, "")}, 1},
		{"deleted", []v1.TrafficSplit{split("s", "acme", []string{"gone"}, nil, "")}, 0},
		{"failed", []v1.TrafficSplit{split("s", "acme", []string{"failed"}, nil, "")}, 0},
		{"retired", []v1.TrafficSplit{split("s", "acme", []string{"retired"}, nil, "")}, 0},
		{"another tenant's revision", []v1.TrafficSplit{split("s", "acme", []string{"beta-rev"}, nil, "")}, 0},
		{"the effective table wins over the spec", []v1.TrafficSplit{split("s", "acme", []string{"loading"}, []string{"loaded"}, "")}, 0},
		{"a conflicting second split is ignored", []v1.TrafficSplit{split("s2", "acme", []string{"loading"}, nil, v1.ReasonConflict)}, 0},
		{"counted once", []v1.TrafficSplit{split("s", "acme", []string{"loading"}, nil, ""), split("t", "acme", nil, []string{"loading"}, v1.ReasonRevisionNotReady)}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := countPending(tc.splits, revs, loaded); got != tc.want {
				t.Fatalf("countPending = %d, want %d", got, tc.want)
			}
		})
	}
}
