// Package testenv starts the real kube-apiserver and etcd that packhost's tests run
// against, with the packhost CRDs installed.
//
// The binaries come from hack/setup-envtest.sh (make envtest), cached under
// bin/k8s/<version>. KUBEBUILDER_ASSETS, when set, names another directory.
package testenv

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	packhostv1alpha1 "github.com/packhost/packhost/api/v1alpha1"
)

// K8sVersion is the Kubernetes release whose binaries the tests run by default.
const K8sVersion = "1.37.2"

// ErrNoBinaries is returned when the control-plane binaries have not been built.
var ErrNoBinaries = errors.New("kube-apiserver and etcd not found: run `make envtest` (hack/setup-envtest.sh) to build them")

// Env is a running control plane with the packhost CRDs installed.
type Env struct {
	*envtest.Environment
	// Config reaches the API server as a cluster admin.
	Config *rest.Config
	// Client is a direct (uncached) client with the packhost and core kinds.
	Client client.Client
	// Scheme has the packhost and client-go kinds.
	Scheme *runtime.Scheme
}

// RepoRoot is the root of the packhost module.
func RepoRoot() string {
	_, file, _, _ := goruntime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// AssetsDir is where the control-plane binaries are: KUBEBUILDER_ASSETS, or the
// directory hack/setup-envtest.sh builds them into.
func AssetsDir() string {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir
	}
	return filepath.Join(RepoRoot(), "bin", "k8s", K8sVersion)
}

// Scheme returns a scheme with the client-go and packhost kinds.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(packhostv1alpha1.AddToScheme(s))
	return s
}

// Start runs kube-apiserver and etcd and installs the CRDs from config/crd/bases.
// Stop the returned Env when done.
func Start() (*Env, error) {
	assets := AssetsDir()
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(assets, bin)); err != nil {
			return nil, fmt.Errorf("%w (looked in %s)", ErrNoBinaries, assets)
		}
	}
	s := Scheme()
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(RepoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		Scheme:                s,
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver and etcd: %w", err)
	}
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		_ = env.Stop()
		return nil, fmt.Errorf("create client: %w", err)
	}
	return &Env{Environment: env, Config: cfg, Client: c, Scheme: s}, nil
}

// KubeconfigFile writes a kubeconfig for a cluster admin of this control plane into dir
// and returns its path, for running kubectl against it.
func (e *Env) KubeconfigFile(dir string) (string, error) {
	user, err := e.AddUser(envtest.User{Name: "packhost-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return "", fmt.Errorf("add admin user: %w", err)
	}
	data, err := user.KubeConfig()
	if err != nil {
		return "", fmt.Errorf("render kubeconfig: %w", err)
	}
	path := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return "", fmt.Errorf("write kubeconfig: %w", err)
	}
	return path, nil
}

// Kubectl is the kubectl built next to kube-apiserver.
func Kubectl() string { return filepath.Join(AssetsDir(), "kubectl") }

// Run is a TestMain body: it starts a control plane into *env, runs the tests and stops
// it. Under -short no control plane starts, *env stays nil and Require skips. When the
// binaries are missing the run fails: `make test` builds them first.
func Run(m *testing.M, env **Env, setup ...func(*Env) error) int {
	flag.Parse()
	if testing.Short() {
		return m.Run()
	}
	e, err := Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	*env = e
	for _, s := range setup {
		if err := s(e); err != nil {
			fmt.Fprintln(os.Stderr, "testenv: setup:", err)
			_ = e.Stop()
			return 1
		}
	}
	code := m.Run()
	if err := e.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "testenv: stop:", err)
	}
	return code
}

// Require skips t when no control plane runs (go test -short).
func Require(t testing.TB, env *Env) {
	t.Helper()
	if env == nil {
		t.Skip("needs kube-apiserver and etcd; skipped under -short")
	}
}

// Namespace creates a namespace with a name generated from prefix and returns its name.
func (e *Env) Namespace(t testing.TB, prefix string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}
	if err := e.Client.Create(context.Background(), ns); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	return ns.Name
}
