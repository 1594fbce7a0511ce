// Command image builds packhost's manager image without a container engine (`make
// image`): it cross-compiles the manager as a static binary (CGO_ENABLED=0) per platform
// and assembles the image with go-containerregistry, layer by layer onto an empty image,
// into a multi-platform OCI index.
//
//	go run ./hack/image -image registry.example.com/packhost/manager:v0.1.0 \
//	    -platforms linux/amd64,linux/arm64 -version v0.1.0 -revision $(git rev-parse HEAD)
//
// Each image has two layers and nothing else: a base layer (/etc/passwd and /etc/group
// naming root and nonroot (65532), the CA certificates at
// /etc/ssl/certs/ca-certificates.crt, /tmp and /home/nonroot) and the binary, /manager.
// There is no shell, no package manager and no libc: what distroless/static:nonroot
// holds, less its tzdata and license files. The config runs /manager as 65532:65532 and
// carries the OCI labels org.opencontainers.image.{title,version,revision,source,created}.
//
// The CA certificates are the build machine's (-ca-certs, by default
// /etc/ssl/certs/ca-certificates.crt, the Debian/Ubuntu/Alpine bundle): the manager
// needs them to fetch packs from https registries and URLs. Build where that bundle is
// current.
//
// Every file has the modification time of -created (by default the Unix epoch) and
// fixed owners, and the layers are gzipped deterministically, so the same binaries give
// the same digests.
//
// When -image names a registry (its first path element has a "." or a ":" or is
// localhost, as Docker reads references) the index is pushed there with the credentials
// of ~/.docker/config.json; otherwise (the Makefile's default packhost/manager:dev) it
// is written as an OCI layout tarball to -o, tagged with -image, for `skopeo copy
// oci-archive:...`, `ctr images import` or `kind load image-archive`.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// User is the uid and gid the manager runs as: distroless's nonroot, which
// config/manager's securityContext names too.
const User = "65532:65532"

// Entrypoint is the manager binary's path in the image.
const Entrypoint = "/manager"

// CACertsPath is where the image holds the CA certificates, where Go's crypto/x509 looks
// first on Linux.
const CACertsPath = "etc/ssl/certs/ca-certificates.crt"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

// options are the image's inputs.
type options struct {
	// Image is the reference to push to or to tag the layout with.
	Image string
	// Out is the OCI layout tarball written when Image names no registry.
	Out string
	// Platforms to build, linux only.
	Platforms []v1.Platform
	// Labels: version, revision and source repository.
	Version, Revision, Source string
	// Created is the time of every file and of the config.
	Created time.Time
	// CACerts is the PEM bundle of CA certificates to ship.
	CACerts string
	// Insecure pushes over plain HTTP.
	Insecure bool
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	o := options{}
	var platforms string
	var created int64
	fs.StringVar(&o.Image, "image", "packhost/manager:dev", "reference to push to (when it names a registry) or to tag the OCI layout with")
	fs.StringVar(&o.Out, "o", "bin/manager-image.tar", "the OCI layout tarball written when -image names no registry")
	fs.StringVar(&platforms, "platforms", "linux/amd64,linux/arm64", "comma-separated platforms (linux/<GOARCH>)")
	fs.StringVar(&o.Version, "version", "dev", "org.opencontainers.image.version")
	fs.StringVar(&o.Revision, "revision", "", "org.opencontainers.image.revision (the commit)")
	fs.StringVar(&o.Source, "source", "https://github.com/packhost/packhost", "org.opencontainers.image.source")
	fs.Int64Var(&created, "created", 0, "creation time in Unix seconds (SOURCE_DATE_EPOCH); every file has it")
	fs.StringVar(&o.CACerts, "ca-certs", "/etc/ssl/certs/ca-certificates.crt", "PEM bundle of CA certificates to ship")
	fs.BoolVar(&o.Insecure, "insecure", false, "push over plain HTTP (localhost and private addresses always do)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	o.Created = time.Unix(created, 0).UTC()
	for _, s := range strings.Split(platforms, ",") {
		p, err := v1.ParsePlatform(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("platform %q: %w", s, err)
		}
		if p.OS != "linux" {
			return fmt.Errorf("platform %q: the manager image is linux only", s)
		}
		o.Platforms = append(o.Platforms, *p)
	}
	certs, err := os.ReadFile(o.CACerts)
	if err != nil {
		return fmt.Errorf("read CA certificates: %w", err)
	}

	dir, err := os.MkdirTemp("", "packhost-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	binaries := map[string][]byte{}
	for _, p := range o.Platforms {
		out := filepath.Join(dir, "manager-"+p.Architecture)
		fmt.Fprintf(stdout, "image: building the manager for %s\n", p)
		if err := BuildManager(ctx, ".", p.Architecture, out); err != nil {
			return err
		}
		if binaries[p.String()], err = os.ReadFile(out); err != nil {
			return err
		}
	}
	idx, err := Assemble(o, binaries, certs)
	if err != nil {
		return err
	}
	where, err := Publish(ctx, o, idx)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, "image:", where)
	return nil
}

// BuildManager compiles ./cmd/manager of the module in root for linux/goarch into out,
// static (CGO_ENABLED=0), reproducible (-trimpath, no build id) and stripped.
func BuildManager(ctx context.Context, root, goarch, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", out, "./cmd/manager")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build the manager for linux/%s: %w\n%s", goarch, err, b)
	}
	return nil
}

