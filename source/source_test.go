package source_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	packhostv1alpha1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/internal/testenv"
	"github.com/packhost/packhost/source"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Run(m, &env)) }

var module = []byte("\x00asm\x01\x00\x00\x00 a pack's bytes")

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// local allows the test servers' address and nothing else past the default policy,
// as --source-allow=127.0.0.1/32 does for make run-local.
func local(t *testing.T) *source.EgressPolicy {
	t.Helper()
	p, err := source.NewEgressPolicy([]string{"127.0.0.1/32"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func fetcher(t *testing.T) *source.Fetcher {
	f := &source.Fetcher{CacheDir: t.TempDir(), Insecure: true, Egress: local(t)}
	if env != nil {
		f.Reader = env.Client
	}
	return f
}

func TestURLSource(t *testing.T) {
	var hits, flaky atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		switch r.URL.Path {
		case "/good.wasm":
			w.Write(module)
		case "/wrong.wasm":
			w.Write([]byte("not the pinned bytes"))
		case "/flaky.wasm":
			if flaky.Add(1) == 1 {
				http.Error(w, "try again", http.StatusServiceUnavailable)
				return
			}
			w.Write(module)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	ctx := context.Background()
	f := fetcher(t)
	pack := func(path, sha string) packhostv1alpha1.Pack {
		return packhostv1alpha1.Pack{Name: "bot", URL: srv.URL + path, SHA256: sha}
	}

	got, err := f.Fetch(ctx, "ns", pack("/good.wasm", sum(module)), nil, "")
	if err != nil || string(got.Bytes) != string(module) || got.Digest != "sha256:"+sum(module) {
		t.Fatalf("good url: %v %+v", err, got)
	}
	// Cached by digest: not fetched again.
	before := hits.Load()
	if _, err := f.Fetch(ctx, "ns", pack("/good.wasm", sum(module)), nil, ""); err != nil || hits.Load() != before {
		t.Fatalf("a cached pack was fetched again (%d hits) or failed: %v", hits.Load()-before, err)
	}

	// A fresh cache: the pinned digest is cached above, and content addressing would
	// (rightly) never fetch it again.
	// The message names the pinned digest and never the digest of the bytes served: a
	// namespace user must not learn the digest of content nobody asked for.
	_, err = fetcher(t).Fetch(ctx, "ns", pack("/wrong.wasm", sum(module)), nil, "")
	if want := "fetch url " + srv.URL + "/wrong.wasm: digest mismatch (want " + sum(module) + ")"; !errors.Is(err, source.ErrDigestMismatch) || err.Error() != want {
		t.Fatalf("wrong bytes: %v, want %q", err, want)
	}
	if strings.Contains(err.Error(), sum([]byte("not the pinned bytes"))) {
		t.Fatalf("wrong bytes: %v echoes the digest of the body served", err)
	}
	if _, err := f.Fetch(ctx, "ns", pack("/flaky.wasm", sum(module)), nil, ""); err != nil {
		t.Fatalf("a 503 then 200 should succeed on retry: %v", err)
	}
	if _, err := f.Fetch(ctx, "ns", pack("/missing.wasm", strings.Repeat("0", 64)), nil, ""); !errors.Is(err, source.ErrSourceUnreachable) || !strings.HasSuffix(err.Error(), ": HTTP 404") {
		t.Fatalf("404: %v", err)
	}
}

// pushArtifact pushes module as a wasm OCI artifact to the registry at host and returns
// the reference by tag and the manifest digest.
func pushArtifact(t *testing.T, host, repo, tag string, layers ...[]byte) (string, v1.Hash) {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	for _, l := range layers {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{Layer: static.NewLayer(l, source.WasmLayerMediaType)})
		if err != nil {
			t.Fatal(err)
		}
	}
	ref, err := name.ParseReference(host+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return ref.String(), d
}

func TestImageSource(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()
	f := fetcher(t)

	tagged, digest := pushArtifact(t, host, "packs/bot", "v1", module)
	got, err := f.Fetch(ctx, "ns", packhostv1alpha1.Pack{Name: "bot", Image: tagged}, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	wantPinned := host + "/packs/bot@" + digest.String()
	if string(got.Bytes) != string(module) || got.ResolvedImage != wantPinned {
		t.Fatalf("by tag: resolved %q (want %q), %d bytes", got.ResolvedImage, wantPinned, len(got.Bytes))
	}

	pinned := packhostv1alpha1.Pack{Name: "bot", Image: tagged, SHA256: sum(module)}
	if _, err := f.Fetch(ctx, "ns", pinned, nil, ""); err != nil {
		t.Fatal(err)
	}
	// The tag moves; a Revision that resolved it keeps its digest.
	pushArtifact(t, host, "packs/bot", "v1", []byte("\x00asm\x01\x00\x00\x00 a newer pack"))
	// Served from the cache to the source that gave it (the tag has moved: a fetch would
	// find other bytes), a pinned pack still tells what its tag resolved to, after a
	// restart too (a new fetcher on the same cache).
	restarted := &source.Fetcher{CacheDir: f.CacheDir, Insecure: true, Egress: f.Egress}
	for name, f := range map[string]*source.Fetcher{"cache hit": f, "cache hit after a restart": restarted} {
		hit, err := f.Fetch(ctx, "ns", pinned, nil, "")
		if err != nil || hit.ResolvedImage != wantPinned {
			t.Fatalf("%s: resolved %q (want %q): %v", name, hit.ResolvedImage, wantPinned, err)
		}
	}

	again, err := fetcher(t).Fetch(ctx, "ns", packhostv1alpha1.Pack{Name: "bot", Image: tagged}, nil, got.ResolvedImage)
	if err != nil || string(again.Bytes) != string(module) || again.ResolvedImage != wantPinned {
		t.Fatalf("re-fetch of a resolved tag followed the moved tag: %v %q", err, again.ResolvedImage)
	}

	// By digest, with the sha256 of the wasm layer pinned too.
	if _, err := fetcher(t).Fetch(ctx, "ns", packhostv1alpha1.Pack{Name: "bot", Image: wantPinned, SHA256: sum(module)}, nil, ""); err != nil {
		t.Fatalf("by digest: %v", err)
	}

	noWasm, _ := pushArtifact(t, host, "packs/empty", "v1")
	if _, err := fetcher(t).Fetch(ctx, "ns", packhostv1alpha1.Pack{Name: "bot", Image: noWasm}, nil, ""); !errors.Is(err, source.ErrInvalidSource) {
		t.Fatalf("artifact without a wasm layer: %v", err)
	}
	if _, err := fetcher(t).Fetch(ctx, "ns", packhostv1alpha1.Pack{Name: "bot", Image: host + "/packs/none:v1"}, nil, ""); !errors.Is(err, source.ErrSourceUnreachable) || !strings.HasSuffix(err.Error(), ": HTTP 404") {
		t.Fatalf("missing repository: %v", err)
	}
}

// A registry that wants credentials gets them from the Revision's image pull Secret.
func TestImagePullSecret(t *testing.T) {
	testenv.Require(t, env)
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "robot" || p != "s3cret" {
			w.Header().Set("WWW-Authenticate", `Basic realm="packs"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ns := env.Namespace(t, "pull")
	auth := base64.StdEncoding.EncodeToString([]byte("robot:s3cret"))
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "regcred", Namespace: ns},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{"` + host + `":{"auth":"` + auth + `"}}}`)},
	}
	if err := env.Client.Create(context.Background(), secret); err != nil {
		t.Fatal(err)
	}
	// Push with the same credentials.
	img, _ := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1), mutate.Addendum{Layer: static.NewLayer(module, source.WasmLayerMediaType)})
	ref, _ := name.ParseReference(host+"/private/bot:v1", name.Insecure)
	if err := remote.Write(ref, img, remote.WithAuth(&basic{"robot", "s3cret"})); err != nil {
		t.Fatal(err)
	}
	pack := packhostv1alpha1.Pack{Name: "bot", Image: ref.String()}
	if _, err := fetcher(t).Fetch(context.Background(), ns, pack, nil, ""); !errors.Is(err, source.ErrSourceUnreachable) {
		t.Fatalf("without credentials: %v", err)
	}
	got, err := fetcher(t).Fetch(context.Background(), ns, pack, []packhostv1alpha1.LocalObjectReference{{Name: "regcred"}}, "")
	if err != nil || string(got.Bytes) != string(module) {
		t.Fatalf("with the pull secret: %v", err)
	}
}

type basic struct{ u, p string }

func (b *basic) Authorization() (*authnConfig, error) {
	return &authnConfig{Username: b.u, Password: b.p}, nil
}

func TestConfigMapSource(t *testing.T) {
	testenv.Require(t, env)
	ctx := context.Background()
	ns := env.Namespace(t, "cm")
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "packs", Namespace: ns},
		BinaryData: map[string][]byte{"bot.wasm": module}, Data: map[string]string{"text.wasm": "oops"}}
	if err := env.Client.Create(ctx, cm); err != nil {
		t.Fatal(err)
	}
	f := fetcher(t)
	ref := func(key string) packhostv1alpha1.Pack {
		return packhostv1alpha1.Pack{Name: "bot", ConfigMapRef: &packhostv1alpha1.ConfigMapKeyReference{Name: "packs", Key: key}}
	}
	if got, err := f.Fetch(ctx, ns, ref("bot.wasm"), nil, ""); err != nil || string(got.Bytes) != string(module) {
		t.Fatalf("configMapRef: %v", err)
	}
	if _, err := f.Fetch(ctx, ns, ref("text.wasm"), nil, ""); !errors.Is(err, source.ErrInvalidSource) || !strings.Contains(err.Error(), "binaryData") {
		t.Fatalf("key in data: %v", err)
	}
	if _, err := f.Fetch(ctx, ns, ref("missing.wasm"), nil, ""); !errors.Is(err, source.ErrSourceUnreachable) {
		t.Fatalf("missing key: %v", err)
	}
}

