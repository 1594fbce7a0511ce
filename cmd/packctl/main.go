// Command packctl builds, inspects and publishes packhost packs.
//
//	packctl pack -manifest manifest.json -o out.wasm module.wasm
//	packctl inspect out.wasm
//	packctl push out.wasm registry.example.com/packs/echo:v1
//
// pack embeds a manifest into a built module as its packhost.manifest custom section,
// after checking it; inspect prints a pack's manifest, imports, exports and sha256; push
// publishes a pack to an OCI registry as the artifact a Revision's image source pulls
// (packs.ArtifactType, readable by `oras pull`) and prints what to pin: the image by
// manifest digest and the pack's sha256.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/tetratelabs/wazero"

	"github.com/packhost/packhost/runtime"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "packctl:", err)
		os.Exit(1)
	}
}

const usage = `usage:
  packctl pack -manifest manifest.json -o out.wasm module.wasm
  packctl inspect [-json] pack.wasm
  packctl push [-insecure] [-json] pack.wasm registry/repository:tag`

func run(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("no command\n%s", usage)
	}
	switch args[0] {
	case "pack":
		return pack(args[1:])
	case "inspect":
		return inspect(args[1:], stdout)
	case "push":
		return push(context.Background(), args[1:], stdout)
	default:
		return fmt.Errorf("unknown command %q\n%s", args[0], usage)
	}
}

func pack(args []string) error {
	fs := flag.NewFlagSet("pack", flag.ContinueOnError)
	manifestPath := fs.String("manifest", "manifest.json", "the pack's manifest (JSON)")
	out := fs.String("o", "", "where to write the pack (default: overwrite the module)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("pack takes one module\n%s", usage)
	}
	module, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	manifest, err := os.ReadFile(*manifestPath)
	if err != nil {
		return err
	}
	packed, err := runtime.EmbedManifest(module, manifest)
	if err != nil {
		return fmt.Errorf("%s: %w", *manifestPath, err)
	}
	if *out == "" {
		*out = fs.Arg(0)
	}
	return os.WriteFile(*out, packed, 0o644)
}

// Inspection is what inspect prints.
type Inspection struct {
	SHA256   string            `json:"sha256"`
	Size     int               `json:"size"`
	Manifest *runtime.Manifest `json:"manifest"`
	Imports  []string          `json:"imports"`
	Exports  []string          `json:"exports"`
}

func inspect(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("inspect takes one pack\n%s", usage)
	}
	module, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	m, err := runtime.ReadManifest(module)
	if err != nil {
		return err
	}
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	compiled, err := rt.CompileModule(ctx, module)
	if err != nil {
		return fmt.Errorf("compile: %w", err)
	}
	sum := sha256.Sum256(module)
	in := Inspection{SHA256: hex.EncodeToString(sum[:]), Size: len(module), Manifest: m}
	for _, def := range compiled.ImportedFunctions() {
		mod, name, _ := def.Import()
		in.Imports = append(in.Imports, mod+"."+name)
	}
	for name := range compiled.ExportedFunctions() {
		in.Exports = append(in.Exports, name)
	}
	for name := range compiled.ExportedMemories() {
		in.Exports = append(in.Exports, name+" (memory)")
	}
	sort.Strings(in.Imports)
	sort.Strings(in.Exports)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(in)
	}
	manifest, _ := json.MarshalIndent(m, "  ", "  ")
	fmt.Fprintf(stdout, "sha256:   %s\nsize:     %d bytes\nmanifest: %s\nimports:\n", in.SHA256, in.Size, manifest)
	for _, i := range in.Imports {
		fmt.Fprintf(stdout, "  %s\n", i)
	}
	fmt.Fprintln(stdout, "exports:")
	for _, e := range in.Exports {
		fmt.Fprintf(stdout, "  %s\n", e)
	}
	return nil
}
