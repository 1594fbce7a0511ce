// Package controllers reconciles Tenants, Revisions and TrafficSplits into loaded revision
// runtimes, state namespaces and the dispatcher's routing table.
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