type authnConfig = authn.AuthConfig

// The cache pruner keeps the packs of loaded revisions; it learns which file holds
// which pack from CachedDigest, for the files the fetcher wrote and no others.
func TestCachedDigestNamesTheFetchersFiles(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(module) }))
	defer srv.Close()
	f := fetcher(t)
	got, err := f.Fetch(context.Background(), "ns", packhostv1alpha1.Pack{Name: "bot", URL: srv.URL + "/p.wasm", SHA256: sum(module)}, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	_ = filepath.WalkDir(filepath.Join(f.CacheDir, "packs", "sha256"), func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files = append(files, path)
		}
		return nil
	})
	if len(files) != 1 {
		t.Fatalf("the cache holds %v, want the one pack", files)
	}
	if d, ok := f.CachedDigest(files[0]); !ok || d != got.Digest {
		t.Errorf("CachedDigest(%s) = %q %v, want %q", files[0], d, ok, got.Digest)
	}
	for _, other := range []string{
		filepath.Join(f.CacheDir, "compiled", "wazero-v1", sum(module)),
		filepath.Join(f.CacheDir, "packs", "sha256", "short"),
		filepath.Join(t.TempDir(), "packs", "sha256", sum(module)),
	} {
		if d, ok := f.CachedDigest(other); ok {
			t.Errorf("CachedDigest(%s) = %q, want no pack", other, d)
		}
	}
}
