// Package wasmguard rewrites a WebAssembly module, once at load time, so that it checks a
// budget at every function entry and loop header and calls the host when the budget runs
// out: the host's deadline then reaches code that never calls the host by itself.
//
// # What the rewrite adds
//
//   - Two imported functions, module ImportModule: Tick (no params, an i32 result: the new
//     budget) and StackExhausted (no params or results; the host ends the call). They are
//     appended after the module's own function imports, so every defined function's index
//     moves up by two and every reference to one is renumbered: calls, ref.func, element
//     segments, exports, the start function and the name section.
//   - Two mutable i32 globals after the module's own: the budget, starting at Refill, and
//     the call depth. Neither is exported; guest code cannot name them (a module can only
//     name the globals it declares or imports, and these indices did not exist in it).
//   - At a checkpoint, "budget -= cost of the code up to the next checkpoint; if budget < 0,
//     budget = Tick()". Checkpoints are every loop header (each iteration pays for the
//     loop's body, nested loops excluded: they pay at their own headers) and the entry of
//     every function that is not a small leaf. A small leaf (no loop, no call, at most
//     LeafMax instructions) has no checkpoint: a direct call to it is charged its whole
//     body at the call site, an indirect call LeafMax. A call to an import costs
//     ImportCallCost. A body that starts with a loop (every Go-built function does) needs
//     no entry checkpoint: the loop header is the next instruction.
//   - A guest cannot jump backwards except to a loop header or by a call, both checked, so
//     the work between two checks is bounded by the cost charged at the first.
//   - memory.fill and memory.copy become calls to injected helpers that do the same work
//     in chunks of Chunk bytes with a checkpoint each, after the same bounds check, so one
//     instruction cannot hold the core for a gigabyte.
//   - With MaxCallDepth, every function that makes calls counts its depth at entry and
//     calls StackExhausted past the limit; its body is wrapped in a block so that every exit
//     (return, a branch to the function's label, the end) counts back down.
//   - Tables: at most MaxTables, each declared with at most MaxTableElements and its
//     maximum lowered to that, so table.grow fails inside the guest (it returns -1, as the
//     specification allows) instead of taking the host's memory.
//   - Custom sections are kept, except the name section, which is rewritten (function and
//     local names renumbered; label names dropped, since the added blocks move labels; a
//     malformed one refuses the module, as wazero does), and .debug_* and
//     sourceMappingURL, whose code offsets no longer hold.
//   - Every index the module's code and sections use is checked against the module's
//     own counts: one past them would name what the rewrite adds (the budget global,
//     the helpers) and make an invalid module valid.
//
// What the rewriter does not know (tail calls, exceptions, threads, GC types, memory64,
// multiple memories, relaxed SIMD) it refuses with an error, never a broken module.
//
// # Cost
//
// Units are roughly instructions. Refill is 1<<20 units, a few hundred microseconds to a
// millisecond of guest code between two calls to Tick, so the deadline is noticed within
// about a millisecond and Tick's own cost (a host call and a clock read) disappears in the
// budget. BenchmarkGuard in ./runtime prints guarded ÷ unguarded; see runtime/doc.go.
package wasmguard

import (
	"bytes"
	"errors"
	"fmt"
)

// Version names the rewrite; a cache of rewritten modules must key on it, so that a
// changed rewriter never runs code rewritten by an old one.
const Version = 1

// Names of the imports the rewrite adds.
const (
	ImportModule         = "packhost_guard"
	ImportTick           = "tick"
	ImportStackExhausted = "stack_exhausted"
)

const (
	// Refill is the budget Tick should return, and the budget a new instance starts with.
	Refill = 1 << 20
	// LeafMax is the most instructions a leaf function may have and go unchecked.
	LeafMax = 64
	// ImportCallCost is what a call to an imported (host) function is charged.
	ImportCallCost = 1024
	// Chunk is the most bytes one memory.fill or memory.copy step moves between checks.
	Chunk = 1 << 20
	// MaxLocals is the most locals one function may declare. wazero allocates a
	// function's locals by their declared count, so a few bytes could otherwise ask for
	// gigabytes at compile time; real compilers emit a few hundred at most.
	MaxLocals = 1 << 16
	// chunkShift: a chunk of n bytes costs n>>chunkShift units (16 bytes a unit).
	chunkShift = 4
)

