package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// LocalObjectReference names an object in the same namespace as the referrer.
type LocalObjectReference struct {
	// name of the referenced object.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// ConditionReady is the condition every packhost kind reports: True when the object is
// doing what its spec asks for.
const ConditionReady = "Ready"

// kstatus conditions (sigs.k8s.io/cli-utils/pkg/kstatus, which Flux, kpt and Argo CD's
// generic health checks follow). Every packhost kind reports both, True or False, so a
// GitOps tool tells "still working" from "stuck until someone acts":
const (
	// ConditionReconciling is True while the controller works towards the spec (a
	// Revision loading, a split waiting for a loading Revision): kstatus InProgress.
	ConditionReconciling = "Reconciling"
	// ConditionStalled is True when the object cannot reach what its spec asks for
	// without a change by someone (a Revision that failed, a split routing to one):
	// kstatus Failed. The reason says what to fix.
	ConditionStalled = "Stalled"
)

// setCondition records a condition with the generation it describes. The transition time
// only moves when the status changes, as meta.SetStatusCondition does.
func setCondition(conds *[]metav1.Condition, generation int64, condType string, status metav1.ConditionStatus, reason, message string) {
	meta.SetStatusCondition(conds, metav1.Condition{
		Type:               condType,
		Status:             status,
		ObservedGeneration: generation,
		Reason:             reason,
		Message:            message,
	})
}

// markProgress sets Reconciling to True and Stalled to False: the controller is working.
func markProgress(conds *[]metav1.Condition, generation int64, reason, message string) {
	setCondition(conds, generation, ConditionReconciling, metav1.ConditionTrue, reason, message)
	setCondition(conds, generation, ConditionStalled, metav1.ConditionFalse, reason, "")
}

// markStalled sets Stalled to True and Reconciling to False: nothing more happens until
// someone changes what reason names.
func markStalled(conds *[]metav1.Condition, generation int64, reason, message string) {
	setCondition(conds, generation, ConditionStalled, metav1.ConditionTrue, reason, message)
	setCondition(conds, generation, ConditionReconciling, metav1.ConditionFalse, reason, "")
}

// markSettled sets Reconciling and Stalled to False: the object is what its spec asks.
func markSettled(conds *[]metav1.Condition, generation int64) {
	setCondition(conds, generation, ConditionReconciling, metav1.ConditionFalse, "Settled", "")
	setCondition(conds, generation, ConditionStalled, metav1.ConditionFalse, "Settled", "")
}
