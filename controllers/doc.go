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
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
