package controllers_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/internal/testenv"
)

// The manager's generated ClusterRole allows Secrets `get` only, and that is enough: a
// replica running as a user bound to exactly that role serves a tenant (tokens from an
// opted-in Secret) and loads a revision with its state.
func TestRBACIsWhatTheCodeCalls(t *testing.T) {
	testenv.Require(t, env)
	raw, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "config", "rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.ClusterRole{}
	if err := yaml.Unmarshal(raw, role); err != nil {
		t.Fatal(err)
	}
	for _, r := range role.Rules {
		if slices.Contains(r.Resources, "secrets") && !slices.Equal(r.Verbs, []string{"get"}) {
			t.Errorf("the manager may %v Secrets; it only ever gets them", r.Verbs)
		}
	}
	role.ObjectMeta = metav1.ObjectMeta{Name: "packhost-rbac-test"}
	user, err := env.AddUser(envtest.User{Name: "packhost-rbac-test"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	create(t, role, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "packhost-rbac-test"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: "rbac.authorization.k8s.io", Name: "packhost-rbac-test"}}})
	startReplica(t, true, func(c *replicaConfig) { c.restConfig = user.Config() })
	ns := env.Namespace(t, "rbac")
	acme(t, ns, revision(ns, "r", "acme", "ok.wasm"))
	waitPhase(t, ns, "r", v1.RevisionReady, "")
	waitTenantReason(t, ns, "acme", v1.ReasonTenantReady)
}
