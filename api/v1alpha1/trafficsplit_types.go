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

	// strategy says how a change of routes that brings in a new Revision is rolled out.
	// Without it the new routes take effect as soon as their Revisions are Ready.
	// +optional
	Strategy *TrafficSplitStrategy `json:"strategy,omitempty"`
}

// TrafficSplitStrategy says how a split moves from the table in use to spec.routes.
type TrafficSplitStrategy struct {
	// canary moves traffic to the incoming Revisions in steps, each judged by analysis
	// of the dispatcher's own counts, and rolls back when the analysis fails.
	// +optional
	Canary *CanaryStrategy `json:"canary,omitempty"`
}

// CanaryStrategy walks the incoming Revisions (those spec.routes gives a percent and the
// stable table gives none) up through steps; spec.routes is where it ends.
type CanaryStrategy struct {
	// steps are the incoming Revisions' shares in order, strictly ascending. A step's
	// weight above the incoming Revisions' share in spec.routes is that share.
	// +required
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:XValidation:rule="self.map(s, s.weight).isSorted() && self.all(s, self.exists_one(o, o.weight == s.weight))",message="step weights must be strictly ascending, for example 10, 50, 100"
	Steps []CanaryStep `json:"steps"`

	// analysis judges each interval of the rollout from the counts every manager
	// replica's dispatcher publishes; failing it failureLimit times rolls back to the
	// stable table. Without it, steps advance on their pauses alone.
	// +optional
	Analysis *CanaryAnalysis `json:"analysis,omitempty"`
}

// CanaryStep is one share of traffic for the incoming Revisions and how long it holds.
// +kubebuilder:validation:XValidation:rule="!has(self.pause) || (duration(self.pause) >= duration('0s') && duration(self.pause) <= duration('168h'))",message="pause must be a duration between 0s and 168h, or omitted to wait for a promote"
type CanaryStep struct {
	// weight is the percent of new sessions the incoming Revisions take during the step,
	// spread over them as spec.routes spreads theirs; the stable routes share the rest in
	// their proportions.
	// +required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	Weight int32 `json:"weight"`

	// pause is how long the step holds before the next one (and, with analysis, until an
	// interval of the step has passed). Omitted, the step holds until a promote (the
	// packhost.io/promote annotation set to a new value).
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	Pause *metav1.Duration `json:"pause,omitempty"`
}

// CanaryAnalysis bounds what the incoming Revisions may do in one interval.
// +kubebuilder:validation:XValidation:rule="has(self.maxErrorPercent) || has(self.maxP99)",message="analysis needs maxErrorPercent or maxP99 (or both): otherwise no interval can fail"
// +kubebuilder:validation:XValidation:rule="!has(self.interval) || (duration(self.interval) >= duration('5s') && duration(self.interval) <= duration('1h'))",message="analysis.interval must be a duration between 5s and 1h, for example 1m"
type CanaryAnalysis struct {
	// interval is how long one analysis interval lasts. Intervals are aligned to the
	// clock (multiples of interval since the Unix epoch), so every replica counts the
	// same ones. Between 5s and 1h.
	// +optional
	// +kubebuilder:default="1m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	Interval *metav1.Duration `json:"interval,omitempty"`

	// minActivities is how many activities the incoming Revisions must serve in an
	// interval, summed over replicas, for it to be judged; with fewer it is
	// inconclusive: it neither passes nor fails, and the step waits for one that passes.
	// An interval without any is inconclusive whatever the minimum.
	// +optional
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000
	MinActivities int32 `json:"minActivities,omitempty"`

	// maxErrorPercent is the largest share of the incoming Revisions' activities in an
	// interval that may be errors (answered 5xx, which includes guest_error and timeout, but not 503: state_unavailable and a revision not loaded are the platform's)
	// for it to pass.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	MaxErrorPercent *int32 `json:"maxErrorPercent,omitempty"`

	// maxP99 is the largest 99th-percentile latency of the incoming Revisions'
	// activities in an interval (estimated from a fixed histogram) for it to pass.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	MaxP99 *metav1.Duration `json:"maxP99,omitempty"`

	// failureLimit is how many failed intervals of one rollout abort it: the table goes
	// back to the stable routes at once.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	FailureLimit int32 `json:"failureLimit,omitempty"`
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

// RouteStatus is one route of a routing table: the one in use, or one a rollout walks
// from or to (whose dispatched count is left out).
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

	// rollout is the canary rollout towards spec.routes, when spec.strategy.canary is set
	// and a change of routes brought in a new Revision.
	// +optional
	Rollout *RolloutStatus `json:"rollout,omitempty"`
}

// RolloutPhase is where a canary rollout is.
// +kubebuilder:validation:Enum=Progressing;Paused;Succeeded;Aborted
type RolloutPhase string

const (
	// RolloutProgressing: a step holds for its pause (and a passing interval), then
	// the next one starts.
	RolloutProgressing RolloutPhase = "Progressing"
	// RolloutPaused: the step has no pause; it holds until a promote.
	RolloutPaused RolloutPhase = "Paused"
	// RolloutSucceeded: every step passed; spec.routes is the table in use and stable.
	RolloutSucceeded RolloutPhase = "Succeeded"
	// RolloutAborted: analysis failed or an abort was asked for; the stable table is in
	// use until spec.routes changes again or a retry is asked for.
	RolloutAborted RolloutPhase = "Aborted"
)

