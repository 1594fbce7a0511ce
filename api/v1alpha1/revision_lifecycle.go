package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Revision condition types. Ready is True when PacksFetched, Loaded and StateReady are.
const (
	// RevisionPacksFetched: every pack's bytes are in the local cache and match their digest.
	RevisionPacksFetched = "PacksFetched"
	// RevisionLoaded: every pack is compiled and the revision runtime serves activities.
	RevisionLoaded = "Loaded"
	// RevisionStateReady: the state ConfigMaps exist and are owned by this Revision.
	RevisionStateReady = "StateReady"
)

// Reasons a Revision reports on its conditions. Failure reasons say what to fix.
const (
	ReasonPending              = "Pending"
	ReasonFetching             = "Fetching"
	ReasonFetched              = "Fetched"
	ReasonLoaded               = "Loaded"
	ReasonStateReady           = "StateReady"
	ReasonReady                = "Ready"
	ReasonSourceUnreachable    = "SourceUnreachable"
	ReasonInvalidSource        = "InvalidSource"
	ReasonDigestMismatch       = "DigestMismatch"
	ReasonInvalidWasm          = "InvalidWasm"
	ReasonInvalidManifest      = "InvalidManifest"
	ReasonCapabilityNotAllowed = "CapabilityNotAllowed"
	ReasonLimitAboveTenant     = "LimitAboveTenant"
	ReasonMemoryLimitTooLow    = "MemoryLimitTooLow"
	ReasonTenantNotFound       = "TenantNotFound"
	ReasonStateFailed          = "StateFailed"
	ReasonDraining             = "Draining"
	ReasonRetired              = "Retired"
	// ReasonForeignState is the reason of the Warning event on a Revision when a
	// ConfigMap carries its state labels without being its state; it is ignored.
	ReasonForeignState = "ForeignStateConfigMap"
)

// revisionDependents are the conditions Ready is made of, in the order they happen.
var revisionDependents = []string{RevisionPacksFetched, RevisionLoaded, RevisionStateReady}

// InitializeConditions sets every Revision condition that is not yet present to Unknown
// and the phase to Pending when it is empty.
func (s *RevisionStatus) InitializeConditions(generation int64) {
	for _, t := range append(revisionDependents, ConditionReady) {
		if meta.FindStatusCondition(s.Conditions, t) == nil {
			setCondition(&s.Conditions, generation, t, metav1.ConditionUnknown, ReasonPending, "")
		}
	}
	if s.Phase == "" {
		s.Phase = RevisionPending
	}
}

// MarkTrue sets one of PacksFetched, Loaded or StateReady to True, and Ready to True
// with phase Ready once all three are.
func (s *RevisionStatus) MarkTrue(generation int64, condType, reason, message string) {
	setCondition(&s.Conditions, generation, condType, metav1.ConditionTrue, reason, message)
	for _, t := range revisionDependents {
		if !meta.IsStatusConditionTrue(s.Conditions, t) {
			s.Phase = RevisionLoading
			setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionFalse, ReasonPending, "waiting for "+t)
			return
		}
	}
	s.Phase = RevisionReady
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionTrue, ReasonReady, "")
}

// MarkFailed sets condType and Ready to False with the same reason and message, and the
// phase to Failed. The message should say what the user has to fix.
func (s *RevisionStatus) MarkFailed(generation int64, condType, reason, message string) {
	setCondition(&s.Conditions, generation, condType, metav1.ConditionFalse, reason, message)
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionFalse, reason, message)
	s.Phase = RevisionFailed
}

// MarkDraining records that no split routes to the Revision while sessions stay pinned.
func (s *RevisionStatus) MarkDraining(generation int64, message string) {
	s.Phase = RevisionDraining
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionFalse, ReasonDraining, message)
}

// MarkRetired records that the Revision is drained and unloaded.
func (s *RevisionStatus) MarkRetired(generation int64, message string) {
	s.Phase = RevisionRetired
	setCondition(&s.Conditions, generation, RevisionLoaded, metav1.ConditionFalse, ReasonRetired, message)
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionFalse, ReasonRetired, message)
}

// IsReady reports whether the Revision can serve activities.
func (s *RevisionStatus) IsReady() bool {
	return s.Phase == RevisionReady && meta.IsStatusConditionTrue(s.Conditions, ConditionReady)
}
