// Package source fetches a Revision's packs from their sources (a ConfigMap key, an
// http(s) URL, an OCI artifact), verifies their sha256, and keeps them in a
// content-addressed local cache so a pack already fetched by digest is never fetched
// again.
//
// # Egress policy
//
// A url or image source is named by a namespace user, so the manager must not become
// their way into the cluster's own network. Every connection of a url or image fetch —
// the first, each redirect, a registry's token endpoint, a blob redirected to storage —
// is judged at connect time, in the dialer's Control hook, on the IP address about to
// be connected to (after DNS, so a name that resolves or rebinds to an internal address
// is refused, and 2130706433, 0x7f.1 or ::ffff:127.0.0.1 are judged as 127.0.0.1). By
// default loopback, unspecified (0.0.0.0, ::), private (RFC 1918, 100.64.0.0/10, IPv6 ULA
// fc00::/7), link-local (169.254.0.0/16, where cloud metadata lives, and fe80::/10),
// multicast, broadcast and reserved addresses are refused; EgressPolicy lists them all.
// The operator allows more with --source-allow (CIDRs, addresses, or host names, which
// may then resolve anywhere: --source-allow=127.0.0.1/32,registry.internal) and denies
// the cluster's pod and service ranges with --source-deny (they vary per cluster). No
// HTTP proxy is used: a proxy would hide the address from the policy. Redirects go only
// to allowed addresses, at most 5 of them, never from https to http.
//
// # Bounds
//
// One try of a source takes at most 30 s (connect 5 s, TLS handshake 10 s); a try that
// may pass on another go (connection failed, HTTP 5xx or 429) is repeated up to 3 times
// with a jittered, doubling wait from 0.5 s. A source whose fetch ends unreachable is
// held back (Fetch answers with its last error, without network I/O) for 10 s, doubling
// with each failure in a row up to 5 min, ±20%. Bodies are cut off as soon as they pass
// their limit, checked against Content-Length first: an OCI manifest or index, and any
// other registry answer but a blob, ≤ MaxManifestBytes (4 MiB); a pack, from a url or as
// an image layer, ≤ MaxPackBytes (64 MiB), hashed as it streams in.
//
// # Errors
//
// Errors are *Error values whose message names the source and the class of failure —
// "fetch url https://example.com/p.wasm: blocked by egress policy", "…: HTTP 404",
// "…: connection failed", "…: timed out after 30s", "…: digest mismatch (want <the
// pinned sha256>)" — and never anything the source sent (a body, a status text) nor the
// digest of bytes nobody pinned, so a Revision's status cannot be used to read or probe
// what the manager can reach. Callers branch with errors.Is on ErrSourceUnreachable,
// ErrInvalidSource (of which ErrEgressDenied and ErrSourceTooLarge are kinds) and
// ErrDigestMismatch.
package source

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/google/go-containerregistry/pkg/name"
	packhostv1alpha1 "github.com/packhost/packhost/api/v1alpha1"
)

// MaxPackBytes is the largest pack fetched from any source.
const MaxPackBytes = 64 << 20

// Fetched is one pack's bytes and where they came from.
type Fetched struct {
	Bytes []byte
	// Digest is "sha256:<hex>" of Bytes.
	Digest string
	// ResolvedImage pins an image source to its manifest digest (repo@sha256:...).
	ResolvedImage string
}

// Fetcher fetches packs. Reader reads ConfigMaps and Secrets straight from the API
// server (not through a cache of every ConfigMap). Its zero value (with a Reader) fetches
// under the default egress policy.
type Fetcher struct {
	Reader   client.Reader
	CacheDir string
	// Egress decides where url and image sources may connect; nil is the default policy
	// (no loopback, private, link-local, multicast or reserved addresses).
	Egress *EgressPolicy
	// Insecure allows plain-http registries (tests, local registries). The egress policy
	// still decides which addresses may be reached.
	Insecure bool
	// Clock tells the time for holding back failed sources; nil is time.Now.
	Clock func() time.Time

	rtOnce sync.Once
	rt     http.RoundTripper
	holds  holds
	// grants records which source gave which pack (see Fetch).
	grantsMu sync.Mutex
	grants   map[string]string // key NUL digest: the image it resolved to, if any
	// rootCAs and tryTimeout replace the system's roots and tryTimeout in tests.
	rootCAs    *x509.CertPool
	tryTimeout time.Duration
}

// transport is the one transport of every url and image fetch, built on first use.
func (f *Fetcher) transport() http.RoundTripper {
	f.rtOnce.Do(func() { f.rt = newTransport(f.Egress, f.rootCAs) })
	return f.rt
}

