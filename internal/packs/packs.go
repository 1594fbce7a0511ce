// Package packs builds the sample and hostile packs under examples/packs for tests and
// benchmarks, the way `make packs` does: a wasip1 reactor build, then the manifest
// embedded by runtime.EmbedManifest.
package packs

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"

	"github.com/packhost/packhost/internal/wasmbin"
	"github.com/packhost/packhost/runtime"
)

var (
	mu    sync.Mutex
	built = map[string][]byte{}
)

// Root is the examples/packs directory.
func Root() string {
	_, file, _, _ := goruntime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "examples", "packs")
}

// Build returns the pack built from examples/packs/<name> (for example "echo" or
// "hostile/loop"), building it once per process, or one of the hand-assembled hostile
// packs (asm.go: "hostile/recursion", "hostile/deep-recursion", "hostile/table-bomb",
// "hostile/fill-recursion", "hostile/slow-start").
func Build(name string) ([]byte, error) {
	mu.Lock()
	defer mu.Unlock()
	if b, ok := built[name]; ok {
		return b, nil
	}
	if asm, ok := assembled[name]; ok {
		built[name] = asm()
		return built[name], nil
	}
	dir := filepath.Join(Root(), name)
	out := filepath.Join(Root(), "..", "..", "bin", "packs", strings.ReplaceAll(name, "/", "-")+".wasm")
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return nil, err
	}
	cmd := exec.Command("go", "build", "-buildmode=c-shared", "-trimpath", "-ldflags=-s -w", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build pack %s: %v\n%s", name, err, msg)
	}
	module, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	manifest, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return nil, err
	}
	pack, err := runtime.EmbedManifest(module, manifest)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", name, err)
	}
	if err := os.WriteFile(out, pack, 0o644); err != nil {
		return nil, err
	}
	built[name] = pack
	return pack, nil
}

// WithManifest returns pack with its manifest replaced by manifest, unchecked: for
// tests of what the host does with a bad one.
func WithManifest(pack []byte, manifest string) []byte {
	return wasmbin.Append(wasmbin.Strip(pack, runtime.ManifestSection), runtime.ManifestSection, []byte(manifest))
}

// Revision builds and compiles the named packs (main first) and starts a revision of
// them with cfg; cfg.Packs is filled in.
func Revision(ctx context.Context, e *runtime.Engine, cfg runtime.RevisionConfig, names ...string) (*runtime.Revision, error) {
	cfg.Packs = nil
	for _, name := range names {
		b, err := Build(name)
		if err == nil {
			var p *runtime.Pack
			if p, err = e.Compile(ctx, b); err == nil {
				cfg.Packs = append(cfg.Packs, p)
				continue
			}
		}
		for _, p := range cfg.Packs {
			e.Release(ctx, p)
		}
		return nil, err
	}
	return e.NewRevision(ctx, cfg)
}
