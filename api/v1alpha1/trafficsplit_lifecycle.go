package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TrafficSplit condition types besides Ready.
const (
	// TrafficSplitRoutesReady: every route names a Ready Revision of the same tenant, so
	// the spec's table is the one in use. While it is False the last good table serves.
	TrafficSplitRoutesReady = "RoutesReady"
	// TrafficSplitDegraded is True while a canary rollout stands aborted: the stable
	// table serves instead of spec.routes; the message has the failed interval's figures.
	// It is absent otherwise.
	TrafficSplitDegraded = "Degraded"
)

// Annotations that act on a canary rollout. Each acts once per new value (a timestamp,
// say): the controller compares it with the value it last acted on, in status.rollout,
// so plain kubectl, a kubectl plugin and Git can all ask for an action.
const (
	// AnnotationPromote ends the step in effect (its pause, or its wait for a passing
	// interval) and starts the next; after the last step spec.routes takes effect.
	AnnotationPromote = "packhost.io/promote"
	// AnnotationAbort stops a running rollout and goes back to the stable table.
	AnnotationAbort = "packhost.io/abort"
	// AnnotationRetry restarts an aborted rollout from its first step.
	AnnotationRetry = "packhost.io/retry"
)

// Reasons a TrafficSplit reports.
const (
	ReasonConflict         = "Conflict"
	ReasonRevisionNotFound = "RevisionNotFound"
	ReasonRevisionNotReady = "RevisionNotReady"
	ReasonWrongTenant      = "WrongTenant"
	ReasonLastGoodTable    = "LastGoodTable"
	// ReasonRevisionFailed: a route names a Revision that is Failed; the split is
	// Stalled until the route or the Revision is fixed.
	ReasonRevisionFailed = "RevisionFailed"
	ReasonTablePublished = "TablePublished"
	// ReasonRolloutProgressing: a canary step holds, for its pause or a passing interval.
	ReasonRolloutProgressing = "RolloutProgressing"
	// ReasonRolloutPaused: a canary step without pause waits for a promote.
	ReasonRolloutPaused = "RolloutPaused"
	// ReasonRolloutAborted: analysis failed (or an abort was asked for); the stable
	// table serves until spec.routes changes or a retry is asked for.
	ReasonRolloutAborted = "RolloutAborted"
	// ReasonRolloutSucceeded: every step passed and spec.routes is the stable table.
	ReasonRolloutSucceeded = "RolloutSucceeded"
)

// MarkPublished records that the spec's table is the table in use.
func (s *TrafficSplitStatus) MarkPublished(generation int64) {
	setCondition(&s.Conditions, generation, TrafficSplitRoutesReady, metav1.ConditionTrue, ReasonTablePublished, "")
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionTrue, ReasonTablePublished, "")
	markSettled(&s.Conditions, generation)
	meta.RemoveStatusCondition(&s.Conditions, TrafficSplitDegraded)
}

// MarkRolloutRunning records that a canary rollout serves a step's table instead of
// spec.routes: the routes' Revisions are Ready (RoutesReady=True), the split is not
// Ready yet and works towards it (Reconciling=True, kstatus InProgress). reason is
// ReasonRolloutProgressing or ReasonRolloutPaused.
func (s *TrafficSplitStatus) MarkRolloutRunning(generation int64, reason, message string) {
	setCondition(&s.Conditions, generation, TrafficSplitRoutesReady, metav1.ConditionTrue, ReasonTablePublished, "")
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionFalse, reason, message)
	markProgress(&s.Conditions, generation, reason, message)
	meta.RemoveStatusCondition(&s.Conditions, TrafficSplitDegraded)
}

// MarkRolloutAborted records that a canary rollout was rolled back: the stable table
// serves, and nothing changes until spec.routes changes or a retry is asked for
// (Stalled=True, kstatus Failed; Degraded=True). message has the failed interval's
// figures.
func (s *TrafficSplitStatus) MarkRolloutAborted(generation int64, message string) {
	setCondition(&s.Conditions, generation, TrafficSplitRoutesReady, metav1.ConditionTrue, ReasonTablePublished, "")
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionFalse, ReasonRolloutAborted, message)
	setCondition(&s.Conditions, generation, TrafficSplitDegraded, metav1.ConditionTrue, ReasonRolloutAborted, message)
	markStalled(&s.Conditions, generation, ReasonRolloutAborted, message)
}

// MarkRoutesNotReady records that the spec's table cannot be used yet: RoutesReady and
// Ready are False with reason, since the spec has not taken effect. stalled says that
// it cannot without someone's change (a route names a Failed Revision, or one of
// another tenant): Stalled=True, kstatus Failed. Otherwise the split waits for a
// Revision that is loading: Reconciling=True, kstatus InProgress. Either way the last
// good table, when there is one, keeps serving and status.routes shows it; the message
// says so.
func (s *TrafficSplitStatus) MarkRoutesNotReady(generation int64, reason, message string, lastGoodServes, stalled bool) {
	if lastGoodServes {
		message += "; the last good table (status.routes) keeps serving"
	}
	setCondition(&s.Conditions, generation, TrafficSplitRoutesReady, metav1.ConditionFalse, reason, message)
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionFalse, reason, message)
	if stalled {
		markStalled(&s.Conditions, generation, reason, message)
		return
	}
	markProgress(&s.Conditions, generation, reason, message)
}

// MarkConflict records that another split already routes the same tenant: Stalled,
// since only deleting one of the two resolves it.
func (s *TrafficSplitStatus) MarkConflict(generation int64, other string) {
	msg := "tenant is already routed by TrafficSplit " + other + "; this split is ignored until that one is deleted"
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionFalse, ReasonConflict, msg)
	markStalled(&s.Conditions, generation, ReasonConflict, msg)
}
