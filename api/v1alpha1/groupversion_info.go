// Package v1alpha1 holds the packhost.io/v1alpha1 API: Tenant, Revision and TrafficSplit.
//
// The package imports apimachinery only, so that any client can use the types without
// pulling in packhost's controllers or runtime.
// +kubebuilder:object:generate=true
// +groupName=packhost.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of every packhost kind.
	GroupVersion = schema.GroupVersion{Group: "packhost.io", Version: "v1alpha1"}

	// SchemeBuilder registers the packhost kinds with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the packhost kinds to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&Tenant{}, &TenantList{},
		&Revision{}, &RevisionList{},
		&TrafficSplit{}, &TrafficSplitList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
