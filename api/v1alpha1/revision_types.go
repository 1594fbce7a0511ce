package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RevisionSpec is one immutable, digest-pinned version of what a tenant runs.
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="a Revision's spec is immutable: create a new Revision and move the TrafficSplit to it"
// +kubebuilder:validation:XValidation:rule="self.packs.size() <= 9",message="packs may hold the main pack and at most 8 overlay packs"
type RevisionSpec struct {
	// tenantRef names the Tenant, in the same namespace, that owns this Revision.
	// +required
	TenantRef LocalObjectReference `json:"tenantRef"`

	// packs are the WebAssembly packs this Revision runs: the first is the main pack, the
	// rest are overlays, probed in order after it. Pack names are unique.
	// +required
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:XValidation:rule="self.all(p, self.exists_one(q, q.name == p.name))",message="pack names must be unique within a Revision"
	Packs []Pack `json:"packs"`

	// config holds non-secret values handed to every pack of the Revision. Keys the
	// tenant's policy allowlists as WASI environment variables are also exposed as such.
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	Config map[string]string `json:"config,omitempty"`

	// state configures the Revision's own state namespace.
	// +optional
	// +kubebuilder:default={}
	State RevisionState `json:"state,omitempty"`

	// limits lower the tenant's limits for this Revision. A value above the tenant's
	// fails the Revision.
	// +optional
	Limits *RevisionLimits `json:"limits,omitempty"`

	// imagePullSecrets name Secrets of type kubernetes.io/dockerconfigjson, in the
	// Revision's namespace, used to pull image sources.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=8
	ImagePullSecrets []LocalObjectReference `json:"imagePullSecrets,omitempty"`
}

// Pack is one WebAssembly module of a Revision and where to get it. Exactly one source
// (configMapRef, url or image) is set.
// +kubebuilder:validation:XValidation:rule="[has(self.configMapRef), has(self.url), has(self.image)].filter(x, x).size() == 1",message="a pack needs exactly one source: configMapRef, url or image"
// +kubebuilder:validation:XValidation:rule="!has(self.url) || has(self.sha256)",message="a pack with a url source needs sha256, the 64 lowercase hex digits of the module's SHA-256, so the download can be verified"
type Pack struct {
	// name identifies the pack within the Revision. It must be a DNS label.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="pack name must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit"
	Name string `json:"name"`

	// configMapRef takes the module from a key of a ConfigMap's binaryData, in the
	// Revision's namespace. For small modules: a ConfigMap holds at most 1 MiB.
	// +optional
	ConfigMapRef *ConfigMapKeyReference `json:"configMapRef,omitempty"`

	// url fetches the module over http or https. sha256 is required with it.
	// +optional
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''",message="url must be an absolute http or https URL, for example https://example.com/packs/echo.wasm"
	URL string `json:"url,omitempty"`

	// image pulls the module from an OCI artifact whose layer has media type
	// application/vnd.wasm.content.layer.v1+wasm. A reference by digest
	// (registry/repo@sha256:...) is used as is; a tag is resolved to a digest once, shown
	// in status, and never resolved again for this Revision.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="!self.contains(' ') && !self.contains('://')",message="image must be an OCI reference such as registry.example.com/packs/echo:v1 or registry.example.com/packs/echo@sha256:<digest>, without a scheme"
	Image string `json:"image,omitempty"`

	// sha256 is the expected SHA-256 of the module bytes, as 64 lowercase hex digits.
	// Required for url sources; when set for other sources it is checked too.
	// +optional
	// +kubebuilder:validation:MaxLength=71
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-f0-9]{64}$')",message="sha256 must be exactly 64 lowercase hex characters (the output of sha256sum), without a sha256: prefix"
	SHA256 string `json:"sha256,omitempty"`
}

// ConfigMapKeyReference names one key of a ConfigMap in the same namespace.
type ConfigMapKeyReference struct {
	// name of the ConfigMap.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// key in the ConfigMap's binaryData that holds the module.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Key string `json:"key"`
}

// StateRetention says what happens to a Revision's state when the Revision is deleted.
// +kubebuilder:validation:Enum=Delete;Retain
type StateRetention string

const (
	// StateRetentionDelete deletes the state ConfigMaps with the Revision.
	StateRetentionDelete StateRetention = "Delete"
	// StateRetentionRetain keeps the state ConfigMaps and drops their owner reference.
	StateRetentionRetain StateRetention = "Retain"
)

// RevisionState configures a Revision's state namespace.
type RevisionState struct {
	// shards is the number of ConfigMaps the state namespace is spread over, by key hash.
	// Each holds well under the 1 MiB object limit (256 KiB of state); more shards hold
	// more state: at most 64, 16 MiB. An activity whose keys fall in several shards
	// commits atomically across them, at two API writes per shard it touches.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=64
	Shards int32 `json:"shards,omitempty"`

	// retention is Delete (the state goes with the Revision) or Retain (the state
	// ConfigMaps stay, without owner, when the Revision is deleted).
	// +optional
	// +kubebuilder:default=Delete
	Retention StateRetention `json:"retention,omitempty"`
}

