package controllers

import (
	"context"

	ctrl "sigs.k8s.io/controller-runtime"
)

// phaseScope is what one reconcile gathers and decides; its phase functions read and
// fill it in turn.
type phaseScope interface {
	// observe records that the phases acted on the object's generation: its
	// status.observedGeneration becomes its metadata.generation.
	observe()
	// finished says a phase ended the list: the object is where it can be for now.
	finished() bool
}

// phaseFunc is one step of a reconcile. It ends the list through its scope.
type phaseFunc[S phaseScope] func(ctx context.Context, s S) (ctrl.Result, error)

// runPhases runs phases in order until one ends the list or fails, and returns the
// soonest requeue any asked for. Every phase that succeeds acted on the object's
// generation, and the conditions it set say so: observedGeneration follows it. A phase
// that fails leaves observedGeneration as the phases before it left it, and the
// reconcile returns only its error.
func runPhases[S phaseScope](ctx context.Context, s S, phases ...phaseFunc[S]) (ctrl.Result, error) {
	var res ctrl.Result
	for _, phase := range phases {
		pr, err := phase(ctx, s)
		if err != nil {
			return ctrl.Result{}, err
		}
		if pr.RequeueAfter > 0 && (res.RequeueAfter == 0 || pr.RequeueAfter < res.RequeueAfter) {
			res.RequeueAfter = pr.RequeueAfter
		}
		s.observe()
		if s.finished() {
			break
		}
	}
	return res, nil
}
