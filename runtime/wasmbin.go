package runtime

import (
	"fmt"

	"github.com/packhost/packhost/internal/wasmbin"
)

// EmbedManifest returns module with manifest as its packhost.manifest custom section,
// replacing any there was. The manifest is checked first, so a pack never carries one
// the host would refuse.
func EmbedManifest(module, manifest []byte) ([]byte, error) {
	if _, err := ParseManifest(manifest); err != nil {
		return nil, err
	}
	if _, err := wasmbin.CustomSections(module); err != nil {
		return nil, err
	}
	return wasmbin.Append(wasmbin.Strip(module, ManifestSection), ManifestSection, manifest), nil
}

// ReadManifest returns the pack's manifest from its custom section.
func ReadManifest(module []byte) (*Manifest, error) {
	sections, err := wasmbin.CustomSections(module)
	if err != nil {
		return nil, err
	}
	var found []byte
	count := 0
	for _, s := range sections {
		if s.Name == ManifestSection {
			found, count = s.Data, count+1
		}
	}
	switch count {
	case 0:
		return nil, fmt.Errorf("no %s custom section: build the pack with `packctl pack`", ManifestSection)
	case 1:
		return ParseManifest(found)
	default:
		return nil, fmt.Errorf("%d %s custom sections; a pack carries exactly one", count, ManifestSection)
	}
}
