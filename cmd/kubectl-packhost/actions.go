package main

import (
	"context"
	"fmt"
	"time"

	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	packhostv1alpha1 "github.com/packhost/packhost/api/v1alpha1"
)

// action is a request to the controller, made by setting one annotation of the split to
// a new value.
type action struct {
	verb       string
	annotation string
	short      string
	long       string
	// applies returns nil when the split's rollout is in a state the action means
	// something in, else an error that says why not and what to do instead. The
	// controller would ignore such a request; refusing it here tells the user at once.
	applies func(*packhostv1alpha1.TrafficSplit) error
}

var actions = []action{{
	verb:       "promote",
	annotation: packhostv1alpha1.AnnotationPromote,
	short:      "Skip the current step's pause of a running rollout",
	long: `The rollout moves to its next step at once, or finishes when the current step is the
last one. Analysis still judges every step that follows.`,
	applies: inProgress,
}, {
	verb:       "abort",
	annotation: packhostv1alpha1.AnnotationAbort,
	short:      "Stop a running rollout and go back to the stable routes",
	long: `The table in effect goes back to the stable routes at once, as when analysis fails;
sessions parked on the canary keep their pin and drain. The rollout starts again only when
spec.routes changes or a retry is asked for.`,
	applies: inProgress,
}, {
	verb:       "retry",
	annotation: packhostv1alpha1.AnnotationRetry,
	short:      "Start an aborted rollout again from its first step",
	long:       `Failed intervals are forgotten and the steps are walked again towards the same spec.routes.`,
	applies: func(s *packhostv1alpha1.TrafficSplit) error {
		if err := hasStrategy(s); err != nil {
			return err
		}
		if r := s.Status.Rollout; r == nil || r.Phase != packhostv1alpha1.RolloutAborted {
			return fmt.Errorf("trafficsplit %q has no aborted rollout to retry (rollout %s)", s.Name, phaseOf(s))
		}
		return nil
	},
}}

func hasStrategy(s *packhostv1alpha1.TrafficSplit) error {
	if s.Spec.Strategy == nil || s.Spec.Strategy.Canary == nil {
		return fmt.Errorf("trafficsplit %q has no spec.strategy.canary: its routes take effect as written, there is no rollout to steer", s.Name)
	}
	return nil
}

// inProgress accepts a split whose rollout is walking its steps or paused in one.
func inProgress(s *packhostv1alpha1.TrafficSplit) error {
	if err := hasStrategy(s); err != nil {
		return err
	}
	if r := s.Status.Rollout; r == nil || (r.Phase != packhostv1alpha1.RolloutProgressing && r.Phase != packhostv1alpha1.RolloutPaused) {
		return fmt.Errorf("trafficsplit %q has no rollout in progress (rollout %s)", s.Name, phaseOf(s))
	}
	return nil
}

// phaseOf names the rollout's phase for a message.
func phaseOf(s *packhostv1alpha1.TrafficSplit) string {
	if s.Status.Rollout == nil || s.Status.Rollout.Phase == "" {
		return "not started"
	}
	return string(s.Status.Rollout.Phase)
}

// act sets a's annotation on the split named name to the current time. The patch
// carries the resourceVersion it was checked at: when the split changed in between (the
// rollout moved on), the check runs again on what is there now.
func (o *options) act(ctx context.Context, a action, name string) error {
	c, key, err := o.client(name)
	if err != nil {
		return err
	}
	value := o.clock().UTC().Format(time.RFC3339Nano)
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		split, err := getSplit(ctx, c, key)
		if err != nil {
			return err
		}
		if err := a.applies(split); err != nil {
			return err
		}
		patch := client.MergeFromWithOptions(split.DeepCopy(), client.MergeFromWithOptimisticLock{})
		if split.Annotations == nil {
			split.Annotations = map[string]string{}
		}
		split.Annotations[a.annotation] = value
		if err := c.Patch(ctx, split, patch); err != nil {
			return fmt.Errorf("%s trafficsplit %s: %w", a.verb, key, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(o.streams.Out, "trafficsplit %q: %s requested (%s=%s)\n", name, a.verb, a.annotation, value)
	return nil
}
