// Package source fetches a Revision's packs from their sources (a ConfigMap key, an
// http(s) URL, an OCI artifact), verifies their sha256, and keeps them in a
// content-addressed local cache so a pack already fetched by digest is never fetched
// again.
package source

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	packhostv1alpha1 "github.com/packhost/packhost/api/v1alpha1"
)

// WasmLayerMediaType is the media type of the layer that holds a pack in an OCI artifact.
const WasmLayerMediaType = "application/vnd.wasm.content.layer.v1+wasm"

// Limits and timing of fetches.
const (
	// MaxPackBytes is the largest pack fetched from any source.
	MaxPackBytes = 64 << 20
	// fetchAttempts is how often a url fetch is tried before it is reported unreachable.
	fetchAttempts = 3
	// fetchBackoff is the wait before the second attempt; it doubles after each.
	fetchBackoff = 500 * time.Millisecond
	// fetchTimeout bounds one attempt.
	fetchTimeout = 60 * time.Second
)

// Errors a caller branches on to pick a Revision's failure reason.
var (
	// ErrUnreachable: the source could not be read (network, missing object, registry).
	ErrUnreachable = errors.New("source unreachable")
	// ErrDigestMismatch: the bytes do not have the sha256 the Revision pins.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrInvalidSource: the source is malformed (bad image reference, no wasm layer).
	ErrInvalidSource = errors.New("invalid source")
)

// Fetched is one pack's bytes and where they came from.
type Fetched struct {
	Bytes []byte
	// Digest is "sha256:<hex>" of Bytes.
	Digest string
	// ResolvedImage pins an image source to its manifest digest (repo@sha256:...).
	ResolvedImage string
}

// Fetcher fetches packs. Reader reads ConfigMaps and Secrets straight from the API
// server (not through a cache of every ConfigMap).
type Fetcher struct {
	Reader   client.Reader
	CacheDir string
	HTTP     *http.Client
	// Insecure allows plain-http registries (tests, local registries).
	Insecure bool
}

// Fetch returns pack's bytes. resolvedImage, when not empty, is the digest-pinned image
// a previous fetch resolved the pack's tag to; it is used instead of the tag.
func (f *Fetcher) Fetch(ctx context.Context, namespace string, pack packhostv1alpha1.Pack, pullSecrets []packhostv1alpha1.LocalObjectReference, resolvedImage string) (*Fetched, error) {
	if pack.SHA256 != "" {
		if b, err := f.cached(pack.SHA256); err == nil {
			return &Fetched{Bytes: b, Digest: "sha256:" + pack.SHA256, ResolvedImage: resolvedImage}, nil
		}
	}
	var (
		b   []byte
		out = &Fetched{}
		err error
	)
	switch {
	case pack.ConfigMapRef != nil:
		b, err = f.fromConfigMap(ctx, namespace, pack.ConfigMapRef)
	case pack.URL != "":
		b, err = f.fromURL(ctx, pack.URL)
	case pack.Image != "":
		b, out.ResolvedImage, err = f.fromImage(ctx, namespace, pack.Image, pullSecrets, resolvedImage)
	default:
		err = fmt.Errorf("%w: pack %s has no source", ErrInvalidSource, pack.Name)
	}
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	got := hex.EncodeToString(sum[:])
	if pack.SHA256 != "" && got != pack.SHA256 {
		return nil, fmt.Errorf("%w: pack %s has sha256 %s, the Revision pins %s", ErrDigestMismatch, pack.Name, got, pack.SHA256)
	}
	if err := f.store(got, b); err != nil {
		return nil, err
	}
	out.Bytes, out.Digest = b, "sha256:"+got
	return out, nil
}

func (f *Fetcher) path(hexDigest string) string {
	return filepath.Join(f.CacheDir, "packs", "sha256", hexDigest)
}

// CachedDigest reports the digest (sha256:<hex>) of the pack a file of the cache holds,
// or false for any other path.
func (f *Fetcher) CachedDigest(path string) (string, bool) {
	hexDigest := filepath.Base(path)
	if f.CacheDir == "" || len(hexDigest) != sha256.Size*2 || f.path(hexDigest) != filepath.Clean(path) {
		return "", false
	}
	return "sha256:" + hexDigest, true
}

// cached returns a pack from the local cache, checking its bytes against the digest.
func (f *Fetcher) cached(hexDigest string) ([]byte, error) {
	if f.CacheDir == "" {
		return nil, os.ErrNotExist
	}
	b, err := os.ReadFile(f.path(hexDigest))
	if err != nil {
		return nil, err
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != hexDigest {
		_ = os.Remove(f.path(hexDigest))
		return nil, os.ErrNotExist
	}
	return b, nil
}

func (f *Fetcher) store(hexDigest string, b []byte) error {
	if f.CacheDir == "" {
		return nil
	}
	p := f.path(hexDigest)
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		return fmt.Errorf("pack cache: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".fetch-*")
	if err != nil {
		return fmt.Errorf("pack cache: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("pack cache: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("pack cache: %w", err)
	}
	return os.Rename(tmp.Name(), p)
}

func (f *Fetcher) fromConfigMap(ctx context.Context, namespace string, ref *packhostv1alpha1.ConfigMapKeyReference) ([]byte, error) {
	cm := &corev1.ConfigMap{}
	if err := f.Reader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: ref.Name}, cm); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("%w: ConfigMap %s/%s not found", ErrUnreachable, namespace, ref.Name)
		}
		return nil, fmt.Errorf("%w: read ConfigMap %s/%s: %v", ErrUnreachable, namespace, ref.Name, err)
	}
	b, ok := cm.BinaryData[ref.Key]
	if !ok {
		if _, inData := cm.Data[ref.Key]; inData {
			return nil, fmt.Errorf("%w: ConfigMap %s/%s has key %q in data; a pack must be in binaryData (kubectl create configmap --from-file does this)", ErrInvalidSource, namespace, ref.Name, ref.Key)
		}
		return nil, fmt.Errorf("%w: ConfigMap %s/%s has no binaryData key %q", ErrUnreachable, namespace, ref.Name, ref.Key)
	}
	return b, nil
}

