package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TrafficSplit condition types besides Ready.
const (
	// TrafficSplitRoutesReady: every route names a Ready Revision of the same tenant, so
	// the spec's table is the one in use. While it is False the last good table serves.
	TrafficSplitRoutesReady = "RoutesReady"
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
)

// MarkPublished records that the spec's table is the table in use.
func (s *TrafficSplitStatus) MarkPublished(generation int64) {
	setCondition(&s.Conditions, generation, TrafficSplitRoutesReady, metav1.ConditionTrue, ReasonTablePublished, "")
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionTrue, ReasonTablePublished, "")
	markSettled(&s.Conditions, generation)
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
