package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/packhost/packhost/internal/packs"
	"github.com/packhost/packhost/runtime"
)

// Pushed is what push prints: how a Revision pins the pack it pushed.
type Pushed struct {
	// Image is the pushed artifact by manifest digest, for packs[].image.
	Image string `json:"image"`
	// Digest is the manifest's digest.
	Digest string `json:"digest"`
	// SHA256 is the pack's own sha256 (the wasm layer's digest), for packs[].sha256.
	SHA256 string `json:"sha256"`
	// Tag is the reference pushed to, as given.
	Tag string `json:"tag"`
}

func push(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("push", flag.ContinueOnError)
	insecure := fs.Bool("insecure", false, "use plain HTTP (localhost, 127.0.0.1 and private addresses always do)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return fmt.Errorf("push takes a pack and a reference\n%s", usage)
	}
	file, target := fs.Arg(0), fs.Arg(1)
	wasm, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	// A pack that the host would refuse is refused here, before it is published.
	if _, err := runtime.ReadManifest(wasm); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	var opts []name.Option
	if *insecure {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.ParseReference(target, opts...)
	if err != nil {
		return fmt.Errorf("parse reference %q: %w", target, err)
	}
	if _, ok := ref.(name.Digest); ok {
		return fmt.Errorf("push to %s: push to a tag; the digest is printed after the push", target)
	}
	a, err := packs.NewArtifact(wasm, filepath.Base(file), time.Now())
	if err != nil {
		return err
	}
	if err := a.Push(ctx, ref, remote.WithAuthFromKeychain(authn.DefaultKeychain), remote.WithUserAgent("packctl")); err != nil {
		return err
	}
	out := Pushed{
		Image:  ref.Context().Digest(a.Digest.String()).String(),
		Digest: a.Digest.String(),
		SHA256: a.SHA256,
		Tag:    ref.String(),
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	_, err = fmt.Fprintf(stdout, "pushed %s\nimage:  %s\ndigest: %s\nsha256: %s\n", out.Tag, out.Image, out.Digest, out.SHA256)
	return err
}
