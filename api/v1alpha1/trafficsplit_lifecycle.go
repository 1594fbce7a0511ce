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
	ReasonTablePublished   = "TablePublished"
)

// MarkPublished records that the spec's table is the table in use.
func (s *TrafficSplitStatus) MarkPublished(generation int64) {
	setCondition(&s.Conditions, generation, TrafficSplitRoutesReady, metav1.ConditionTrue, ReasonTablePublished, "")
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionTrue, ReasonTablePublished, "")
}

// MarkRoutesNotReady records that the spec's table cannot be used yet. When a last good
// table serves, the split stays Ready and says so; without one it is not Ready.
func (s *TrafficSplitStatus) MarkRoutesNotReady(generation int64, reason, message string, lastGoodServes bool) {
	setCondition(&s.Conditions, generation, TrafficSplitRoutesReady, metav1.ConditionFalse, reason, message)
	if lastGoodServes {
		setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionTrue, ReasonLastGoodTable, "serving the last good table: "+message)
		return
	}
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionFalse, reason, message)
}

// MarkConflict records that another split already routes the same tenant.
func (s *TrafficSplitStatus) MarkConflict(generation int64, other string) {
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionFalse, ReasonConflict,
		"tenant is already routed by TrafficSplit "+other+"; this split is ignored until that one is deleted")
}
