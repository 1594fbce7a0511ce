package controllers

import (
	"context"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// conflictRetry is how soon an object whose status write conflicted is reconciled again.
const conflictRetry = time.Second

// writeStatus writes obj's status at the end of a reconcile that returns res and err,
// and returns what the reconcile should return and whether the status was written. A
// conflict means the reconcile worked from a copy older than the API server's: nothing
// failed, the newer copy is reconciled within conflictRetry, and no error is logged for
// it. Any other failure is the reconcile's error unless it already had one.
func writeStatus(ctx context.Context, c client.Client, obj client.Object, res ctrl.Result, err error) (ctrl.Result, bool, error) {
	uerr := c.Status().Update(ctx, obj)
	switch {
	case uerr == nil:
		return res, true, err
	case apierrors.IsConflict(uerr):
		log.FromContext(ctx).V(1).Info("status write conflicted; reconciling the newer copy", "conflict", uerr.Error())
		if res.RequeueAfter == 0 || res.RequeueAfter > conflictRetry {
			res.RequeueAfter = conflictRetry
		}
		return res, false, err
	case err == nil:
		return res, false, uerr
	}
	return res, false, err
}
