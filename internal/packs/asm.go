package packs

import (
	"encoding/binary"
	"fmt"

	"github.com/packhost/packhost/internal/wasmbin"
)

// Hand-assembled hostile packs: attacks a Go-built pack cannot make, because Go wraps
// every function body in a loop and never grows tables. Each exports memory,
// packhost_alloc and a packhost_handle that runs its attack and returns 0.
var assembled = map[string]func() []byte{
	// Loop-free recursion: fib(40), about 300 million calls and not one loop header.
	"hostile/recursion": func() []byte {
		return assemble("recursion", asmPack{handle: []byte{0x41, 40, 0x10, 0x02, 0x1a}, funcs: []asmFunc{{typ: 0, code: fibBody}}})
	},
	// Endless recursion: only the call depth ends it.
	"hostile/deep-recursion": func() []byte {
		return assemble("deep-recursion", asmPack{handle: []byte{0x10, 0x02}, funcs: []asmFunc{{typ: 2, code: []byte{0x10, 0x02}}}})
	},
	// A start function that runs fib(36) (about 48 million calls) before the instance
	// can serve anything: each new instance costs a tenant's processor that long.
	"hostile/slow-start": func() []byte {
		start := []byte{0x41, 36, 0x10, 0x02, 0x1a} // drop(fib(36))
		return assemble("slow-start", asmPack{start: 3, funcs: []asmFunc{{typ: 0, code: fibBody}, {typ: 2, code: start}}})
	},
	// A table bomb: every activity grows a table by 2^24 entries (128 MiB of host
	// memory) and keeps it in the pooled instance.
	"hostile/table-bomb": func() []byte {
		return assemble("table-bomb", asmPack{table: true, handle: []byte{0xd0, 0x70, 0x41, 0x80, 0x80, 0x80, 0x08, 0xfc, 0x0f, 0x00, 0x1a}})
	},
	// A table declared with 2^27 elements: 1 GiB of host memory at every instantiation.
	"hostile/big-table": func() []byte {
		return assemble("big-table", asmPack{tableMin: 1 << 27, table: true})
	},
	// memory.fill of 16 MiB, from recursion that doubles at each level.
	"hostile/fill-recursion": func() []byte {
		f := []byte{0x41, 0x00, 0x41, 0x07, 0x41, 0x80, 0x80, 0x80, 0x08, 0xfc, 0x0b, 0x00, // fill(0, 7, 16 MiB)
			0x20, 0x00, 0x04, 0x40, // if n
			0x20, 0x00, 0x41, 0x01, 0x6b, 0x10, 0x02,
			0x20, 0x00, 0x41, 0x01, 0x6b, 0x10, 0x02, 0x0b}
		return assemble("fill-recursion", asmPack{minPages: 256, handle: []byte{0x41, 40, 0x10, 0x02}, funcs: []asmFunc{{typ: 3, code: f}}})
	},
}

// fibBody is fib(n) as function 2, (i32)->i32, by loop-free recursion.
var fibBody = []byte{
	0x20, 0x00, 0x41, 0x02, 0x49, 0x04, 0x7f, // if n < 2 (result i32)
	0x20, 0x00, // n
	0x05,
	0x20, 0x00, 0x41, 0x01, 0x6b, 0x10, 0x02, // fib(n-1)
	0x20, 0x00, 0x41, 0x02, 0x6b, 0x10, 0x02, // fib(n-2)
	0x6a, 0x0b}

type asmPack struct {
	minPages uint32
	table    bool
	tableMin uint32
	handle   []byte // instructions before "i32.const 0; end"
	start    byte   // the index of the module's start function; 0: none (alloc is never one)
	funcs    []asmFunc
}

type asmFunc struct {
	typ  byte
	code []byte // without the final end
}

// assemble builds a pack: types 0 (i32)->i32, 1 (i32,i32)->i32, 2 ()->(), 3 (i32)->();
// functions 0 alloc, 1 handle, then p.funcs from index 2.
func assemble(id string, p asmPack) []byte {
	leb := binary.AppendUvarint
	section := func(out []byte, sid byte, body []byte) []byte {
		out = append(out, sid)
		out = leb(out, uint64(len(body)))
		return append(out, body...)
	}
	out := []byte{0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00}
	out = section(out, 1, []byte{4, 0x60, 1, 0x7f, 1, 0x7f, 0x60, 2, 0x7f, 0x7f, 1, 0x7f, 0x60, 0, 0, 0x60, 1, 0x7f, 0})
	funcs := leb(nil, uint64(2+len(p.funcs)))
	funcs = append(funcs, 0, 1)
	for _, f := range p.funcs {
		funcs = append(funcs, f.typ)
	}
	out = section(out, 3, funcs)
	if p.table {
		out = section(out, 4, leb([]byte{1, 0x70, 0x00}, uint64(max(p.tableMin, 1)))) // funcref, no maximum
	}
	out = section(out, 5, leb([]byte{1, 0x00}, uint64(max(p.minPages, 2))))
	out = section(out, 7, abiExports())
	if p.start != 0 {
		out = section(out, 8, []byte{p.start})
	}
	bodies := [][]byte{{0x41, 0x80, 0x08}, append(append([]byte(nil), p.handle...), 0x41, 0x00)} // alloc: 1024
	for _, f := range p.funcs {
		bodies = append(bodies, f.code)
	}
	code := leb(nil, uint64(len(bodies)))
	for _, b := range bodies {
		body := append(append([]byte{0x00}, b...), 0x0b)
		code = leb(code, uint64(len(body)))
		code = append(code, body...)
	}
	out = section(out, 10, code)
	manifest := fmt.Sprintf(`{"abi":1,"pack_id":%q,"version":"0","flows":[{"id":"main","entry":true}]}`, id)
	return wasmbin.Append(out, "packhost.manifest", []byte(manifest))
}

// abiExports is the export section of a pack whose memory is memory 0, its allocator
// function 0 and its handler function 1.
func abiExports() []byte {
	exports := []byte{3}
	for _, e := range []struct {
		name string
		kind byte
		idx  byte
	}{{"memory", 2, 0}, {"packhost_alloc", 0, 0}, {"packhost_handle", 0, 1}} {
		exports = binary.AppendUvarint(exports, uint64(len(e.name)))
		exports = append(exports, e.name...)
		exports = append(exports, e.kind, e.idx)
	}
	return exports
}
