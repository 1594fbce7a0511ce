// Package controllers reconciles Tenants, Revisions and TrafficSplits into loaded revision
// runtimes, state namespaces and the dispatcher's routing table.
//
// # Canary rollouts
//
// A split with spec.strategy.canary does not jump to new routes that bring in a revision
// the table in use gives no weight: the leader walks the steps (decideRollout, a pure
// function with table tests) and writes each step's table to status.routes, and every
// replica's dispatcher routes by status.routes, so all replicas serve one table and the
// leader judges what was served. Without a strategy every replica serves spec.routes as
// soon as its revisions are loaded, as before.
//
// Analysis needs no metrics server: each replica's dispatcher counts the tenant's
// activities per revision (activities, 5xx errors but 503, a fixed latency histogram) in intervals
// aligned to the clock, and CountsPublisher writes its last two closed intervals to one
// ConfigMap per split per replica (counts.go) once per interval. The leader lists them
// once per interval, a grace after the interval closes (analysisGrace), trusts only those
// the split controls, and sums them: a replica that did not publish the interval is not
// counted and status names it (so replicas' clocks must agree to well within the grace,
// which NTP gives). What it costs: per replica, one ConfigMap write per split
// under rollout per interval (a few hundred bytes per revision); for the leader, one
// uncached List of the namespace's counts ConfigMaps per interval; on the dispatcher's hot
// path, per activity, 2 ns while no rollout with an analysis runs anywhere (a strategy
// kept in the spec between rollouts costs nothing), 74 ns while another tenant's runs
// (the tenant lookup and a clock read), 103 ns while its own does
// (go test ./dispatcher -run '^$' -bench Observe, 2 shared cores).
//
// A step ends when its pause has passed and, with analysis, one interval of the step has
// passed; an interval is judged only when it began within the step. failureLimit failed
// intervals roll back to the stable table at once (Stalled, Degraded, a Warning event),
// and the rollout waits for new routes or a retry. Promote, abort and retry are
// annotations that act once per new value; status.rollout records the last value acted on.
//
// The RBAC markers below are the whole of what the manager may do in the cluster;
// `make manifests` turns them into config/rbac/role.yaml.
package controllers

// +kubebuilder:rbac:groups=packhost.io,resources=tenants;revisions;trafficsplits,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=packhost.io,resources=tenants/status;revisions/status;trafficsplits/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=packhost.io,resources=tenants/finalizers;revisions/finalizers;trafficsplits/finalizers,verbs=update
// +kubebuilder:rbac:groups=packhost.io,resources=revisions,verbs=delete
// ConfigMaps: get reads ConfigMap pack sources and state shards (uncached); list and
// watch feed the state informer (label-selected) and let retention find a Revision's
// shards; create, update, patch and delete keep the state shards. Secrets: get only,
// always through the uncached API reader (a cached Get would list and watch every
// Secret), and only Secrets that opt in serve a tenant.
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
