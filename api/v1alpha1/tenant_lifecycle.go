package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Reasons a Tenant reports on its Ready condition.
const (
	ReasonAuthSecretMissing = "AuthSecretMissing"
	ReasonAuthSecretEmpty   = "AuthSecretEmpty"
	ReasonSecretMissing     = "SecretMissing"
	ReasonRevisionsRemain   = "RevisionsRemain"
	ReasonTenantReady       = "TenantReady"
)

// MarkReady sets the Tenant's Ready condition to True.
func (s *TenantStatus) MarkReady(generation int64) {
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionTrue, ReasonTenantReady, "")
}

// MarkNotReady sets the Tenant's Ready condition to False with a reason and a message
// that says what to fix.
func (s *TenantStatus) MarkNotReady(generation int64, reason, message string) {
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionFalse, reason, message)
}