// RolloutStatus is a canary rollout's progress, its last analysis and the actions it
// has taken.
type RolloutStatus struct {
	// phase is Progressing, Paused, Succeeded or Aborted.
	// +optional
	Phase RolloutPhase `json:"phase,omitempty"`

	// step is the index in spec.strategy.canary.steps of the step in effect.
	// +optional
	Step int32 `json:"step"`

	// stepStartTime is when the step in effect started.
	// +optional
	StepStartTime *metav1.Time `json:"stepStartTime,omitempty"`

	// stableRoutes is the table before the rollout, which an abort goes back to.
	// +optional
	// +listType=atomic
	StableRoutes []RouteStatus `json:"stableRoutes,omitempty"`

	// targetRoutes is the spec.routes this rollout walks to.
	// +optional
	// +listType=atomic
	TargetRoutes []RouteStatus `json:"targetRoutes,omitempty"`

	// canaryRevisions are the incoming Revisions: in targetRoutes with a percent, in
	// stableRoutes without one.
	// +optional
	// +listType=atomic
	CanaryRevisions []string `json:"canaryRevisions,omitempty"`

	// analysis is the last judged interval of the rollout.
	// +optional
	Analysis *AnalysisStatus `json:"analysis,omitempty"`

	// failedIntervals counts the intervals of this rollout that failed analysis.
	// +optional
	FailedIntervals int32 `json:"failedIntervals,omitempty"`

	// passedIntervals counts the intervals of the step in effect that passed analysis.
	// +optional
	PassedIntervals int32 `json:"passedIntervals,omitempty"`

	// message says what the rollout waits for or why it stopped.
	// +optional
	Message string `json:"message,omitempty"`

	// promote is the last value of the packhost.io/promote annotation acted upon.
	// +optional
	Promote string `json:"promote,omitempty"`

	// abort is the last value of the packhost.io/abort annotation acted upon.
	// +optional
	Abort string `json:"abort,omitempty"`

	// retry is the last value of the packhost.io/retry annotation acted upon.
	// +optional
	Retry string `json:"retry,omitempty"`
}

// AnalysisVerdict is the outcome of one analysis interval.
// +kubebuilder:validation:Enum=Passed;Failed;Inconclusive
type AnalysisVerdict string

const (
	// AnalysisPassed: enough activities, within every bound.
	AnalysisPassed AnalysisVerdict = "Passed"
	// AnalysisFailed: enough activities, and a bound passed.
	AnalysisFailed AnalysisVerdict = "Failed"
	// AnalysisInconclusive: fewer activities than minActivities.
	AnalysisInconclusive AnalysisVerdict = "Inconclusive"
)

// AnalysisStatus is one judged interval: the dispatcher's counts summed over the
// replicas that published them.
type AnalysisStatus struct {
	// intervalStart is when the interval began.
	// +required
	IntervalStart metav1.Time `json:"intervalStart"`

	// intervalEnd is when the interval ended.
	// +required
	IntervalEnd metav1.Time `json:"intervalEnd"`

	// verdict is Passed, Failed or Inconclusive.
	// +required
	Verdict AnalysisVerdict `json:"verdict"`

	// message says why the interval failed or was inconclusive, with the figures.
	// +optional
	Message string `json:"message,omitempty"`

	// revisions are the figures of each Revision of the table in the interval.
	// +optional
	// +listType=atomic
	Revisions []RevisionFigures `json:"revisions,omitempty"`

	// replicas are the manager replicas whose counts were summed.
	// +optional
	// +listType=atomic
	Replicas []string `json:"replicas,omitempty"`

	// missingReplicas are replicas that published before but not for this interval:
	// their counts are not in the sum.
	// +optional
	// +listType=atomic
	MissingReplicas []string `json:"missingReplicas,omitempty"`
}

// RevisionFigures are one Revision's activities in an analysis interval.
type RevisionFigures struct {
	// revisionName is the Revision.
	// +required
	RevisionName string `json:"revisionName"`

	// canary is true for an incoming Revision, whose figures are judged.
	// +optional
	Canary bool `json:"canary,omitempty"`

	// activities it served, summed over replicas.
	// +optional
	Activities int64 `json:"activities"`

	// errors among them: answers 5xx but 503 (guest_error and timeout included).
	// +optional
	Errors int64 `json:"errors"`

	// errorPercent is errors per activity in percent, two decimals ("1.25").
	// +optional
	ErrorPercent string `json:"errorPercent,omitempty"`

	// p99 is the 99th-percentile latency, interpolated in the dispatcher's histogram.
	// +optional
	P99 *metav1.Duration `json:"p99,omitempty"`
}

// TrafficSplit spreads one tenant's activities over its Revisions by weight, keeping each
// session on one Revision. A tenant has one split; a second is marked Conflict and ignored.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=phsplit,categories=packhost
// +kubebuilder:printcolumn:name="Tenant",type=string,JSONPath=`.spec.tenantRef.name`
// +kubebuilder:printcolumn:name="Routes",type=string,JSONPath=`.status.summary`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Rollout",type=string,JSONPath=`.status.rollout.phase`
// +kubebuilder:printcolumn:name="Step",type=integer,JSONPath=`.status.rollout.step`,priority=1
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
