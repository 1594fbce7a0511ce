package controllers

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/event"

	v1 "github.com/packhost/packhost/api/v1alpha1"
)

func TestNotJustCounts(t *testing.T) {
	base := &v1.TrafficSplit{
		ObjectMeta: metav1.ObjectMeta{Name: "main", Namespace: "ns", Generation: 2, ResourceVersion: "10"},
		Spec:       v1.TrafficSplitSpec{Routes: []v1.Route{{RevisionName: "a", Percent: 90}, {RevisionName: "b", Percent: 10}}},
		Status: v1.TrafficSplitStatus{Summary: "a=90,b=10", Routes: []v1.RouteStatus{
			{RevisionName: "a", Percent: 90, Dispatched: 900}, {RevisionName: "b", Percent: 10, Dispatched: 100}}},
	}
	for _, c := range []struct {
		name   string
		change func(*v1.TrafficSplit)
		passes bool
	}{
		{"counts and resource version", func(s *v1.TrafficSplit) {
			s.ResourceVersion = "11"
			s.Status.Routes[0].Dispatched, s.Status.Routes[1].Dispatched = 1800, 200
			s.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "packhost"}}
		}, false},
		{"spec", func(s *v1.TrafficSplit) { s.Generation++; s.Spec.Routes[0].Percent = 50 }, true},
		{"routes in status", func(s *v1.TrafficSplit) { s.Status.Routes = s.Status.Routes[:1] }, true},
		{"a route's percent in status", func(s *v1.TrafficSplit) { s.Status.Routes[1].Percent = 20 }, true},
		{"summary", func(s *v1.TrafficSplit) { s.Status.Summary = "a=100" }, true},
		{"conditions", func(s *v1.TrafficSplit) {
			s.Status.Conditions = []metav1.Condition{{Type: v1.ConditionReady, Status: metav1.ConditionFalse}}
		}, true},
		{"deletion", func(s *v1.TrafficSplit) { s.DeletionTimestamp = &metav1.Time{} }, true},
		{"labels", func(s *v1.TrafficSplit) { s.Labels = map[string]string{"team": "x"} }, true},
	} {
		cur := base.DeepCopy()
		c.change(cur)
		if got := notJustCounts.Update(event.UpdateEvent{ObjectOld: base, ObjectNew: cur}); got != c.passes {
			t.Errorf("%s: passes = %v, want %v", c.name, got, c.passes)
		}
	}
	if base.Status.Routes[0].Dispatched != 900 || base.ResourceVersion != "10" {
		t.Fatal("the predicate changed the object it was given")
	}
}
