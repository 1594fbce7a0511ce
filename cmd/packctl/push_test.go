package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	packhostv1alpha1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/internal/packs"
	"github.com/packhost/packhost/source"
)

// The OCI empty descriptor's digest: the sha256 of "{}".
const emptyDigest = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

// pushed runs `packctl push -json` of a synthetic pack to a fresh in-process registry
// and returns the pack, what push printed and the registry's host.
func pushed(t *testing.T) ([]byte, Pushed, string) {
	t.Helper()
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	host := strings.TrimPrefix(reg.URL, "http://")
	wasm := packs.Synthetic(4 << 10)
	file := filepath.Join(t.TempDir(), "bot.wasm")
	if err := os.WriteFile(file, wasm, 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	if err := run([]string{"push", "-json", file, host + "/packs/bot:v1"}, &stdout); err != nil {
		t.Fatalf("push: %v", err)
	}
	var out Pushed
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		t.Fatalf("push printed %q: %v", stdout.String(), err)
	}
	return wasm, out, host
}

// What push publishes is an OCI 1.1 artifact that `oras pull` understands (artifactType,
// the empty config, a titled layer), and push prints the digests that pin it.
func TestPushPublishesAnArtifact(t *testing.T) {
	wasm, out, host := pushed(t)
	tag, _ := name.ParseReference(host + "/packs/bot:v1")
	desc, err := remote.Get(tag)
	if err != nil {
		t.Fatalf("get %s: %v", tag, err)
	}
	if got := desc.Digest.String(); got != out.Digest || out.Image != host+"/packs/bot@"+got {
		t.Errorf("registry has manifest %s; push printed digest %s, image %s", got, out.Digest, out.Image)
	}
	if want := sum(wasm); out.SHA256 != want {
		t.Errorf("push printed sha256 %s, the pack's is %s", out.SHA256, want)
	}
	m, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != "application/vnd.oci.image.manifest.v1+json" || m.ArtifactType != packs.ArtifactType {
		t.Errorf("manifest mediaType %q, artifactType %q", m.MediaType, m.ArtifactType)
	}
	if m.Config.MediaType != "application/vnd.oci.empty.v1+json" || m.Config.Digest.String() != emptyDigest || m.Config.Size != 2 {
		t.Errorf("config is not the empty descriptor: %+v", m.Config)
	}
	if len(m.Layers) != 1 {
		t.Fatalf("%d layers, want 1", len(m.Layers))
	}
	l := m.Layers[0]
	if l.MediaType != source.WasmLayerMediaType || l.Digest.Hex != out.SHA256 || l.Size != int64(len(wasm)) {
		t.Errorf("layer %+v", l)
	}
	// oras pull writes a layer to the file its title names, and skips untitled layers.
	if l.Annotations["org.opencontainers.image.title"] != "bot.wasm" {
		t.Errorf("layer annotations %v, want the title bot.wasm", l.Annotations)
	}
	for _, d := range []v1.Descriptor{m.Config, l} {
		blob, err := remote.Layer(tag.Context().Digest(d.Digest.String()))
		if err != nil {
			t.Fatal(err)
		}
		rc, err := blob.Compressed()
		if err != nil {
			t.Fatalf("blob %s: %v", d.Digest, err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatalf("blob %s: %v", d.Digest, err)
		}
		if want := map[bool][]byte{true: []byte("{}"), false: wasm}[d.Digest.String() == emptyDigest]; !bytes.Equal(b, want) {
			t.Errorf("blob %s holds %d bytes, not what was pushed", d.Digest, len(b))
		}
	}
}

// packhost's own fetcher pulls what push published, by the pinned image and sha256
// push printed, and by the tag (which it resolves to the same digest).
func TestPushedPackIsFetched(t *testing.T) {
	wasm, out, host := pushed(t)
	egress, err := source.NewEgressPolicy([]string{"127.0.0.1/32"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, image, sha string }{
		{"pinned", out.Image, out.SHA256},
		{"by tag", host + "/packs/bot:v1", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &source.Fetcher{CacheDir: t.TempDir(), Egress: egress}
			got, err := f.Fetch(context.Background(), "default", packhostv1alpha1.Pack{Name: "bot", Image: tc.image, SHA256: tc.sha}, nil, "")
			if err != nil {
				t.Fatalf("fetch %s: %v", tc.image, err)
			}
			if !bytes.Equal(got.Bytes, wasm) || got.Digest != "sha256:"+out.SHA256 || got.ResolvedImage != out.Image {
				t.Fatalf("fetched %d bytes, digest %s, resolved %s; want %d bytes, sha256:%s, %s", len(got.Bytes), got.Digest, got.ResolvedImage, len(wasm), out.SHA256, out.Image)
			}
		})
	}
}

func TestPushRefuses(t *testing.T) {
	dir := t.TempDir()
	notPack := filepath.Join(dir, "plain.wasm")
	pack := filepath.Join(dir, "bot.wasm")
	_ = os.WriteFile(notPack, []byte("\x00asm\x01\x00\x00\x00"), 0o644)
	_ = os.WriteFile(pack, packs.Synthetic(1<<10), 0o644)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"a module without a manifest", []string{notPack, "127.0.0.1:1/packs/x:v1"}, "plain.wasm"},
		{"a digest reference", []string{pack, "127.0.0.1:1/packs/x@" + emptyDigest}, "push to a tag"},
		{"a bad reference", []string{pack, "127.0.0.1:1/Packs/X:v1"}, "parse reference"},
		{"no reference", []string{pack}, "push takes a pack and a reference"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(append([]string{"push"}, tc.args...), io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