// Static reports an error unless bin is a Linux ELF executable without a dynamic
// loader: one that runs with no libc in the image.
func Static(bin []byte) error {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return fmt.Errorf("read the manager binary: %w", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("the manager binary is dynamically linked (build it with CGO_ENABLED=0)")
		}
	}
	return nil
}

// Labels are the OCI labels of the image config (and annotations of the index).
func Labels(o options) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":   "packhost manager",
		"org.opencontainers.image.version": o.Version,
		"org.opencontainers.image.source":  o.Source,
		"org.opencontainers.image.created": o.Created.Format(time.RFC3339),
	}
	if o.Revision != "" {
		l["org.opencontainers.image.revision"] = o.Revision
	}
	return l
}

// Assemble builds the index of one image per platform; binaries holds the manager
// binary per platform (v1.Platform.String()).
func Assemble(o options, binaries map[string][]byte, certs []byte) (v1.ImageIndex, error) {
	base, err := layer(baseFiles(certs), o.Created)
	if err != nil {
		return nil, fmt.Errorf("base layer: %w", err)
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range o.Platforms {
		bin, ok := binaries[p.String()]
		if !ok {
			return nil, fmt.Errorf("no manager binary for %s", p)
		}
		img, err := platformImage(o, p, base, bin)
		if err != nil {
			return nil, fmt.Errorf("image for %s: %w", p, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	return mutate.Annotations(idx, Labels(o)).(v1.ImageIndex), nil
}

func platformImage(o options, p v1.Platform, base v1.Layer, bin []byte) (v1.Image, error) {
	if err := Static(bin); err != nil {
		return nil, err
	}
	binLayer, err := layer([]file{{name: Entrypoint[1:], mode: 0o755, data: bin}}, o.Created)
	if err != nil {
		return nil, fmt.Errorf("binary layer: %w", err)
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: p.Architecture,
		Variant:      p.Variant,
		OS:           p.OS,
		Created:      v1.Time{Time: o.Created},
		Config: v1.Config{
			User:       User,
			Entrypoint: []string{Entrypoint},
			WorkingDir: "/",
			Env:        []string{"SSL_CERT_FILE=/" + CACertsPath},
			Labels:     Labels(o),
		},
	})
	if err != nil {
		return nil, err
	}
	history := func(by string) v1.History {
		return v1.History{Created: v1.Time{Time: o.Created}, CreatedBy: by, Comment: "hack/image"}
	}
	return mutate.Append(img,
		mutate.Addendum{Layer: base, MediaType: types.OCILayer, History: history("users, groups, CA certificates, /tmp")},
		mutate.Addendum{Layer: binLayer, MediaType: types.OCILayer, History: history("the manager, CGO_ENABLED=0 GOOS=linux GOARCH=" + p.Architecture)},
	)
}

// file is one entry of a layer: a directory when data is nil and mode has fs.ModeDir.
type file struct {
	name     string
	mode     fs.FileMode
	uid, gid int
	data     []byte
}

// baseFiles are the files every image has besides the binary.
func baseFiles(certs []byte) []file {
	return []file{
		{name: "etc", mode: fs.ModeDir | 0o755},
		{name: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{name: "etc/group", mode: 0o644, data: []byte("root:x:0:\nnonroot:x:65532:\n")},
		{name: "etc/ssl", mode: fs.ModeDir | 0o755},
		{name: "etc/ssl/certs", mode: fs.ModeDir | 0o755},
		{name: CACertsPath, mode: 0o644, data: certs},
		{name: "home", mode: fs.ModeDir | 0o755},
		{name: "home/nonroot", mode: fs.ModeDir | 0o700, uid: 65532, gid: 65532},
		{name: "tmp", mode: fs.ModeDir | fs.ModeSticky | 0o777},
	}
}

// layer is a gzipped OCI layer of files, each with time mtime.
func layer(files []file, mtime time.Time) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: int64(f.mode.Perm()), Uid: f.uid, Gid: f.gid, ModTime: mtime, Format: tar.FormatPAX}
		if f.mode&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		if f.mode.IsDir() {
			h.Typeflag, h.Name = tar.TypeDir, f.name+"/"
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
}

// NamesRegistry reports whether ref names a registry host, as Docker reads a reference:
// its first path element has a "." or a ":" or is "localhost".
func NamesRegistry(ref string) bool {
	first, _, ok := strings.Cut(ref, "/")
	return ok && (strings.ContainsAny(first, ".:") || first == "localhost")
}

// Publish pushes idx to o.Image when it names a registry, or else writes an OCI layout
// tarball to o.Out. It returns what it did, naming the index digest.
func Publish(ctx context.Context, o options, idx v1.ImageIndex) (string, error) {
	var opts []name.Option
	if o.Insecure {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.NewTag(o.Image, opts...)
	if err != nil {
		return "", fmt.Errorf("image %q (a tag): %w", o.Image, err)
	}
	digest, err := idx.Digest()
	if err != nil {
		return "", err
	}
	if NamesRegistry(o.Image) {
		if err := remote.WriteIndex(ref, idx, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
			return "", fmt.Errorf("push %s: %w", ref, err)
		}
		return fmt.Sprintf("pushed %s (%s)", ref.Context().Digest(digest.String()), ref), nil
	}
	if err := WriteLayout(o.Out, ref, idx); err != nil {
		return "", err
	}
	return fmt.Sprintf("wrote %s holding %s@%s (%q names no registry, so nothing was pushed)", o.Out, ref, digest, o.Image), nil
}

// WriteLayout writes idx as an OCI image layout tarball at path, its index.json naming
// it by ref (org.opencontainers.image.ref.name: the tag; io.containerd.image.name: the
// whole reference).
func WriteLayout(path string, ref name.Tag, idx v1.ImageIndex) error {
	dir, err := os.MkdirTemp("", "packhost-layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("write OCI layout: %w", err)
	}
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": ref.TagStr(),
		"io.containerd.image.name":          ref.Name(),
	})); err != nil {
		return fmt.Errorf("write OCI layout: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return tarDir(dir, path)
}

// tarDir writes the files under dir into a tarball at path, sorted by name.
func tarDir(dir, path string) error {
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			names = append(names, p)
		}
		return err
	})
	if err != nil {
		return err
	}
	sort.Strings(names)
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	defer out.Close()
	tw := tar.NewWriter(out)
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, n)
		if err := tw.WriteHeader(&tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		if _, err := tw.Write(b); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return out.Close()
}
