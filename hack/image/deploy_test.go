package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/packhost/packhost/internal/testenv"
)

// managerImages renders the kustomization in dir with kubectl and returns the images
// of the manager Deployment's containers.
func managerImages(t *testing.T, dir string) []string {
	t.Helper()
	kubectl := testenv.Kubectl()
	if _, err := os.Stat(kubectl); err != nil {
		t.Skipf("no kubectl (make envtest builds it): %v", err)
	}
	out, err := exec.Command(kubectl, "kustomize", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, out)
	}
	var images []string
	for _, doc := range strings.Split(string(out), "\n---\n") {
		var d appsv1.Deployment
		if err := yaml.Unmarshal([]byte(doc), &d); err != nil || d.Kind != "Deployment" {
			continue
		}
		for _, c := range d.Spec.Template.Spec.Containers {
			images = append(images, c.Image)
		}
	}
	if len(images) == 0 {
		t.Fatalf("kubectl kustomize %s rendered no Deployment with containers", dir)
	}
	return images
}

// config/default deploys the image `make image` builds by default: the Makefile's IMG.
func TestConfigDefaultNamesMakefileIMG(t *testing.T) {
	makefile, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^IMG \?= (\S+)$`).FindSubmatch(makefile)
	if m == nil {
		t.Fatal("no `IMG ?= ...` in the Makefile")
	}
	for _, img := range managerImages(t, filepath.Join(testenv.RepoRoot(), "config", "default")) {
		if img != string(m[1]) {
			t.Errorf("config/default deploys %q, the Makefile's IMG is %q", img, m[1])
		}
	}
}

// make deploy IMG=... deploys IMG however it is spelled.
func TestDeployOverlaySetsIMG(t *testing.T) {
	const d = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
	for _, tc := range []struct{ img, want string }{
		{"registry.example.com/packhost/manager:v0.1.0", ""},
		{"127.0.0.1:5000/packhost/manager:v1", ""},
		{"registry.example.com:5000/packhost/manager", "registry.example.com:5000/packhost/manager:latest"},
		{"registry.example.com/packhost/manager@" + d, ""},
		{"registry.example.com/packhost/manager:v1@" + d, ""},
	} {
		t.Run(tc.img, func(t *testing.T) {
			if tc.want == "" {
				tc.want = tc.img
			}
			dir := t.TempDir()
			script := exec.Command(filepath.Join(testenv.RepoRoot(), "hack", "kustomize-image.sh"), tc.img, dir)
			if out, err := script.CombinedOutput(); err != nil {
				t.Fatalf("kustomize-image.sh: %v\n%s", err, out)
			}
			for _, img := range managerImages(t, dir) {
				if img != tc.want {
					t.Errorf("deploys %q, want %q", img, tc.want)
				}
			}
		})
	}
}
