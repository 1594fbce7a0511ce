package controllers

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/state"
)

// The leader parses counts that someone who may write ConfigMaps in the namespace can
// forge, owner reference and all. Whatever the bytes, a report is refused with a reason
// or its sums and judgement stay within bounds: no panic, no negative or overflowing
// figure, an error rate between 0 and 100 (go test -short ./controllers -run '^$' -fuzz FuzzCountsReport).
func FuzzCountsReport(f *testing.F) {
	f.Add(report(`{"b":{"activities":20,"errors":1,"latency":[0,0,0,0,20]}}`))
	f.Add(report(`{"b":{"activities":1099511627776,"errors":1099511627776,"latency":[1099511627776]},"a":{}}`))
	f.Add(`{"replica":"pod-1","windows":[]}`)
	f.Add(`{"replica":"pod-1","windows":[{"start":"2026-01-01T00:00:00Z","end":"9999-12-31T23:59:59Z"}]}`)
	f.Add(`{"replica":"pod-1","windows":null,"extra":[1,2,3]}`)
	split := &v1.TrafficSplit{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "main", UID: "uid-1"}}
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a := &v1.CanaryAnalysis{MinActivities: 1, MaxErrorPercent: ptr.To[int32](5), MaxP99: &metav1.Duration{Duration: time.Second}}
	f.Fuzz(func(t *testing.T, data string) {
		cm := corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "main-analysis-pod-1",
				Labels: map[string]string{state.LabelComponent: componentAnalysis},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: v1.GroupVersion.String(), Kind: "TrafficSplit",
					Name: "main", UID: "uid-1", Controller: ptr.To(true)}}},
			Data: map[string]string{countsKey: data},
		}
		// Three replicas publishing the same bytes: sums of three must not overflow.
		var cms []corev1.ConfigMap
		for _, replica := range []string{"pod-1", "pod-2", "pod-3"} {
			c := cm.DeepCopy()
			c.Name = countsName("main", replica)
			c.Data[countsKey] = strings.Replace(data, `"pod-1"`, `"`+replica+`"`, 1)
			cms = append(cms, *c)
		}
		reports, ignored := trustedReports(split, cms)
		if len(reports)+len(ignored) != 3 {
			t.Fatalf("%d trusted and %d ignored of 3", len(reports), len(ignored))
		}
		fig := sumReports(reports, start, start.Add(10*time.Second))
		for rev, c := range fig.revisions {
			if c.Activities < 0 || c.Errors < 0 || c.Errors > c.Activities {
				t.Fatalf("revision %q sums to %+v", rev, c)
			}
			if p := c.ErrorPercent(); p < 0 || p > 100 {
				t.Fatalf("error rate %v", p)
			}
			if q := c.Quantile(0.99); q < 0 {
				t.Fatalf("p99 %v", q)
			}
		}
		verdict, msg := judge(fig, []string{"b"}, a)
		if verdict == "" || msg == "" {
			t.Fatalf("no judgement: %q %q", verdict, msg)
		}
	})
}