func (f *Fetcher) fromURL(ctx context.Context, url string) ([]byte, error) {
	hc := f.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	backoff := fetchBackoff
	var last error
	for attempt := range fetchAttempts {
		if attempt > 0 {
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil, fmt.Errorf("%w: %s: %v", ErrUnreachable, url, ctx.Err())
			}
			backoff *= 2
		}
		b, retry, err := get(ctx, hc, url)
		if err == nil {
			return b, nil
		}
		last = err
		if !retry {
			break
		}
	}
	return nil, fmt.Errorf("%w: %s: %v", ErrUnreachable, url, last)
}

// get fetches url once; retry says whether another attempt may succeed.
func get(ctx context.Context, hc *http.Client, url string) (b []byte, retry bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, false, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, true, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests, fmt.Errorf("HTTP %s", resp.Status)
	}
	b, err = io.ReadAll(io.LimitReader(resp.Body, MaxPackBytes+1))
	if err != nil {
		return nil, true, err
	}
	if len(b) > MaxPackBytes {
		return nil, false, fmt.Errorf("pack is larger than %d bytes", MaxPackBytes)
	}
	return b, false, nil
}

func (f *Fetcher) fromImage(ctx context.Context, namespace, image string, pullSecrets []packhostv1alpha1.LocalObjectReference, resolved string) ([]byte, string, error) {
	var opts []name.Option
	if f.Insecure {
		opts = append(opts, name.Insecure)
	}
	refText := image
	if resolved != "" {
		refText = resolved // a tag resolves once per Revision
	}
	ref, err := name.ParseReference(refText, opts...)
	if err != nil {
		return nil, "", fmt.Errorf("%w: image %q: %v", ErrInvalidSource, refText, err)
	}
	keychain, err := f.keychain(ctx, namespace, pullSecrets)
	if err != nil {
		return nil, "", err
	}
	ropts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(keychain)}
	desc, err := remote.Get(ref, ropts...)
	if err != nil {
		return nil, "", fmt.Errorf("%w: image %s: %v", ErrUnreachable, refText, err)
	}
	pinned := ref.Context().Digest(desc.Digest.String()).String()
	img, err := desc.Image()
	if err != nil {
		return nil, "", fmt.Errorf("%w: image %s is not an image manifest: %v", ErrInvalidSource, refText, err)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, "", fmt.Errorf("%w: image %s: %v", ErrUnreachable, refText, err)
	}
	var wasm v1.Layer
	for _, l := range layers {
		mt, err := l.MediaType()
		if err == nil && string(mt) == WasmLayerMediaType {
			if wasm != nil {
				return nil, "", fmt.Errorf("%w: image %s has more than one %s layer", ErrInvalidSource, refText, WasmLayerMediaType)
			}
			wasm = l
		}
	}
	if wasm == nil {
		return nil, "", fmt.Errorf("%w: image %s has no layer of media type %s", ErrInvalidSource, refText, WasmLayerMediaType)
	}
	if size, err := wasm.Size(); err == nil && size > MaxPackBytes {
		return nil, "", fmt.Errorf("%w: image %s's wasm layer is %d bytes, past %d", ErrInvalidSource, refText, size, MaxPackBytes)
	}
	rc, err := wasm.Compressed()
	if err != nil {
		return nil, "", fmt.Errorf("%w: image %s: %v", ErrUnreachable, refText, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, MaxPackBytes+1))
	if err != nil {
		return nil, "", fmt.Errorf("%w: image %s: %v", ErrUnreachable, refText, err)
	}
	return b, pinned, nil
}

// keychain builds registry credentials from the Revision's image pull Secrets
// (kubernetes.io/dockerconfigjson).
func (f *Fetcher) keychain(ctx context.Context, namespace string, refs []packhostv1alpha1.LocalObjectReference) (authn.Keychain, error) {
	if len(refs) == 0 {
		return authn.DefaultKeychain, nil
	}
	var kcs []authn.Keychain
	for _, r := range refs {
		s := &corev1.Secret{}
		if err := f.Reader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: r.Name}, s); err != nil {
			return nil, fmt.Errorf("%w: image pull Secret %s/%s: %v", ErrUnreachable, namespace, r.Name, err)
		}
		data, ok := s.Data[corev1.DockerConfigJsonKey]
		if !ok {
			return nil, fmt.Errorf("%w: image pull Secret %s/%s has no %s key", ErrInvalidSource, namespace, r.Name, corev1.DockerConfigJsonKey)
		}
		kc, err := dockerConfigKeychain(data)
		if err != nil {
			return nil, fmt.Errorf("%w: image pull Secret %s/%s: %v", ErrInvalidSource, namespace, r.Name, err)
		}
		kcs = append(kcs, kc)
	}
	return authn.NewMultiKeychain(kcs...), nil
}