// ErrUnsupported is wrapped by every error for a module the rewriter cannot handle.
var ErrUnsupported = errors.New("cannot instrument module")

// Options bound what the instrumented module may grow.
type Options struct {
	// MaxTables is the most tables a module may declare or import; 0 means no limit.
	MaxTables int
	// MaxTableElements caps every table the module declares: a larger minimum is
	// refused, the maximum is lowered to it. 0 means no limit.
	MaxTableElements uint32
	// MaxCallDepth is the deepest the guest's own calls may nest before StackExhausted
	// is called; 0 means no limit.
	MaxCallDepth uint32
}

var wasmHeader = []byte{0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00}

// Section ids.
const (
	secCustom    = 0
	secType      = 1
	secImport    = 2
	secFunction  = 3
	secTable     = 4
	secMemory    = 5
	secGlobal    = 6
	secExport    = 7
	secStart     = 8
	secElement   = 9
	secCode      = 10
	secData      = 11
	secDataCount = 12
	secTag       = 13
)

// sectionOrder is where each known section goes; custom sections go anywhere.
var sectionOrder = map[byte]int{secType: 1, secImport: 2, secFunction: 3, secTable: 4, secMemory: 5,
	secGlobal: 6, secExport: 7, secStart: 8, secElement: 9, secDataCount: 10, secCode: 11, secData: 12}

type section struct {
	id   byte
	body []byte
	// after is the id of the known section this custom section followed (0: none).
	after byte
	name  string // custom sections only
}

// Instrument returns module rewritten as the package doc says. It fails, wrapping
// ErrUnsupported, on a module it cannot read or does not know how to rewrite; it never
// returns a module that does what the original would not.
func Instrument(module []byte, opts Options) ([]byte, error) {
	m, err := parse(module)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	out, err := m.rewrite(opts)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	return out, nil
}

func parse(module []byte) (*moduleInfo, error) {
	if !bytes.HasPrefix(module, wasmHeader) {
		return nil, errors.New("not a WebAssembly 1.0 binary module (bad magic or version)")
	}
	r := &reader{b: module, off: len(wasmHeader)}
	m := &moduleInfo{known: map[byte][]byte{}, size: len(module)}
	last, lastOrder := byte(0), 0
	for !r.done() {
		id := r.byte()
		size := r.u32()
		body := r.bytes(size)
		if r.err != nil {
			return nil, fmt.Errorf("section framing: %w", r.err)
		}
		if id == secCustom {
			br := &reader{b: body}
			name := br.name()
			if br.err != nil {
				return nil, fmt.Errorf("custom section name: %w", br.err)
			}
			m.sections = append(m.sections, section{id: id, body: body, after: last, name: name})
			continue
		}
		order, ok := sectionOrder[id]
		if !ok {
			if id == secTag {
				return nil, errors.New("the exception-handling proposal (tag section) is not supported")
			}
			return nil, fmt.Errorf("unknown section id %d", id)
		}
		if order <= lastOrder {
			return nil, fmt.Errorf("section %d out of order or repeated", id)
		}
		last, lastOrder = id, order
		m.known[id] = body
		m.sections = append(m.sections, section{id: id})
	}
	if r.err != nil {
		return nil, r.err
	}
	return m, nil
}

// Footprint is what each instance of a module makes the host hold besides its memory:
// the elements its tables may hold at most (a table without a maximum counts its
// minimum; instrumented modules always declare maxima) and its globals.
func Footprint(module []byte) (tableElements, globals uint64, err error) {
	m, err := parse(module)
	if err != nil {
		return 0, 0, err
	}
	if b := m.known[secTable]; b != nil {
		r := &reader{b: b}
		n := r.count()
		for i := uint32(0); i < n && r.err == nil; i++ {
			r.byte()
			lo, hi, hasMax := r.limits()
			if hasMax {
				lo = hi
			}
			tableElements += uint64(lo)
		}
		if r.err != nil {
			return 0, 0, r.err
		}
	}
	if b := m.known[secGlobal]; b != nil {
		r := &reader{b: b}
		globals = uint64(r.count())
		if r.err != nil {
			return 0, 0, r.err
		}
	}
	return tableElements, globals, nil
}
