package wasmguard

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// gen builds a valid, terminating module from fuzz bytes: functions of (i32, i32) -> i32
// over arithmetic that may trap, memory loads, stores, fills and copies, globals, ifs,
// blocks with branches, bounded loops, early returns, direct and indirect calls (a fuel
// global bounds the calls, so recursion ends), table.grow and memory.grow.
type gen struct {
	data  []byte
	pos   int
	funcs int
	loops int // open loops; each has its own counter local
}

const (
	genParams   = 2
	genLocals   = 2 // after the params: scratch locals the generator reads and writes
	genCounters = 3 // loop counters, one per nesting level, never written by other code
	genFuel     = 0 // global 0: calls left
	genGlobal   = 1 // global 1: a value the code reads and writes
)

func (g *gen) next() byte {
	if g.pos >= len(g.data) {
		return 0
	}
	b := g.data[g.pos]
	g.pos++
	return b
}

func (g *gen) leftover() bool { return g.pos < len(g.data) }

// expr appends code that pushes exactly one i32.
func (g *gen) expr(b []byte, depth int) []byte {
	c := g.next()
	if depth > 6 || !g.leftover() {
		c %= 3
	}
	switch c % 19 {
	case 0:
		return appendSigned(append(b, opI32Const), int64(int32(uint32(g.next())<<(g.next()%25))-int32(g.next())))
	case 1:
		return append(b, opLocalGet, g.next()%(genParams+genLocals))
	case 2:
		return append(b, opGlobalGet, genGlobal)
	case 3, 4: // binary arithmetic, some of it trapping
		ops := []byte{0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77, 0x46, 0x49, 0x4a}
		b = g.expr(g.expr(b, depth+1), depth+1)
		return append(b, ops[int(g.next())%len(ops)])
	case 5: // unary
		ops := []byte{0x45, 0x67, 0x68, 0x69, 0xc0, 0xc1}
		return append(g.expr(b, depth+1), ops[int(g.next())%len(ops)])
	case 6: // load, possibly out of bounds
		b = append(g.expr(b, depth+1), opI32Const)
		b = appendSigned(b, 0x1ffff)
		b = append(b, 0x71, 0x28, 0x02)
		return appendU32(b, uint32(g.next()))
	case 7:
		b = g.stmt(b, depth+1)
		return g.expr(b, depth+1)
	case 8:
		return append(g.expr(b, depth+1), opLocalTee, genParams+g.next()%genLocals)
	case 9: // if/else
		b = append(g.expr(b, depth+1), opIf, i32)
		b = append(g.expr(b, depth+1), opElse)
		return append(g.expr(b, depth+1), opEnd)
	case 10: // block with a conditional branch out, carrying a value
		b = append(b, opBlock, i32)
		b = g.expr(g.expr(b, depth+1), depth+1)
		b = append(b, opBrIf, 0x00, 0x1a)
		return append(g.expr(b, depth+1), opEnd)
	case 11: // a bounded loop
		if g.loops >= genCounters {
			return g.expr(b, depth+1)
		}
		counter := byte(genParams + genLocals + g.loops)
		g.loops++
		b = append(b, opI32Const, 1+g.next()%12, opLocalSet, counter, opLoop, blockEmpty)
		b = g.stmt(b, depth+1)
		b = append(b, opLocalGet, counter, opI32Const, 0x01, opI32Sub, opLocalTee, counter, opBrIf, 0x00, opEnd)
		g.loops--
		return g.expr(b, depth+1)
	case 12: // an early return
		b = append(b, opBlock, i32)
		b = append(g.expr(b, depth+1), opReturn, opEnd)
		return b
	case 13, 14: // a direct call, maybe recursive
		b = g.expr(g.expr(b, depth+1), depth+1)
		return appendU32(append(b, opCall), uint32(g.next())%uint32(g.funcs))
	case 15: // an indirect call; the table holds every function and a null
		b = g.expr(g.expr(b, depth+1), depth+1)
		b = append(g.expr(b, depth+1), opI32Const, 0x07, 0x71)
		return append(b, opCallIndirect, 0x00, 0x00)
	case 16: // memory.grow within the maximum
		return append(b, opI32Const, g.next()%2, 0x40, 0x00)
	case 17: // table.grow
		return append(b, 0xd0, 0x70, opI32Const, g.next()%4, opPrefixFC, 15, 0x00)
	default:
		return append(b, 0x3f, 0x00) // memory.size
	}
}

