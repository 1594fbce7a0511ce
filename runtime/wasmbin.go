package runtime

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

var wasmHeader = []byte{0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00}

// customSection is a custom section found in a module's binary.
type customSection struct {
	name  string
	data  []byte
	start int // offset of the section id byte
	end   int // offset just past the section
}

// readCustomSections walks the top-level sections of a wasm binary and returns its custom
// sections. It checks only the section framing, not the module.
func readCustomSections(module []byte) ([]customSection, error) {
	if !bytes.HasPrefix(module, wasmHeader) {
		return nil, errors.New("not a WebAssembly 1.0 binary module (bad magic or version)")
	}
	var out []customSection
	for off := len(wasmHeader); off < len(module); {
		start := off
		id := module[off]
		off++
		size, n := binary.Uvarint(module[off:])
		if n <= 0 || size > uint64(len(module)-off-n) {
			return nil, fmt.Errorf("section at offset %d has a bad size", start)
		}
		off += n
		body := module[off : off+int(size)]
		off += int(size)
		if id != 0 {
			continue
		}
		nameLen, m := binary.Uvarint(body)
		if m <= 0 || nameLen > uint64(len(body)-m) {
			return nil, fmt.Errorf("custom section at offset %d has a bad name", start)
		}
		out = append(out, customSection{
			name:  string(body[m : m+int(nameLen)]),
			data:  body[m+int(nameLen):],
			start: start,
			end:   off,
		})
	}
	return out, nil
}

// EmbedManifest returns module with manifest as its packhost.manifest custom section,
// replacing any there was. The manifest is checked first, so a pack never carries one
// the host would refuse.
func EmbedManifest(module, manifest []byte) ([]byte, error) {
	if _, err := ParseManifest(manifest); err != nil {
		return nil, err
	}
	sections, err := readCustomSections(module)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(module)+len(manifest)+32)
	prev := 0
	for _, s := range sections {
		if s.name == ManifestSection {
			out = append(out, module[prev:s.start]...)
			prev = s.end
		}
	}
	out = append(out, module[prev:]...)

	var body []byte
	body = binary.AppendUvarint(body, uint64(len(ManifestSection)))
	body = append(body, ManifestSection...)
	body = append(body, manifest...)
	out = append(out, 0)
	out = binary.AppendUvarint(out, uint64(len(body)))
	return append(out, body...), nil
}

// ReadManifest returns the pack's manifest from its custom section.
func ReadManifest(module []byte) (*Manifest, error) {
	sections, err := readCustomSections(module)
	if err != nil {
		return nil, err
	}
	var found []byte
	count := 0
	for _, s := range sections {
		if s.name == ManifestSection {
			found, count = s.data, count+1
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
