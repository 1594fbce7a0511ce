package source

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	packhostv1alpha1 "github.com/packhost/packhost/api/v1alpha1"
)

// WasmLayerMediaType is the media type of the layer that holds a pack in an OCI artifact.
const WasmLayerMediaType = "application/vnd.wasm.content.layer.v1+wasm"

// MaxManifestBytes is the largest OCI manifest or index read from a registry (and the
// largest answer to any other registry request that is not a blob).
const MaxManifestBytes = 4 << 20

// fromImage fetches an image source: the manifest (≤ MaxManifestBytes), then its one
// wasm layer (≤ MaxPackBytes, hashed as it streams). It returns the bytes, their sha256
// in hex, and the reference pinned to the manifest digest.
func (f *Fetcher) fromImage(ctx context.Context, namespace, image string, pullSecrets []packhostv1alpha1.LocalObjectReference, resolved string) ([]byte, string, string, error) {
	var opts []name.Option
	if f.Insecure {
		opts = append(opts, name.Insecure)
	}
	refText := image
	if resolved != "" {
		refText = resolved // a tag resolves once per Revision
	}
	src := "image " + refText
	ref, err := name.ParseReference(refText, opts...)
	if err != nil {
		return nil, "", "", &Error{Source: src, Detail: "not an OCI reference", Class: ErrInvalidSource}
	}
	keychain, err := f.keychain(ctx, namespace, pullSecrets)
	if err != nil {
		return nil, "", "", err
	}
	var (
		b              []byte
		digest, pinned string
	)
	err = f.try(ctx, namespace+"\x00"+src, src, false, func(ctx context.Context) error {
		desc, err := remote.Get(ref,
			remote.WithContext(ctx), remote.WithAuthFromKeychain(keychain), remote.WithTransport(f.transport()),
			// One retry path: ours (Fetcher.try), not a second one inside the registry client.
			remote.WithRetryPredicate(func(error) bool { return false }), remote.WithRetryStatusCodes())
		if err != nil {
			return err
		}
		pinned = ref.Context().Digest(desc.Digest.String()).String()
		img, err := desc.Image()
		if err != nil {
			return failure(ErrInvalidSource, false, "not an image manifest")
		}
		layers, err := img.Layers()
		if err != nil {
			return failure(ErrInvalidSource, false, "unreadable image manifest")
		}
		var wasm v1.Layer
		for _, l := range layers {
			if mt, err := l.MediaType(); err == nil && string(mt) == WasmLayerMediaType {
				if wasm != nil {
					return failure(ErrInvalidSource, false, "more than one %s layer", WasmLayerMediaType)
				}
				wasm = l
			}
		}
		if wasm == nil {
			return failure(ErrInvalidSource, false, "no layer of media type %s", WasmLayerMediaType)
		}
		if size, err := wasm.Size(); err == nil && size > MaxPackBytes {
			return tooLarge("pack layer", MaxPackBytes)
		}
		rc, err := wasm.Compressed()
		if err != nil {
			return err
		}
		defer rc.Close()
		h := sha256.New()
		if b, err = io.ReadAll(io.TeeReader(rc, h)); err != nil {
			return err
		}
		digest = hex.EncodeToString(h.Sum(nil))
		return nil
	})
	if err != nil {
		return nil, "", "", err
	}
	return b, digest, pinned, nil
}

// keychain builds registry credentials from the Revision's image pull Secrets
// (kubernetes.io/dockerconfigjson).
func (f *Fetcher) keychain(ctx context.Context, namespace string, refs []packhostv1alpha1.LocalObjectReference) (authn.Keychain, error) {
	if len(refs) == 0 {
		// Anonymous, never the manager's own credentials: a Revision pulls only what
		// its own opted-in pull Secrets, or nobody's, let it.
		return authn.NewMultiKeychain(), nil
	}
	var kcs []authn.Keychain
	for _, r := range refs {
		s := &corev1.Secret{}
		if err := f.Reader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: r.Name}, s); err != nil {
			return nil, fmt.Errorf("%w: image pull Secret %s/%s: %w", ErrSourceUnreachable, namespace, r.Name, err)
		}
		data, ok := s.Data[corev1.DockerConfigJsonKey]
		if !ok {
			return nil, fmt.Errorf("%w: image pull Secret %s/%s has no %s key", ErrInvalidSource, namespace, r.Name, corev1.DockerConfigJsonKey)
		}
		kc, err := dockerConfigKeychain(data)
		if err != nil {
			return nil, fmt.Errorf("%w: image pull Secret %s/%s: %w", ErrInvalidSource, namespace, r.Name, err)
		}
		kcs = append(kcs, kc)
	}
	return authn.NewMultiKeychain(kcs...), nil
}