// stmt appends code that leaves the stack as it found it.
func (g *gen) stmt(b []byte, depth int) []byte {
	switch g.next() % 6 {
	case 0:
		return append(g.expr(b, depth+1), 0x1a)
	case 1: // store, possibly out of bounds
		b = append(g.expr(b, depth+1), opI32Const)
		b = appendSigned(b, 0x1ffff)
		b = append(g.expr(append(b, 0x71), depth+1), 0x36, 0x02)
		return appendU32(b, uint32(g.next()))
	case 2:
		return append(g.expr(b, depth+1), opGlobalSet, genGlobal)
	case 3:
		return append(g.expr(b, depth+1), opLocalSet, genParams+g.next()%genLocals)
	case 4, 5: // memory.fill or memory.copy with addresses and lengths up to 128 KiB
		for range 3 {
			b = append(g.expr(b, depth+1), opI32Const)
			b = append(appendSigned(b, 0x1ffff), 0x71)
		}
		if g.next()%2 == 0 {
			return append(b, fillOp...)
		}
		return append(b, copyOp...)
	}
	return b
}

// genModule turns fuzz bytes into a module with 1 to 4 exported functions.
func genModule(data []byte) []byte {
	g := &gen{data: data}
	g.funcs = 1 + int(g.next()%4)
	a := &asm{memory: []uint32{1, 3}, tables: [][3]uint32{{8, 0, 0}}}
	t := a.typ([]byte{i32, i32}, []byte{i32})
	a.globals = [][]byte{{i32, 0x01, opI32Const, 0xc0, 0x00, opEnd}, {i32, 0x01, opI32Const, 0x00, opEnd}}
	seg := []byte{0x00, opI32Const, 0x00, opEnd}
	seg = appendU32(seg, uint32(g.funcs))
	for i := range g.funcs {
		seg = appendU32(seg, uint32(i))
	}
	a.elems = [][]byte{seg}
	locals := make([]byte, genLocals+genCounters)
	for i := range locals {
		locals[i] = i32
	}
	for i := range g.funcs {
		// Fuel: every call spends one; none left traps.
		code := []byte{opGlobalGet, genFuel, 0x45, opIf, blockEmpty, 0x00, opEnd,
			opGlobalGet, genFuel, opI32Const, 0x01, opI32Sub, opGlobalSet, genFuel}
		for range g.next() % 3 {
			code = g.stmt(code, 0)
		}
		code = g.expr(code, 0)
		a.fn(t, locals, code...)
		a.export(string(rune('a'+i)), uint32(i))
	}
	a.exports = append(a.exports, asmExport{"memory", 0x02, 0})
	return a.bytes()
}

func seedFuzz(f *testing.F) {
	for _, s := range []string{"", "\x01\x0d\x0d\x01\x02", "\x03\x0b\x05\x03\x02\x01\x00\x0c\x07", "\x02\x0f\x03\x04\x01\x09\x0a\x00\x01\x02",
		"\x01\x04\x04\x0e\x05\x02\x00\x03", "\x00\x0b\x09\x07\x0b\x02\x05\x03\x04\x05\x06\x07\x12\x10", "\x03\x05\x04\x05\x05\x0e\x10\x11\x0f\x0d\x0c"} {
		f.Add([]byte(s), uint32(3), uint32(7))
	}
}

