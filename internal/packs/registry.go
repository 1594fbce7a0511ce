package packs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/packhost/packhost/source"
)

// ArtifactType is the OCI artifactType of a packhost pack. The manifest follows the OCI
// image-spec v1.1 guidance for artifacts: an image manifest whose config is the empty
// descriptor (application/vnd.oci.empty.v1+json, content "{}"), the type in
// artifactType, and the pack as its one layer of media type source.WasmLayerMediaType,
// titled (org.opencontainers.image.title) so that `oras pull` writes it to a file of
// that name. It is what `oras push --artifact-type application/vnd.packhost.pack.v1
// <ref> pack.wasm:application/vnd.wasm.content.layer.v1+wasm` makes; packhost reads only
// the wasm layer, so artifacts pushed by other tools with that one layer load too.
const ArtifactType = "application/vnd.packhost.pack.v1"

// emptyConfig is the content of the OCI empty descriptor.
var emptyConfig = []byte("{}")

// Artifact is a pack as an OCI artifact, ready to push.
type Artifact struct {
	// Manifest is the artifact's OCI image manifest, as pushed.
	Manifest []byte
	// Digest is the manifest's digest: what an image source pins (repo@<Digest>).
	Digest v1.Hash
	// SHA256 is the hex sha256 of the pack itself: what a Revision's packs[].sha256 pins.
	SHA256 string

	layers []v1.Layer
}

// NewArtifact builds the artifact of pack wasm, its layer titled title (a file name such
// as "counter.wasm"). created, when not zero, is recorded as the manifest's
// org.opencontainers.image.created annotation.
func NewArtifact(wasm []byte, title string, created time.Time) (*Artifact, error) {
	if title == "" {
		return nil, fmt.Errorf("build pack artifact: the layer needs a title")
	}
	sum := sha256.Sum256(wasm)
	a := &Artifact{SHA256: hex.EncodeToString(sum[:])}
	layer := static.NewLayer(wasm, source.WasmLayerMediaType)
	config := static.NewLayer(emptyConfig, types.OCIEmptyJSON)
	a.layers = []v1.Layer{config, layer}
	var err error
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  ArtifactType,
		Config:        v1.Descriptor{MediaType: types.OCIEmptyJSON, Size: int64(len(emptyConfig)), Data: emptyConfig},
		Layers: []v1.Descriptor{{
			MediaType:   source.WasmLayerMediaType,
			Size:        int64(len(wasm)),
			Digest:      v1.Hash{Algorithm: "sha256", Hex: a.SHA256},
			Annotations: map[string]string{"org.opencontainers.image.title": title},
		}},
	}
	if m.Config.Digest, err = config.Digest(); err != nil {
		return nil, fmt.Errorf("build pack artifact: %w", err)
	}
	if !created.IsZero() {
		m.Annotations = map[string]string{"org.opencontainers.image.created": created.UTC().Format(time.RFC3339)}
	}
	if a.Manifest, err = json.Marshal(m); err != nil {
		return nil, fmt.Errorf("build pack artifact: %w", err)
	}
	if a.Digest, _, err = v1.SHA256(bytes.NewReader(a.Manifest)); err != nil {
		return nil, fmt.Errorf("build pack artifact: %w", err)
	}
	return a, nil
}

// RawManifest and MediaType make an Artifact a remote.Taggable.
func (a *Artifact) RawManifest() ([]byte, error)        { return a.Manifest, nil }
func (a *Artifact) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

// Push uploads the artifact's blobs (those the registry has already are skipped) and
// then its manifest to ref.
func (a *Artifact) Push(ctx context.Context, ref name.Reference, opts ...remote.Option) error {
	opts = append([]remote.Option{remote.WithContext(ctx)}, opts...)
	for _, l := range a.layers {
		if err := remote.WriteLayer(ref.Context(), l, opts...); err != nil {
			return fmt.Errorf("push %s: upload blob: %w", ref, err)
		}
	}
	if err := remote.Put(ref, a, opts...); err != nil {
		return fmt.Errorf("push %s: put manifest: %w", ref, err)
	}
	return nil
}

// ServeRegistry runs an in-process OCI registry on addr (until the process ends) and
// pushes each pack as the wasm artifact packs/<name>:v1.
func ServeRegistry(addr string, packs map[string][]byte) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("registry on %s: %w", addr, err)
	}
	go func() { _ = http.Serve(l, registry.New(registry.Logger(log.New(io.Discard, "", 0)))) }()
	for n, b := range packs {
		if err := push(l.Addr().String()+"/packs/"+n+":v1", n+".wasm", b); err != nil {
			return err
		}
	}
	return nil
}

// Push pushes wasm to ref as a pack artifact (ArtifactType), its layer titled
// "pack.wasm".
func Push(ref string, wasm []byte) error { return push(ref, "pack.wasm", wasm) }

func push(ref, title string, wasm []byte) error {
	r, err := name.ParseReference(ref)
	if err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	a, err := NewArtifact(wasm, title, time.Time{})
	if err != nil {
		return err
	}
	return a.Push(context.Background(), r)
}
