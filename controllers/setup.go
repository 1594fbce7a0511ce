package controllers

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	v1 "github.com/packhost/packhost/api/v1alpha1"
)

// indexTenant indexes Revisions and TrafficSplits by spec.tenantRef.name.
const indexTenant = "spec.tenantRef.name"

// Setup registers the indexes and the three controllers. They run on every replica
// (loading runtimes and publishing tables is per replica) and write status only where
// isLeader says so.
func Setup(mgr manager.Manager, rev *RevisionReconciler, tenant *TenantReconciler, split *TrafficSplitReconciler) error {
	ctx := context.Background()
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(ctx, &v1.Revision{}, indexTenant, func(o client.Object) []string {
		return []string{o.(*v1.Revision).Spec.TenantRef.Name}
	}); err != nil {
		return fmt.Errorf("index revisions: %w", err)
	}
	if err := idx.IndexField(ctx, &v1.TrafficSplit{}, indexTenant, func(o client.Object) []string {
		return []string{o.(*v1.TrafficSplit).Spec.TenantRef.Name}
	}); err != nil {
		return fmt.Errorf("index splits: %w", err)
	}
	opts := controller.Options{NeedLeaderElection: ptr.To(false), MaxConcurrentReconciles: 4}
	c := mgr.GetClient()
	resync := &electionResync{client: c, elected: mgr.Elected()}
	if err := mgr.Add(resync); err != nil {
		return fmt.Errorf("resync on election: %w", err)
	}

	revisionsOfTenant := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		return listRequests(ctx, c, &v1.RevisionList{}, o.GetNamespace(), o.GetName())
	})
	revisionsOfSplit := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		s := o.(*v1.TrafficSplit)
		var out []reconcile.Request
		for _, name := range routedNames(s) {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: s.Namespace, Name: name}})
		}
		return out
	})
	if rev.loader == nil {
		rev.loader = newLoader(retryFailedLoad, rev.Clock)
		if err := mgr.Add(rev.loader); err != nil {
			return fmt.Errorf("revision loader: %w", err)
		}
	}
	claims := &claimEvents{events: make(chan event.GenericEvent)}
	if rev.State != nil {
		claims.claimed = rev.State.Claimed()
		if err := mgr.Add(claims); err != nil {
			return fmt.Errorf("watch state claims: %w", err)
		}
	}
	if err := ctrl.NewControllerManagedBy(mgr).Named("revision").For(&v1.Revision{}).
		WatchesRawSource(resync.source(&v1.RevisionList{})).
		WatchesRawSource(source.Channel(claims.events, &handler.EnqueueRequestForObject{})).
		WatchesRawSource(source.Channel(rev.loader.events, &handler.EnqueueRequestForObject{})).
		Watches(&v1.Tenant{}, revisionsOfTenant).
		Watches(&v1.TrafficSplit{}, revisionsOfSplit, builder.WithPredicates(notJustCounts)).
		WithOptions(opts).Complete(rev); err != nil {
		return fmt.Errorf("revision controller: %w", err)
	}

	tenantOf := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		var name string
		switch t := o.(type) {
		case *v1.Revision:
			name = t.Spec.TenantRef.Name
		case *v1.TrafficSplit:
			name = t.Spec.TenantRef.Name
		}
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: name}}}
	})
	if err := ctrl.NewControllerManagedBy(mgr).Named("tenant").For(&v1.Tenant{}).
		WatchesRawSource(resync.source(&v1.TenantList{})).
		Watches(&v1.Revision{}, tenantOf).
		Watches(&v1.TrafficSplit{}, tenantOf, builder.WithPredicates(notJustCounts)).
		WithOptions(opts).Complete(tenant); err != nil {
		return fmt.Errorf("tenant controller: %w", err)
	}

	splitsOfTenant := func(ctx context.Context, namespace, tenant string) []reconcile.Request {
		return listRequests(ctx, c, &v1.TrafficSplitList{}, namespace, tenant)
	}
	if err := ctrl.NewControllerManagedBy(mgr).Named("trafficsplit").For(&v1.TrafficSplit{}, builder.WithPredicates(notJustCounts)).
		WatchesRawSource(resync.source(&v1.TrafficSplitList{})).
		Watches(&v1.Revision{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
			return splitsOfTenant(ctx, o.GetNamespace(), o.(*v1.Revision).Spec.TenantRef.Name)
		})).
		Watches(&v1.Tenant{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
			return splitsOfTenant(ctx, o.GetNamespace(), o.GetName())
		})).
		WithOptions(opts).Complete(split); err != nil {
		return fmt.Errorf("split controller: %w", err)
	}
	return nil
}

