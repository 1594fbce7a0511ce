package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Stickiness says whether a session keeps landing on one revision.
// +kubebuilder:validation:Enum=session;none
type Stickiness string

const (
	// StickinessSession hashes the session key into the split, so a session keeps its
	// revision while the split is unchanged.
	StickinessSession Stickiness = "session"
	// StickinessNone picks a revision at random, by weight, for every activity.
	StickinessNone Stickiness = "none"
)

// TrafficSplitSpec spreads a tenant's activities over its Revisions.
type TrafficSplitSpec struct {
	// tenantRef names the Tenant, in the same namespace, whose activities this split routes.
	// +required
	TenantRef LocalObjectReference `json:"tenantRef"`

	// routes are the Revisions that take traffic and their share. Percents add up to 100;
	// a route at 0 takes no new sessions but can still be chosen by its tag.
	// +required
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:XValidation:rule="self.map(r, r.percent).sum() == 100",message="route percents must add up to exactly 100"
	// +kubebuilder:validation:XValidation:rule="self.all(r, self.exists_one(s, s.revisionName == r.revisionName))",message="each revision may appear in only one route: merge the duplicate routes"
	// +kubebuilder:validation:XValidation:rule="self.all(r, !has(r.tag) || self.exists_one(s, has(s.tag) && s.tag == r.tag))",message="route tags must be unique within a split"
	Routes []Route `json:"routes"`

	// stickiness is session (default: a session keeps its revision) or none (every
	// activity is placed by weight alone).
	// +optional
	// +kubebuilder:default=session
	Stickiness Stickiness `json:"stickiness,omitempty"`
}

// Route sends a share of a tenant's activities to one Revision.
type Route struct {
	// revisionName names a Revision of the same tenant, in the same namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	RevisionName string `json:"revisionName"`

	// percent of the tenant's new sessions sent to this Revision, 0 to 100.
	// +required
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	Percent int32 `json:"percent"`

	// tag lets a caller that may choose address this route by name (for example canary).
	// It must be a DNS-1035 label.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="tag must be a DNS-1035 label: lowercase letters, digits and '-', starting with a letter and ending with a letter or digit"
	Tag string `json:"tag,omitempty"`
}

// RouteStatus is one route of the routing table in use.
type RouteStatus struct {
	// revisionName is the Revision this route sends activities to.
	// +required
	RevisionName string `json:"revisionName"`

	// percent of new sessions sent to it.
	// +required
	Percent int32 `json:"percent"`

	// tag of the route, if any.
	// +optional
	Tag string `json:"tag,omitempty"`

	// dispatched counts the activities this route has served on the replica that writes
	// status (the leader), since it started; updated at a bounded rate, not per request.
	// +optional
	Dispatched int64 `json:"dispatched,omitempty"`
}

// TrafficSplitStatus is what packhost observed of a split.
type TrafficSplitStatus struct {
	// observedGeneration is the generation last reconciled successfully.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions tell whether the split's table is in use (Ready) and why not.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// routes is the routing table in use. It lags spec.routes while a named Revision is
	// not Ready: the last good table keeps serving.
	// +optional
	// +listType=atomic
	Routes []RouteStatus `json:"routes,omitempty"`

	// summary is the table in use in one line, for example "app-v1=90,app-v2=10".
	// +optional
	Summary string `json:"summary,omitempty"`
}

// TrafficSplit spreads one tenant's activities over its Revisions by weight, keeping each
// session on one Revision. A tenant has one split; a second is marked Conflict and ignored.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=phsplit,categories=packhost
// +kubebuilder:printcolumn:name="Tenant",type=string,JSONPath=`.spec.tenantRef.name`
// +kubebuilder:printcolumn:name="Routes",type=string,JSONPath=`.status.summary`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Stickiness",type=string,JSONPath=`.spec.stickiness`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type TrafficSplit struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the object's metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is how the tenant's activities are spread.
	// +required
	Spec TrafficSplitSpec `json:"spec"`

	// status is the table in use and how it came to be.
	// +optional
	Status TrafficSplitStatus `json:"status,omitempty"`
}

// TrafficSplitList is a list of TrafficSplits.
// +kubebuilder:object:root=true
type TrafficSplitList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the list's metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items are the TrafficSplits.
	Items []TrafficSplit `json:"items"`
}
