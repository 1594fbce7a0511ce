package packs

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/packhost/packhost/source"
)

// ServeRegistry runs an in-process OCI registry on addr (until the process ends) and
// pushes each pack as the wasm artifact packs/<name>:v1.
func ServeRegistry(addr string, packs map[string][]byte) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("registry on %s: %w", addr, err)
	}
	go func() { _ = http.Serve(l, registry.New(registry.Logger(log.New(io.Discard, "", 0)))) }()
	for n, b := range packs {
		if err := Push(l.Addr().String()+"/packs/"+n+":v1", b); err != nil {
			return err
		}
	}
	return nil
}

// Push pushes wasm to ref as an OCI artifact with one layer of the wasm media type.
func Push(ref string, wasm []byte) error {
	img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1),
		mutate.Addendum{Layer: static.NewLayer(wasm, source.WasmLayerMediaType)})
	if err != nil {
		return err
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return err
	}
	if err := remote.Write(r, img); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return nil
}
