package packs

import (
	"encoding/binary"

	"github.com/packhost/packhost/internal/wasmbin"
)

// Synthetic returns a valid pack of about size bytes: the two required exports plus
// filler functions of arithmetic, so that compiling it costs what compiling that much
// code costs. For load benchmarks; its handler replies nothing.
func Synthetic(size int) []byte {
	leb := binary.AppendUvarint
	section := func(out []byte, id byte, body []byte) []byte {
		out = append(out, id)
		out = leb(out, uint64(len(body)))
		return append(out, body...)
	}
	// Filler body: repeated (i32.const; i32.const; i32.add; drop).
	const reps = 160
	filler := []byte{0x00} // no locals
	for i := range reps {
		filler = append(filler, 0x41, byte(i&0x3f), 0x41, byte((i*7)&0x3f), 0x6a, 0x1a)
	}
	filler = append(filler, 0x0b)
	n := max(1, size/(len(filler)+2))

	out := []byte{0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00}
	// Types: 0 (i32)->i32, 1 (i32,i32)->i32, 2 ()->().
	out = section(out, 1, []byte{3, 0x60, 1, 0x7f, 1, 0x7f, 0x60, 2, 0x7f, 0x7f, 1, 0x7f, 0x60, 0, 0})
	funcs := leb(nil, uint64(2+n))
	funcs = append(funcs, 0, 1)
	for range n {
		funcs = append(funcs, 2)
	}
	out = section(out, 3, funcs)
	out = section(out, 5, []byte{1, 0x00, 2}) // one memory, min 2 pages
	out = section(out, 7, abiExports())
	code := leb(nil, uint64(2+n))
	alloc := []byte{0x00, 0x41, 0x80, 0x08, 0x0b} // i32.const 1024
	handle := []byte{0x00, 0x41, 0x00, 0x0b}      // i32.const 0
	for _, body := range [][]byte{alloc, handle} {
		code = leb(code, uint64(len(body)))
		code = append(code, body...)
	}
	for range n {
		code = leb(code, uint64(len(filler)))
		code = append(code, filler...)
	}
	out = section(out, 10, code)
	manifest := `{"abi":1,"pack_id":"synthetic","version":"0","flows":[{"id":"f","entry":true}]}`
	return wasmbin.Append(out, "packhost.manifest", []byte(manifest))
}
