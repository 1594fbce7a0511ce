package v1alpha1

import (
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Reasons a Tenant reports on its Ready condition.
const (
	ReasonAuthSecretMissing = "AuthSecretMissing"
	ReasonAuthSecretEmpty   = "AuthSecretEmpty"
	ReasonSecretMissing     = "SecretMissing"
	ReasonRevisionsRemain   = "RevisionsRemain"
	ReasonTenantReady       = "TenantReady"
	// ReasonSecretNotOptedIn: a Secret the Tenant names (auth, allowlist) or a
	// Revision names (image pull) does not list the tenant in its AnnotationTenants.
	// Revisions report it too.
	ReasonSecretNotOptedIn = "SecretNotOptedIn"
	// ReasonAuthSecretUnreadable: the auth Secret could not be read just now; the
	// tokens last read from it are still accepted.
	ReasonAuthSecretUnreadable = "AuthSecretUnreadable"
)

// AnnotationTenants on a Secret opts it in to serving Tenants of its namespace: a
// comma-separated list of tenant names. A Secret serves a Tenant (as its auth tokens,
// in its spec.secrets allowlist, or as a Revision's image pull secret) only when the
// list names that tenant, so whoever may create Tenants or Revisions but not read
// Secrets cannot have packhost read one for them.
const AnnotationTenants = "packhost.io/tenants"

// SecretServesTenant reports whether a Secret's annotations opt it in for tenant.
func SecretServesTenant(annotations map[string]string, tenant string) bool {
	for _, name := range strings.Split(annotations[AnnotationTenants], ",") {
		if strings.TrimSpace(name) == tenant && tenant != "" {
			return true
		}
	}
	return false
}

// MarkReady sets the Tenant's Ready condition to True.
func (s *TenantStatus) MarkReady(generation int64) {
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionTrue, ReasonTenantReady, "")
	markSettled(&s.Conditions, generation)
}

// MarkNotReady sets the Tenant's Ready condition to False with a reason and a message
// that says what to fix, and Stalled to True (kstatus Failed): a missing, empty or
// not opted-in Secret needs someone's change.
func (s *TenantStatus) MarkNotReady(generation int64, reason, message string) {
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionFalse, reason, message)
	markStalled(&s.Conditions, generation, reason, message)
}

// MarkWaiting sets Ready to False for a reason that passes by itself or by the
// controller's own work (a Secret unreadable just now, deletion waiting for
// Revisions): Reconciling=True, kstatus InProgress.
func (s *TenantStatus) MarkWaiting(generation int64, reason, message string) {
	setCondition(&s.Conditions, generation, ConditionReady, metav1.ConditionFalse, reason, message)
	markProgress(&s.Conditions, generation, reason, message)
}
