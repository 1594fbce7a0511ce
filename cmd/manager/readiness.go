package main

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/packhost/packhost/api/v1alpha1"
)

// pendingRevisions counts, from the manager's cache, the revisions that a split routes
// to and that are neither loaded on this replica nor settled: the ones a starting
// replica waits for (dispatcher.Readiness), up to its warm-up.
func pendingRevisions(ctx context.Context, c client.Reader, loaded func(namespace, tenant, name string) bool) (int, error) {
	var splits v1.TrafficSplitList
	if err := c.List(ctx, &splits); err != nil {
		return 0, fmt.Errorf("list traffic splits: %w", err)
	}
	var revs v1.RevisionList
	if err := c.List(ctx, &revs); err != nil {
		return 0, fmt.Errorf("list revisions: %w", err)
	}
	return countPending(splits.Items, revs.Items, loaded), nil
}

// countPending is pendingRevisions' decision. A split's routes are its effective table
// (status.routes), or its spec until it has one; a split refused as a tenant's second
// is skipped. A routed revision is settled, and not waited for, when it does not
// exist, belongs to another tenant, or has failed or retired: loading it is not
// something time on this replica will bring.
func countPending(splits []v1.TrafficSplit, revs []v1.Revision, loaded func(namespace, tenant, name string) bool) int {
	byName := make(map[types.NamespacedName]*v1.Revision, len(revs))
	for i := range revs {
		byName[types.NamespacedName{Namespace: revs[i].Namespace, Name: revs[i].Name}] = &revs[i]
	}
	seen := map[types.NamespacedName]bool{}
	n := 0
	for _, s := range splits {
		if c := meta.FindStatusCondition(s.Status.Conditions, v1.ConditionReady); c != nil && c.Reason == v1.ReasonConflict {
			continue
		}
		var names []string
		for _, rt := range s.Status.Routes {
			names = append(names, rt.RevisionName)
		}
		if len(names) == 0 {
			for _, rt := range s.Spec.Routes {
				names = append(names, rt.RevisionName)
			}
		}
		tenant := s.Spec.TenantRef.Name
		for _, name := range names {
			key := types.NamespacedName{Namespace: s.Namespace, Name: name}
			if seen[key] {
				continue
			}
			seen[key] = true
			rev := byName[key]
			switch {
			case rev == nil, rev.Spec.TenantRef.Name != tenant,
				rev.Status.Phase == v1.RevisionFailed, rev.Status.Phase == v1.RevisionRetired:
			case !loaded(s.Namespace, tenant, name):
				n++
			}
		}
	}
	return n
}
