// Package wasmbin reads and edits the custom sections of a WebAssembly binary without
// decoding the rest of the module.
package wasmbin

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

var header = []byte{0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00}

// Section is a custom section found in a module's binary.
type Section struct {
	Name string
	Data []byte
	// Start is the offset of the section id byte; End the offset just past the section.
	Start, End int
}

// CustomSections walks the top-level sections of a wasm binary and returns its custom
// sections. It checks only the section framing.
func CustomSections(module []byte) ([]Section, error) {
	if !bytes.HasPrefix(module, header) {
		return nil, errors.New("not a WebAssembly 1.0 binary module (bad magic or version)")
	}
	var out []Section
	for off := len(header); off < len(module); {
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
		out = append(out, Section{Name: string(body[m : m+int(nameLen)]), Data: body[m+int(nameLen):], Start: start, End: off})
	}
	return out, nil
}

// Strip returns module without its custom sections named name. A module whose framing
// cannot be read is returned as is.
func Strip(module []byte, name string) []byte {
	sections, err := CustomSections(module)
	if err != nil {
		return module
	}
	out := make([]byte, 0, len(module))
	prev := 0
	for _, s := range sections {
		if s.Name == name {
			out = append(out, module[prev:s.Start]...)
			prev = s.End
		}
	}
	return append(out, module[prev:]...)
}

// Append returns module with a custom section appended.
func Append(module []byte, name string, data []byte) []byte {
	var body []byte
	body = binary.AppendUvarint(body, uint64(len(name)))
	body = append(body, name...)
	body = append(body, data...)
	out := append(module[:len(module):len(module)], 0)
	out = binary.AppendUvarint(out, uint64(len(body)))
	return append(out, body...)
}
