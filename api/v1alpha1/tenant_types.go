package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TenantSpec is who owns packs and traffic, and what their packs may do.
type TenantSpec struct {
	// env is the deployment environment label that scopes the tenant's sessions and
	// state (for example prod or staging). It must be a DNS label.
	// +optional
	// +kubebuilder:default=prod
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="env must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit"
	Env string `json:"env,omitempty"`

	// auth says how callers of the dispatcher prove they act for this tenant. Without it
	// the dispatcher refuses every activity for the tenant.
	// +optional
	Auth *TenantAuth `json:"auth,omitempty"`

	// secrets lists the Secrets, in the tenant's namespace, whose keys guest code may read
	// by name. It is an allowlist: a pack reads a secret only when this list and the
	// pack's manifest both name it.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=32
	Secrets []LocalObjectReference `json:"secrets,omitempty"`

	// policy lists the capabilities a pack of this tenant may be granted. A pack gets a
	// capability only when its manifest declares it and this policy allows it.
	// +optional
	// +kubebuilder:default={}
	Policy TenantPolicy `json:"policy,omitempty"`

	// limits bound what one revision of this tenant may use. A Revision may lower them,
	// never raise them.
	// +optional
	// +kubebuilder:default={}
	Limits TenantLimits `json:"limits,omitempty"`

	// revisionHistoryLimit is how many Revisions of this tenant that no TrafficSplit
	// routes to are kept; older ones are retired and deleted. Routed and draining
	// Revisions are never retired. Unset keeps every Revision.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	RevisionHistoryLimit *int32 `json:"revisionHistoryLimit,omitempty"`
}

// TenantAuth names where the tenant's bearer tokens are kept.
type TenantAuth struct {
	// secretRef names a Secret in the tenant's namespace. The value of each of its keys is
	// an accepted bearer token for the dispatcher; the key names the caller.
	// +required
	SecretRef LocalObjectReference `json:"secretRef"`

	// routingCallers names the callers (keys of the auth Secret) allowed to choose a
	// revision themselves, by tag or by the Packhost-Revision header. Everyone else is
	// routed by the split.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=253
	RoutingCallers []string `json:"routingCallers,omitempty"`
}

// TenantPolicy lists the capabilities a tenant's packs may be granted.
type TenantPolicy struct {
	// wasi says which WASI facilities a pack may use. A pack never gets a filesystem.
	// +optional
	// +kubebuilder:default={}
	WASI WASIPolicy `json:"wasi,omitempty"`

	// state says whether packs may read and write their revision's state namespace.
	// +optional
	// +kubebuilder:default={}
	State StatePolicy `json:"state,omitempty"`

	// secrets allows packs to read the Secrets listed in spec.secrets.
	// +optional
	Secrets bool `json:"secrets,omitempty"`
}

// WASIPolicy lists the WASI facilities a pack may use.
type WASIPolicy struct {
	// env lists the environment variable names a pack may see. Values come from the
	// Revision's config with the same key; a name not listed here is never visible.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=128
	// +kubebuilder:validation:items:Pattern=`^[A-Za-z_][A-Za-z0-9_]*$`
	Env []string `json:"env,omitempty"`

	// clocks allows the wall and monotonic clocks; without it a pack sees a fixed time.
	// +optional
	// +kubebuilder:default=true
	Clocks *bool `json:"clocks,omitempty"`

	// random allows the host's cryptographic random source; without it a pack sees a
	// deterministic sequence.
	// +optional
	// +kubebuilder:default=true
	Random *bool `json:"random,omitempty"`
}

// StatePolicy says what a pack may do with its revision's state namespace.
type StatePolicy struct {
	// read allows state reads.
	// +optional
	// +kubebuilder:default=true
	Read *bool `json:"read,omitempty"`

	// write allows state writes and deletes. It needs read.
	// +optional
	// +kubebuilder:default=true
	Write *bool `json:"write,omitempty"`
}

// TenantLimits bound what one revision of a tenant may use.
// +kubebuilder:validation:XValidation:rule="!has(self.activityTimeout) || (duration(self.activityTimeout) >= duration('10ms') && duration(self.activityTimeout) <= duration('5m'))",message="limits.activityTimeout must be a duration between 10ms and 5m, for example 10s"
type TenantLimits struct {
	// memoryPages is the most 64 KiB WebAssembly memory pages one instance may have
	// (1024 pages is 64 MiB). A pack declares the memory it needs to start (the SDK echo
	// pack 42 pages); a limit below it fails the Revision with MemoryLimitTooLow.
	// +optional
	// +kubebuilder:default=1024
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=16384
	MemoryPages int32 `json:"memoryPages,omitempty"`

	// activityTimeout is how long one activity may run before it is stopped and answered
	// with a timeout. Between 10ms and 5m.
	// +optional
	// +kubebuilder:default="10s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	ActivityTimeout *metav1.Duration `json:"activityTimeout,omitempty"`

	// maxConcurrentActivities is how many activities one revision runs at once on one
	// manager replica; more wait in a bounded queue, and past it are refused with 429.
	// +optional
	// +kubebuilder:default=16
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1024
	MaxConcurrentActivities int32 `json:"maxConcurrentActivities,omitempty"`

	// maxRequestBodyBytes is the largest activity the dispatcher accepts, in bytes.
	// +optional
	// +kubebuilder:default=1048576
	// +kubebuilder:validation:Minimum=1024
	// +kubebuilder:validation:Maximum=16777216
	MaxRequestBodyBytes int64 `json:"maxRequestBodyBytes,omitempty"`
}

// TenantStatus is what packhost observed of a tenant.
type TenantStatus struct {
	// observedGeneration is the generation last reconciled successfully.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions tell whether the tenant is usable (Ready) and why not.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// revisions is the number of Revisions that belong to the tenant.
	// +optional
	Revisions int32 `json:"revisions,omitempty"`

	// activeSplit names the TrafficSplit that routes the tenant's activities.
	// +optional
	ActiveSplit string `json:"activeSplit,omitempty"`
}

// Tenant owns packs and traffic: its Revisions run its packs, its TrafficSplit spreads its
// activities over them, and its policy and limits bound what they may do.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=phtenant,categories=packhost
// +kubebuilder:printcolumn:name="Env",type=string,JSONPath=`.spec.env`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Revisions",type=integer,JSONPath=`.status.revisions`
// +kubebuilder:printcolumn:name="Split",type=string,JSONPath=`.status.activeSplit`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Tenant struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the object's metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is what the tenant asks for.
	// +required
	Spec TenantSpec `json:"spec"`

	// status is what packhost observed.
	// +optional
	Status TenantStatus `json:"status,omitempty"`
}

// TenantList is a list of Tenants.
// +kubebuilder:object:root=true
type TenantList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the list's metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items are the Tenants.
	Items []Tenant `json:"items"`
}
