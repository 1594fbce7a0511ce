package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/packhost/packhost/internal/packs"
	"github.com/packhost/packhost/internal/wasmbin"
	"github.com/packhost/packhost/runtime"
)

func TestPackThenInspect(t *testing.T) {
	built, err := packs.Build("counter")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	module := filepath.Join(dir, "counter.wasm")
	if err := os.WriteFile(module, wasmbin.Strip(built, runtime.ManifestSection), 0o644); err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(dir, "manifest.json")
	if err := os.WriteFile(manifest, []byte(`{"abi":1,"pack_id":"counter","version":"2.0.0","flows":[{"id":"count","entry":true}],"capabilities":{"state":{"read":true,"write":true}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "counter.pack.wasm")
	if err := run([]string{"pack", "-manifest", manifest, "-o", out, module}, nil); err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	if err := run([]string{"inspect", "-json", out}, &stdout); err != nil {
		t.Fatal(err)
	}
	var in Inspection
	if err := json.Unmarshal(stdout.Bytes(), &in); err != nil {
		t.Fatal(err)
	}
	if in.Manifest.Version != "2.0.0" || len(in.SHA256) != 64 || !slices.Contains(in.Imports, "packhost.state_set") || !slices.Contains(in.Exports, "packhost_handle") {
		t.Fatalf("inspect: %+v", in)
	}
}

func TestPackRefusesBadManifest(t *testing.T) {
	built, err := packs.Build("echo")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	module := filepath.Join(dir, "echo.wasm")
	manifest := filepath.Join(dir, "manifest.json")
	_ = os.WriteFile(module, built, 0o644)
	_ = os.WriteFile(manifest, []byte(`{"abi":7,"pack_id":"echo","flows":[{"id":"f"}]}`), 0o644)
	err = run([]string{"pack", "-manifest", manifest, module}, nil)
	if err == nil || !strings.Contains(err.Error(), "abi 7 is not supported") {
		t.Fatalf("got %v", err)
	}
	after, _ := os.ReadFile(module)
	if !bytes.Equal(after, built) {
		t.Fatal("a refused pack command changed the module")
	}
}
