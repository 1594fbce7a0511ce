package controllers_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
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
	startReplica(t, true, func(c *replicaConfig) { c.restConfig = managerRoleConfig(t) })
	ns := env.Namespace(t, "rbac")
	acme(t, ns, revision(ns, "r", "acme", "ok.wasm"))
	waitPhase(t, ns, "r", v1.RevisionReady, "")
	waitTenantReason(t, ns, "acme", v1.ReasonTenantReady)
}

var managerRole struct {
	once   sync.Once
	config *rest.Config
	err    error
}

// managerRoleConfig is a user bound to exactly the manager's generated ClusterRole
// (config/rbac/role.yaml), made once per test process.
func managerRoleConfig(t *testing.T) *rest.Config {
	t.Helper()
	managerRole.once.Do(func() {
		raw, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "config", "rbac", "role.yaml"))
		if err != nil {
			managerRole.err = err
			return
		}
		role := &rbacv1.ClusterRole{}
		if managerRole.err = yaml.Unmarshal(raw, role); managerRole.err != nil {
			return
		}
		for _, r := range role.Rules {
			if slices.Contains(r.Resources, "secrets") && !slices.Equal(r.Verbs, []string{"get"}) {
				managerRole.err = fmt.Errorf("the manager may %v Secrets; it only ever gets them", r.Verbs)
				return
			}
		}
		role.ObjectMeta = metav1.ObjectMeta{Name: "packhost-rbac-test"}
		user, err := env.AddUser(envtest.User{Name: "packhost-rbac-test"}, nil)
		if err != nil {
			managerRole.err = err
			return
		}
		binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "packhost-rbac-test"},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: "rbac.authorization.k8s.io", Name: "packhost-rbac-test"}}}
		for _, o := range []client.Object{role, binding} {
			if managerRole.err = env.Client.Create(ctx, o); managerRole.err != nil {
				return
			}
		}
		managerRole.config = user.Config()
	})
	if managerRole.err != nil {
		t.Fatal(managerRole.err)
	}
	return managerRole.config
}