// electionResync reconciles every Revision, Tenant and TrafficSplit once this replica
// is elected. Followers load revisions and publish tables but write no status, and a
// reconcile that ended in a permanent failure (a digest mismatch, say) is not retried:
// without it, what a replica saw while it followed would reach status only with the
// object's next change.
type electionResync struct {
	client  client.Reader
	elected <-chan struct{}
	kinds   []resyncKind
}

type resyncKind struct {
	list   client.ObjectList
	events chan event.GenericEvent
}

// source is a watch source for a controller that the resync feeds with every item of
// list's kind.
func (e *electionResync) source(list client.ObjectList) source.Source {
	events := make(chan event.GenericEvent)
	e.kinds = append(e.kinds, resyncKind{list: list, events: events})
	return source.Channel(events, &handler.EnqueueRequestForObject{})
}

// NeedLeaderElection is true: the resync starts on election.
func (e *electionResync) NeedLeaderElection() bool { return true }

// Start implements manager.Runnable.
func (e *electionResync) Start(ctx context.Context) error {
	// The manager closes Elected just after starting its leader runnables; the
	// controllers must see themselves as leader when these reconciles run.
	select {
	case <-e.elected:
	case <-ctx.Done():
		return nil
	}
	for _, k := range e.kinds {
		list := k.list.DeepCopyObject().(client.ObjectList)
		if err := e.client.List(ctx, list); err != nil {
			return fmt.Errorf("resync on election: list %T: %w", list, err)
		}
		err := meta.EachListItem(list, func(o k8sruntime.Object) error {
			select {
			case k.events <- event.GenericEvent{Object: o.(client.Object)}:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		if err != nil {
			return nil // shutting down
		}
	}
	return nil
}

// claimEvents reconciles a Revision when a ConfigMap newly claims to be its state, so
// the claim is reported on it at once.
type claimEvents struct {
	claimed <-chan types.NamespacedName
	events  chan event.GenericEvent
}

// NeedLeaderElection is false: the channel is drained on every replica.
func (c *claimEvents) NeedLeaderElection() bool { return false }

// Start implements manager.Runnable.
func (c *claimEvents) Start(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case key := <-c.claimed:
			rev := &v1.Revision{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
			select {
			case c.events <- event.GenericEvent{Object: rev}:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

// notJustCounts passes every TrafficSplit event but an update that changed nothing except
// the dispatched counts in status. The split controller writes those on every refresh
// while traffic flows; nothing is to be done about them, and reconciling on them would
// make each write the cause of the next.
var notJustCounts = predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
	old, ok := e.ObjectOld.(*v1.TrafficSplit)
	cur, ok2 := e.ObjectNew.(*v1.TrafficSplit)
	if !ok || !ok2 {
		return true
	}
	return !equality.Semantic.DeepEqual(withoutCounts(old), withoutCounts(cur))
}}

// withoutCounts is a copy of s without what changes on every write of its counts.
func withoutCounts(s *v1.TrafficSplit) *v1.TrafficSplit {
	s = s.DeepCopy()
	s.ResourceVersion, s.ManagedFields = "", nil
	for i := range s.Status.Routes {
		s.Status.Routes[i].Dispatched = 0
	}
	return s
}

func listRequests(ctx context.Context, c client.Client, list client.ObjectList, namespace, tenant string) []reconcile.Request {
	if err := c.List(ctx, list, client.InNamespace(namespace), client.MatchingFields{indexTenant: tenant}); err != nil {
		return nil
	}
	var out []reconcile.Request
	switch l := list.(type) {
	case *v1.RevisionList:
		for _, i := range l.Items {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: i.Namespace, Name: i.Name}})
		}
	case *v1.TrafficSplitList:
		for _, i := range l.Items {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: i.Namespace, Name: i.Name}})
		}
	}
	return out
}

// LeaderFunc reports whether mgr is the elected leader (always true without election).
func LeaderFunc(mgr manager.Manager) func() bool {
	elected := mgr.Elected()
	return func() bool {
		select {
		case <-elected:
			return true
		default:
			return false
		}
	}
}
