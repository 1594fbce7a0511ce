package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/packhost/packhost/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Run(m, &env)) }

var (
	amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}
	arm64 = v1.Platform{OS: "linux", Architecture: "arm64"}
)

func testOptions(platforms ...v1.Platform) options {
	return options{
		Image:     "packhost/manager:test",
		Platforms: platforms,
		Version:   "v0.0.0-test",
		Revision:  "0123456789abcdef0123456789abcdef01234567",
		Source:    "https://github.com/packhost/packhost",
		Created:   time.Unix(1700000000, 0).UTC(),
	}
}

func hostCerts(t *testing.T) []byte {
	t.Helper()
	certs, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		t.Skipf("no CA bundle on this machine: %v", err)
	}
	return certs
}

// managerBinary is the manager built for this machine's architecture, once per test
// process (a build takes a minute or more on a busy machine).
var managerBinary = sync.OnceValues(func() ([]byte, error) {
	dir, err := os.MkdirTemp("", "packhost-image-test-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "manager")
	if err := BuildManager(context.Background(), testenv.RepoRoot(), goruntime.GOARCH, out); err != nil {
		return nil, err
	}
	return os.ReadFile(out)
})

// fakeELF is an empty static Go program for linux/arch, standing in for the manager
// where the image's layout, not the manager, is under test.
func fakeELF(t *testing.T, arch string) []byte {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\nfunc main() {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module fake\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", "fake", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build a stand-in binary: %v\n%s", err, b)
	}
	b, err := os.ReadFile(filepath.Join(dir, "fake"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// files reads an image's flattened filesystem: path → header and content.
func files(t *testing.T, img v1.Image) (map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	heads, data := map[string]*tar.Header{}, map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n := strings.TrimSuffix(h.Name, "/")
		heads[n] = h
		if h.Typeflag == tar.TypeReg {
			if data[n], err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
	}
	return heads, data
}

// checkConfig checks what a user relies on in an image's config: it runs /manager as
// 65532, for the platform, labelled with the version, revision and source.
func checkConfig(t *testing.T, img v1.Image, o options, p v1.Platform) {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if c.User != "65532:65532" || !slices.Equal(c.Entrypoint, []string{"/manager"}) || len(c.Cmd) != 0 {
		t.Errorf("config user %q, entrypoint %q, cmd %q", c.User, c.Entrypoint, c.Cmd)
	}
	if cf.OS != p.OS || cf.Architecture != p.Architecture {
		t.Errorf("config platform %s/%s, want %s", cf.OS, cf.Architecture, p)
	}
	for k, want := range map[string]string{
		"org.opencontainers.image.version":  o.Version,
		"org.opencontainers.image.revision": o.Revision,
		"org.opencontainers.image.source":   o.Source,
		"org.opencontainers.image.created":  "2023-11-14T22:13:20Z",
	} {
		if got := c.Labels[k]; got != want {
			t.Errorf("label %s = %q, want %q", k, got, want)
		}
	}
	if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s", mt)
	}
}

// The index holds one image per platform, each with the binary of its architecture,
// the CA certificates, a nonroot user and no shell; the same inputs give the same
// digest.
func TestAssembleMultiArch(t *testing.T) {
	certs := hostCerts(t)
	o := testOptions(amd64, arm64)
	bins := map[string][]byte{amd64.String(): fakeELF(t, "amd64"), arm64.String(): fakeELF(t, "arm64")}
	idx, err := Assemble(o, bins, certs)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if im.MediaType != types.OCIImageIndex || len(im.Manifests) != 2 || im.Annotations["org.opencontainers.image.version"] != o.Version {
		t.Fatalf("index %s with %d manifests, annotations %v", im.MediaType, len(im.Manifests), im.Annotations)
	}
	for i, p := range []v1.Platform{amd64, arm64} {
		d := im.Manifests[i]
		if d.Platform == nil || d.Platform.String() != p.String() {
			t.Fatalf("manifest %d is for %v, want %s", i, d.Platform, p)
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		checkConfig(t, img, o, p)
		heads, data := files(t, img)
		if h := heads["manager"]; h == nil || h.Mode&0o111 == 0 || !bytes.Equal(data["manager"], bins[p.String()]) {
			t.Errorf("%s: /manager is not the %s binary, executable (%v)", p, p.Architecture, h)
		}
		for _, shell := range []string{"bin/sh", "bin/bash", "bin/busybox", "usr/bin/env", "bin"} {
			if _, ok := heads[shell]; ok {
				t.Errorf("%s: the image has /%s", p, shell)
			}
		}
		if pool := x509.NewCertPool(); !pool.AppendCertsFromPEM(data[CACertsPath]) {
			t.Errorf("%s: no CA certificates at /%s", p, CACertsPath)
		}
		if !strings.Contains(string(data["etc/passwd"]), "nonroot:x:65532:65532:") {
			t.Errorf("%s: /etc/passwd has no nonroot user: %q", p, data["etc/passwd"])
		}
		if h := heads["tmp"]; h == nil || h.Mode&0o1777 != 0o1777 {
			t.Errorf("%s: /tmp is not world-writable and sticky: %v", p, h)
		}
		if h := heads["home/nonroot"]; h == nil || h.Uid != 65532 {
			t.Errorf("%s: /home/nonroot is not nonroot's: %v", p, h)
		}
	}
	again, err := Assemble(o, bins, certs)
	if err != nil {
		t.Fatal(err)
	}
	if d1, d2 := digest(t, idx), digest(t, again); d1 != d2 {
		t.Errorf("the same inputs gave two digests: %s, %s", d1, d2)
	}
}

func digest(t *testing.T, idx v1.ImageIndex) v1.Hash {
	t.Helper()
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestAssembleRefusesDynamicBinary(t *testing.T) {
	self, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Skip("no /bin/sh to stand for a dynamic binary")
	}
	if err := Static(self); err == nil {
		t.Skip("/bin/sh is static here")
	}
	o := testOptions(v1.Platform{OS: "linux", Architecture: goruntime.GOARCH})
	_, err = Assemble(o, map[string][]byte{o.Platforms[0].String(): self}, []byte("certs"))
	if err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Fatalf("got %v, want a refusal of a dynamic binary", err)
	}
}

func TestNamesRegistry(t *testing.T) {
	for ref, want := range map[string]bool{
		"packhost/manager:dev":                  false,
		"manager:dev":                           false,
		"registry.example.com/packhost/manager": true,
		"127.0.0.1:5000/packhost/manager:v1":    true,
		"localhost/packhost/manager:v1":         true,
		"docker.io/packhost/manager:v1":         true,
	} {
		if got := NamesRegistry(ref); got != want {
			t.Errorf("NamesRegistry(%q) = %v, want %v", ref, got, want)
		}
	}
}

// With no registry in the reference, Publish writes an OCI layout tarball whose
// index.json names the image by its tag and holds the multi-platform index.
func TestPublishWritesLayoutTarball(t *testing.T) {
	o := testOptions(amd64)
	o.Out = filepath.Join(t.TempDir(), "out", "manager-image.tar")
	idx, err := Assemble(o, map[string][]byte{amd64.String(): fakeELF(t, "amd64")}, []byte("certs"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Publish(context.Background(), o, idx); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	untar(t, o.Out, dir)
	root, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("read the OCI layout: %v", err)
	}
	rm, err := root.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(rm.Manifests) != 1 {
		t.Fatalf("index.json has %d entries", len(rm.Manifests))
	}
	d := rm.Manifests[0]
	if d.MediaType != types.OCIImageIndex || d.Digest != digest(t, idx) || d.Annotations["org.opencontainers.image.ref.name"] != "test" || d.Annotations["io.containerd.image.name"] != "index.docker.io/packhost/manager:test" {
		t.Fatalf("index.json entry %+v, want the index %s named packhost/manager:test", d, digest(t, idx))
	}
	inner, err := root.ImageIndex(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	img, err := inner.Image(mustManifests(t, inner)[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.ConfigFile(); err != nil {
		t.Fatalf("the layout lacks the image's blobs: %v", err)
	}
}

func mustManifests(t *testing.T, idx v1.ImageIndex) []v1.Descriptor {
	t.Helper()
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	return im.Manifests
}

func untar(t *testing.T, file, dir string) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if !strings.HasPrefix(p, dir+string(filepath.Separator)) {
			t.Fatalf("tar entry %q escapes", h.Name)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
				var b []byte
				if b, err = io.ReadAll(tr); err == nil {
					err = os.WriteFile(p, b, os.FileMode(h.Mode)&0o777)
				}
			}
		default:
			t.Fatalf("unexpected tar entry %q of type %c", h.Name, h.Typeflag)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// The image as `make image IMG=<registry>/...` pushes it: pulled back from a registry,
// its filesystem extracted, its entrypoint run as the config says against the test API
// server answers /readyz. Only this machine's architecture is built: the other is the
// same code cross-compiled, which TestAssembleMultiArch covers.
func TestPushedImageRunsTheManager(t *testing.T) {
	testenv.Require(t, env)
	certs := hostCerts(t)
	p := v1.Platform{OS: "linux", Architecture: goruntime.GOARCH}
	if goruntime.GOOS != "linux" {
		t.Skip("the image runs on linux")
	}
	bin, err := managerBinary()
	if err != nil {
		t.Fatal(err)
	}
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	o := testOptions(p)
	o.Image = strings.TrimPrefix(reg.URL, "http://") + "/packhost/manager:" + o.Version
	idx, err := Assemble(o, map[string][]byte{p.String(): bin}, certs)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := Publish(ctx, o, idx); err != nil {
		t.Fatal(err)
	}

	ref, err := name.ParseReference(o.Image)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref, remote.WithPlatform(p))
	if err != nil {
		t.Fatalf("pull %s for %s: %v", ref, p, err)
	}
	checkConfig(t, img, o, p)
	cf, _ := img.ConfigFile()

	root := t.TempDir()
	heads, data := files(t, img)
	for n, h := range heads {
		path := filepath.Join(root, n)
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(path, 0o755)
		case tar.TypeReg:
			if err = os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
				err = os.WriteFile(path, data[n], os.FileMode(h.Mode)&0o777)
			}
		default:
			t.Fatalf("unexpected entry %q of type %c", n, h.Typeflag)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	entry := filepath.Join(root, cf.Config.Entrypoint[0])
	pulled, err := os.ReadFile(entry)
	if err != nil {
		t.Fatalf("the entrypoint %s is not in the image: %v", cf.Config.Entrypoint[0], err)
	}
	if err := Static(pulled); err != nil {
		t.Fatal(err)
	}

	kubeconfig, err := env.KubeconfigFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	probes, dispatcher := freeAddr(t), freeAddr(t)
	var logs bytes.Buffer
	cmd := exec.Command(entry,
		"--kubeconfig", kubeconfig, "--metrics-bind-address", "0",
		"--health-probe-bind-address", probes, "--dispatcher-bind-address", dispatcher,
		"--cache-dir", t.TempDir(), "--source-allow=127.0.0.1/32")
	cmd.Dir = root
	cmd.Env = append([]string{"HOME=" + root + "/home/nonroot"}, cf.Config.Env...)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("manager log:\n%s", tail(logs.String(), 4096))
		}
	}()
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(90 * time.Second)
	for {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("the manager from the image exited: %v", err)
		default:
		}
		if resp, err := client.Get("http://" + probes + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the manager from the image did not answer /readyz 200 within 90s")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