// FuzzInstrument: for a generated module, the instrumented module validates whenever the
// original does, and every export returns the same results, the same traps and leaves
// the same memory.
func FuzzInstrument(f *testing.F) {
	seedFuzz(f)
	f.Fuzz(func(t *testing.T, data []byte, x, y uint32) {
		mod := genModule(data)
		ctx := context.Background()
		plainRT, err := newGuardRuntime(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer plainRT.Close(ctx)
		plainC, err := plainRT.CompileModule(ctx, mod)
		if err != nil {
			t.Skipf("the generator made a module wazero refuses: %v", err) // its bug, not the rewriter's
		}
		guardedMod, err := Instrument(mod, Options{MaxCallDepth: 100000, MaxTableElements: 1 << 16})
		if err != nil {
			t.Fatalf("instrument a valid module: %v", err)
		}
		guardedRT, err := newGuardRuntime(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer guardedRT.Close(ctx)
		guardedC, err := guardedRT.CompileModule(ctx, guardedMod)
		if err != nil {
			t.Fatalf("the original validates, the instrumented does not: %v", err)
		}
		pm, err := plainRT.InstantiateModule(ctx, plainC, wazeroConfig())
		if err != nil {
			t.Fatal(err)
		}
		gm, err := guardedRT.InstantiateModule(ctx, guardedC, wazeroConfig())
		if err != nil {
			t.Fatal(err)
		}
		for name := range plainC.ExportedFunctions() {
			// A generous deadline only for the guarded side: it must never be what ends it.
			cctx, cancel := context.WithTimeout(ctx, time.Minute)
			pr, perr := pm.ExportedFunction(name).Call(ctx, uint64(x), uint64(y))
			gr, gerr := gm.ExportedFunction(name).Call(cctx, uint64(x), uint64(y))
			cancel()
			if errors.Is(gerr, errDeadline) || errors.Is(gerr, errStack) {
				t.Fatalf("%s: the guard ended a terminating call: %v", name, gerr)
			}
			if (perr == nil) != (gerr == nil) || (perr != nil && firstLine(perr) != firstLine(gerr)) {
				t.Fatalf("%s: plain %v, guarded %v", name, perr, gerr)
			}
			if !equalU64(pr, gr) {
				t.Fatalf("%s: plain returned %v, guarded %v", name, pr, gr)
			}
		}
		pb, _ := pm.Memory().Read(0, pm.Memory().Size())
		gb, _ := gm.Memory().Read(0, gm.Memory().Size())
		if string(pb) != string(gb) {
			t.Fatalf("memories differ after the calls")
		}
	})
}

// FuzzInstrumentBytes mutates whole binaries: Instrument never panics, refuses only with
// ErrUnsupported, whatever it returns for a module wazero accepts is accepted too, and
// what it returns for a module wazero refuses is refused too (a rewrite that made an
// invalid module valid would let it name what the rewrite adds).
func FuzzInstrumentBytes(f *testing.F) {
	for _, m := range [][]byte{fibModule().bytes(), loopSumModule(), copyModule(), tableModule(), multiValueModule(), callChainModule(), genModule([]byte("\x03\x0b\x05\x03\x02\x01"))} {
		f.Add(m)
	}
	f.Fuzz(func(t *testing.T, mod []byte) {
		out, err := Instrument(mod, Options{MaxCallDepth: 1000, MaxTableElements: 1 << 16, MaxTables: 4})
		if err != nil {
			if !errors.Is(err, ErrUnsupported) {
				t.Fatalf("error not wrapping ErrUnsupported: %v", err)
			}
			return
		}
		ctx := context.Background()
		rt, err := newGuardRuntime(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer rt.Close(ctx)
		_, origErr := rt.CompileModule(ctx, mod)
		_, outErr := rt.CompileModule(ctx, out)
		switch {
		case origErr == nil && outErr != nil:
			t.Fatalf("the original validates, the instrumented does not: %v", outErr)
		case origErr != nil && outErr == nil && !strings.Contains(origErr.Error(), "failed to read custom section name"):
			// (wazero v1.12 refuses a custom section with an empty payload when it is the
			// module's last section, which the rewritten module's never is: a quirk of
			// its reader, nothing the module can name.)
			t.Fatalf("the original is invalid (%v), the instrumented validates", origErr)
		}
	})
}