// Fetch returns pack's bytes. resolvedImage, when not empty, is the digest-pinned image
// a previous fetch resolved the pack's tag to; it is used instead of the tag.
//
// The local cache serves a pack only to a source that has given that pack before: a
// url or image source, in this namespace, with these pull Secrets, that was fetched
// and had the pinned digest (recorded next to the cache, so it holds across restarts).
// A ConfigMap source is always read: reading it is what authorizes it, and costs no
// more than the cache. So pinning another tenant's digest gets nothing from the cache.
func (f *Fetcher) Fetch(ctx context.Context, namespace string, pack packhostv1alpha1.Pack, pullSecrets []packhostv1alpha1.LocalObjectReference, resolvedImage string) (*Fetched, error) {
	grant := grantKey(namespace, pack, pullSecrets)
	if pack.SHA256 != "" && grant != "" {
		if resolved, ok := f.granted(grant, pack.SHA256); ok {
			if b, err := f.cached(pack.SHA256); err == nil {
				if resolvedImage == "" {
					resolvedImage = resolved // what the tag resolved to when the source gave it
				}
				return &Fetched{Bytes: b, Digest: "sha256:" + pack.SHA256, ResolvedImage: resolvedImage}, nil
			}
		}
	}
	var (
		b      []byte
		digest string
		src    string
		out    = &Fetched{}
		err    error
	)
	switch {
	case pack.ConfigMapRef != nil:
		src = fmt.Sprintf("ConfigMap %s/%s key %s", namespace, pack.ConfigMapRef.Name, pack.ConfigMapRef.Key)
		if b, err = f.fromConfigMap(ctx, namespace, pack.ConfigMapRef); err == nil {
			s := sha256.Sum256(b)
			digest = hex.EncodeToString(s[:])
		}
	case pack.URL != "":
		src = describeURL(pack.URL)
		b, digest, err = f.fromURL(ctx, namespace, pack.URL)
	case pack.Image != "":
		src = "image " + pack.Image
		if resolvedImage != "" {
			src = "image " + resolvedImage
		}
		b, digest, out.ResolvedImage, err = f.fromImage(ctx, namespace, pack.Image, pullSecrets, resolvedImage)
	default:
		err = fmt.Errorf("%w: pack %s has no source", ErrInvalidSource, pack.Name)
	}
	if err != nil {
		return nil, err
	}
	// The message names the digest the Revision pins, never the one the bytes have: that
	// would tell a namespace user a digest of content nobody asked for.
	if pack.SHA256 != "" && digest != pack.SHA256 {
		return nil, &Error{Source: src, Detail: fmt.Sprintf("digest mismatch (want %s)", pack.SHA256), Class: ErrDigestMismatch}
	}
	if err := f.store(digest, b); err != nil {
		return nil, err
	}
	if grant != "" {
		f.grant(grant, digest, out.ResolvedImage)
	}
	out.Bytes, out.Digest = b, "sha256:"+digest
	return out, nil
}

// grantKey names what a cached pack may be served to: a url or image source of one
// namespace, with its pull Secrets. It is empty for sources the cache never serves.
func grantKey(namespace string, pack packhostv1alpha1.Pack, pullSecrets []packhostv1alpha1.LocalObjectReference) string {
	switch {
	case pack.URL != "":
		return namespace + "\x00url\x00" + pack.URL
	case pack.Image != "":
		key := namespace + "\x00image\x00" + pack.Image
		for _, s := range pullSecrets {
			key += "\x00" + s.Name
		}
		return key
	}
	return ""
}

// grantPath is the file that records that source key gave the pack hexDigest.
func (f *Fetcher) grantPath(key, hexDigest string) string {
	sum := sha256.Sum256([]byte(key + "\x00" + hexDigest))
	return filepath.Join(f.CacheDir, "packs", "granted", hex.EncodeToString(sum[:]))
}

// granted reports whether source key gave the pack hexDigest before, and for an image
// source the digest-pinned image it was resolved to then.
func (f *Fetcher) granted(key, hexDigest string) (resolvedImage string, ok bool) {
	f.grantsMu.Lock()
	resolvedImage, ok = f.grants[key+"\x00"+hexDigest]
	f.grantsMu.Unlock()
	if ok || f.CacheDir == "" {
		return resolvedImage, ok
	}
	b, err := os.ReadFile(f.grantPath(key, hexDigest))
	if err != nil {
		return "", false
	}
	// The record is the fetcher's own file, but what goes to a Revision's status must be
	// a digest reference: anything else is taken as no record.
	if _, err := name.NewDigest(string(b)); err == nil && len(b) > 0 {
		return string(b), true
	}
	return "", len(b) == 0
}

// grant records that source key gave the pack hexDigest, resolved from resolvedImage
// for an image source. A record lost on disk (the cache pruner may remove it) only
// costs a fetch.
func (f *Fetcher) grant(key, hexDigest, resolvedImage string) {
	f.grantsMu.Lock()
	if f.grants == nil {
		f.grants = map[string]string{}
	}
	f.grants[key+"\x00"+hexDigest] = resolvedImage
	f.grantsMu.Unlock()
	if f.CacheDir == "" {
		return
	}
	p := f.grantPath(key, hexDigest)
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err == nil {
		_ = os.WriteFile(p, []byte(resolvedImage), 0o640)
	}
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
			return nil, fmt.Errorf("%w: ConfigMap %s/%s not found", ErrSourceUnreachable, namespace, ref.Name)
		}
		return nil, fmt.Errorf("%w: read ConfigMap %s/%s: %v", ErrSourceUnreachable, namespace, ref.Name, err)
	}
	b, ok := cm.BinaryData[ref.Key]
	if !ok {
		if _, inData := cm.Data[ref.Key]; inData {
			return nil, fmt.Errorf("%w: ConfigMap %s/%s has key %q in data; a pack must be in binaryData (kubectl create configmap --from-file does this)", ErrInvalidSource, namespace, ref.Name, ref.Key)
		}
		return nil, fmt.Errorf("%w: ConfigMap %s/%s has no binaryData key %q", ErrSourceUnreachable, namespace, ref.Name, ref.Key)
	}
	return b, nil
}
