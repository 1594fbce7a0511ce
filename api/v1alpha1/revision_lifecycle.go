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
	// ReasonMemoryBudget: the revision does not fit in this replica's memory budget
	// (--memory-budget) now; the message has the figures. It is tried again, and other
	// replicas may load it.
	ReasonMemoryBudget = "MemoryBudgetExceeded"
	// ReasonReplicaBusy: this replica could not start the revision's first instance in
	// time, its tenant's guests holding the tenant's share of the processors. It is
	// tried again.
	ReasonReplicaBusy = "ReplicaBusy"
	// ReasonLoading: the packs are being fetched and compiled off the reconcile path.
	ReasonLoading = "Loading"
	// ReasonReloading: a loaded revision is loaded again because its tenant's policy,
	// limits, env or secrets changed; the runtime loaded before serves until the new one
	// replaces it.
	ReasonReloading = "Reloading"
	// ReasonRouted is the Ready reason of a Ready revision that a TrafficSplit routes to.
	ReasonRouted = "Routed"
	// ReasonTenantUnreadable: the Tenant could not be read just now (not that it is
	// missing, which is ReasonTenantNotFound); it is read again shortly.
	ReasonTenantUnreadable = "TenantUnreadable"
	// ReasonDeleted: the Revision is being deleted and waits for splits to stop routing
	// to it and for its pinned sessions to drain.
	ReasonDeleted = "Deleted"
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
			markProgress(&s.Conditions, generation, ReasonPending, "waiting for "+t)
			return
		}
	}
	s.Phase = RevisionReady
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionTrue, ReasonReady, "")
	markSettled(&s.Conditions, generation)
}

// MarkRouted notes on a Ready revision's Ready condition that a split routes to it.
// Whether it ever was routed is status.lastRoutedTime, not this reason.
func (s *RevisionStatus) MarkRouted(generation int64) {
	if s.Phase == RevisionReady && meta.IsStatusConditionTrue(s.Conditions, ConditionReady) {
		setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionTrue, ReasonRouted, "a TrafficSplit routes to it")
	}
}

// MarkLoading records that the packs are being fetched and compiled: phase Loading,
// Reconciling=True (kstatus InProgress).
func (s *RevisionStatus) MarkLoading(generation int64, message string) {
	s.Phase = RevisionLoading
	setCondition(&s.Conditions, generation, RevisionPacksFetched, metav1.ConditionUnknown, ReasonLoading, message)
	setCondition(&s.Conditions, generation, RevisionLoaded, metav1.ConditionUnknown, ReasonLoading, message)
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionUnknown, ReasonLoading, message)
	markProgress(&s.Conditions, generation, ReasonLoading, message)
}

// MarkReloading records that a loaded revision is being loaded again (its tenant
// changed) while the runtime loaded before keeps serving: the phase and Ready stay,
// Reconciling=True says work is under way.
func (s *RevisionStatus) MarkReloading(generation int64, message string) {
	markProgress(&s.Conditions, generation, ReasonReloading, message)
}

// MarkWaiting records a transient problem that the controller retries by itself
// (reason says which): the phase and Ready stay, Reconciling=True.
func (s *RevisionStatus) MarkWaiting(generation int64, reason, message string) {
	markProgress(&s.Conditions, generation, reason, message)
}

// MarkFailed sets condType and Ready to False with the same reason and message, the
// phase to Failed and Stalled to True (kstatus Failed): the Revision cannot become
// Ready until someone changes what the reason names. Failures that may pass by
// themselves (a source unreachable) are still retried.
func (s *RevisionStatus) MarkFailed(generation int64, condType, reason, message string) {
	setCondition(&s.Conditions, generation, condType, metav1.ConditionFalse, reason, message)
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionFalse, reason, message)
	setCondition(&s.Conditions, generation, ConditionStalled, metav1.ConditionTrue, reason, message)
	setCondition(&s.Conditions, generation, ConditionReconciling, metav1.ConditionFalse, reason, "")
	s.Phase = RevisionFailed
}

// MarkDraining records that no split routes to the Revision while sessions stay pinned
// to it. It still serves them, so Ready stays True (kstatus Current): draining is the
// Revision doing what it should, and a pipeline need not wait for sessions to expire.
func (s *RevisionStatus) MarkDraining(generation int64, reason, message string) {
	s.Phase = RevisionDraining
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionTrue, reason, message)
	markSettled(&s.Conditions, generation)
}

// MarkRetired records that the Revision is drained and unloaded. Like a Knative
// revision scaled to zero it is where it should be (Ready=True with reason Retired,
// kstatus Current) and loads again when a split routes to it; Loaded is False.
func (s *RevisionStatus) MarkRetired(generation int64, message string) {
	s.Phase = RevisionRetired
	setCondition(&s.Conditions, generation, RevisionLoaded, metav1.ConditionFalse, ReasonRetired, message)
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionTrue, ReasonRetired, message)
	markSettled(&s.Conditions, generation)
}

// IsReady reports whether the Revision can serve activities.
func (s *RevisionStatus) IsReady() bool {
	return s.Phase == RevisionReady && meta.IsStatusConditionTrue(s.Conditions, ConditionReady)
}