// RevisionLimits lower a tenant's limits for one Revision; unset fields take the tenant's.
// +kubebuilder:validation:XValidation:rule="!has(self.activityTimeout) || (duration(self.activityTimeout) >= duration('10ms') && duration(self.activityTimeout) <= duration('5m'))",message="limits.activityTimeout must be a duration between 10ms and 5m, for example 10s"
type RevisionLimits struct {
	// memoryPages is the most 64 KiB memory pages one instance may have.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=16384
	MemoryPages *int32 `json:"memoryPages,omitempty"`

	// activityTimeout is how long one activity may run.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	ActivityTimeout *metav1.Duration `json:"activityTimeout,omitempty"`

	// maxConcurrentActivities is how many activities the Revision runs at once per replica.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1024
	MaxConcurrentActivities *int32 `json:"maxConcurrentActivities,omitempty"`

	// maxRequestBodyBytes is the largest activity accepted, in bytes.
	// +optional
	// +kubebuilder:validation:Minimum=1024
	// +kubebuilder:validation:Maximum=16777216
	MaxRequestBodyBytes *int64 `json:"maxRequestBodyBytes,omitempty"`
}

// RevisionPhase is where a Revision is in its life.
// +kubebuilder:validation:Enum=Pending;Loading;Ready;Draining;Retired;Failed
type RevisionPhase string

const (
	// RevisionPending: accepted, nothing fetched yet.
	RevisionPending RevisionPhase = "Pending"
	// RevisionLoading: packs are being fetched, verified and compiled.
	RevisionLoading RevisionPhase = "Loading"
	// RevisionReady: loaded and able to serve activities.
	RevisionReady RevisionPhase = "Ready"
	// RevisionDraining: no split routes to it; pinned sessions finish or expire.
	RevisionDraining RevisionPhase = "Draining"
	// RevisionRetired: drained and unloaded.
	RevisionRetired RevisionPhase = "Retired"
	// RevisionFailed: cannot be loaded; the Ready condition says why.
	RevisionFailed RevisionPhase = "Failed"
)

// PackStatus is what was resolved and fetched for one pack.
type PackStatus struct {
	// name of the pack in spec.packs.
	// +required
	Name string `json:"name"`

	// digest is the SHA-256 of the module bytes, as sha256:<hex>.
	// +optional
	Digest string `json:"digest,omitempty"`

	// size of the module in bytes.
	// +optional
	Size int64 `json:"size,omitempty"`

	// resolvedImage is the image source pinned to a manifest digest
	// (registry/repo@sha256:...); a tag is resolved once and never again.
	// +optional
	ResolvedImage string `json:"resolvedImage,omitempty"`

	// packID and version are read from the pack's manifest.
	// +optional
	PackID string `json:"packID,omitempty"`

	// version of the pack, from its manifest.
	// +optional
	Version string `json:"version,omitempty"`
}

// RevisionStatus is what packhost observed of a Revision.
type RevisionStatus struct {
	// observedGeneration is the generation the conditions describe: the one the
	// controller last acted on.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// phase summarises the conditions: Pending, Loading, Ready, Draining, Retired or Failed.
	// +optional
	Phase RevisionPhase `json:"phase,omitempty"`

	// conditions are PacksFetched, Loaded, StateReady and Ready, and the kstatus pair
	// Reconciling (loading) and Stalled (failed: the reason says what to fix).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// packs lists, in spec order, each pack's resolved digest and size.
	// +optional
	// +listType=atomic
	Packs []PackStatus `json:"packs,omitempty"`

	// stateConfigMaps names the ConfigMaps that hold the Revision's state.
	// +optional
	// +listType=atomic
	StateConfigMaps []string `json:"stateConfigMaps,omitempty"`

	// openSessions is the number of sessions with a live wait on this Revision.
	// +optional
	OpenSessions int32 `json:"openSessions,omitempty"`

	// lastRoutedTime is when packhost last saw a TrafficSplit route to this Revision
	// (refreshed about once a minute while one does). A Revision that has it drains
	// and retires when no split routes to it any more, and retention keeps it for some
	// minutes after this time. Unset: never routed.
	// +optional
	LastRoutedTime *metav1.Time `json:"lastRoutedTime,omitempty"`
}

// Revision is one immutable, digest-pinned version of what a tenant runs: a main pack
// plus overlays, their config, and a state namespace of its own.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=phrev,categories=packhost
// +kubebuilder:printcolumn:name="Tenant",type=string,JSONPath=`.spec.tenantRef.name`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Digest",type=string,JSONPath=`.status.packs[0].digest`
// +kubebuilder:printcolumn:name="Sessions",type=integer,JSONPath=`.status.openSessions`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Revision struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the object's metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is what the Revision runs; immutable after create.
	// +required
	Spec RevisionSpec `json:"spec"`

	// status is what packhost observed.
	// +optional
	Status RevisionStatus `json:"status,omitempty"`
}

// RevisionList is a list of Revisions.
// +kubebuilder:object:root=true
type RevisionList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the list's metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items are the Revisions.
	Items []Revision `json:"items"`
}
