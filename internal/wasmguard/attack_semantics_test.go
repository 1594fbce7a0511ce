package wasmguard

// Semantic attacks: valid modules whose rewritten form might behave differently. Each
// case runs plain and guarded and compares results, traps and memory. These pass today:
// they document edge cases the rewrite gets right.

import (
	"context"
	"testing"
)

func sameOutcome(t *testing.T, mod []byte, opts Options, fn string, args ...uint64) {
	t.Helper()
	ctx := context.Background()
	plain, perr := callExport(t, ctx, mod, false, Options{}, fn, args...)
	guarded, gerr := callExport(t, ctx, mod, true, opts, fn, args...)
	t.Logf("plain %v %q, guarded %v %q", plain.results, plain.err, guarded.results, guarded.err)
	if (perr == nil) != (gerr == nil) || plain.err != guarded.err || !equalU64(plain.results, guarded.results) || plain.memory != guarded.memory {
		t.Fatalf("guarded run differs: plain %v %q, guarded %v %q", plain.results, plain.err, guarded.results, guarded.err)
	}
}

// TestAttackElementFlagsAndStart: element segments of all eight flag kinds, ref.func in
// a global's initializer and in code, table.init from passive segments, and a start
// function, all with function indices the rewrite renumbers.
func TestAttackElementFlagsAndStart(t *testing.T) {
	// Types: 0 () -> i32, 1 () -> (), 2 (i32) -> i32.
	typ := rawSection(secType, []byte{3, 0x60, 0, 1, i32, 0x60, 0, 0, 0x60, 1, i32, 1, i32})
	// Functions 0-7: return 100+i; 8: start; 9: run.
	fb := []byte{10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2}
	tab := rawSection(secTable, []byte{1, 0x70, 0x00, 8})
	glob := rawSection(secGlobal, []byte{2,
		0x70, 0x00, opRefFunc, 7, opEnd, // global 0: ref.func 7
		i32, 0x01, opI32Const, 0, opEnd}) // global 1: set by start
	exp := rawSection(secExport, append(appendName([]byte{1}, "run"), 0x00, 9))
	start := rawSection(secStart, []byte{8})
	c := func(i byte) []byte { return []byte{opI32Const, i, opEnd} }
	rf := func(i byte) []byte { return []byte{opRefFunc, i, opEnd} }
	var el []byte
	el = append(el, 8)
	el = append(append(append(el, 0x00), c(0)...), 1, 0)                // active, table 0
	el = append(el, 0x01, 0x00, 1, 1)                                   // passive funcidx
	el = append(append(append(el, 0x02, 0x00), c(2)...), 0x00, 1, 2)    // active, explicit table
	el = append(el, 0x03, 0x00, 1, 3)                                   // declarative funcidx
	el = append(append(append(append(el, 0x04), c(4)...), 1), rf(4)...) // active exprs
	el = append(append(el, 0x05, 0x70, 1), rf(5)...)                    // passive exprs
	el = append(append(append(append(el, 0x06, 0x00), c(6)...), 0x70, 1), rf(6)...)
	el = append(append(el, 0x07, 0x70, 1), rf(7)...) // declarative exprs
	elem := rawSection(secElement, el)
	var cb []byte
	cb = append(cb, 10)
	for i := range 8 {
		cb = append(cb, rawBody(nil, i32c(int32(100+i)))...)
	}
	cb = append(cb, rawBody(nil, []byte{opI32Const, 7, opGlobalSet, 1})...) // start: global 1 = 7
	var run []byte
	run = append(run, opI32Const, 1, opI32Const, 0, opI32Const, 1, opPrefixFC, 12, 1, 0) // table.init seg 1 -> slot 1
	run = append(run, opI32Const, 5, opI32Const, 0, opI32Const, 1, opPrefixFC, 12, 5, 0) // table.init seg 5 -> slot 5
	run = append(run, opI32Const, 3, opRefFunc, 3, 0x26, 0)                              // table[3] = ref.func 3
	run = append(run, opI32Const, 7, opGlobalGet, 0, 0x26, 0)                            // table[7] = global 0
	run = append(run, opGlobalGet, 1)                                                    // start ran: 7
	for i := range 8 {
		run = append(run, opI32Const, byte(i), opCallIndirect, 0, 0, opI32Const, byte(i*10), opI32Mul(), opI32Add)
	}
	run = append(run, opLocalGet, 0, opCallIndirect, 0, 0, opI32Add)
	cb = append(cb, rawBody(nil, run)...)
	mod := rawModule(typ, rawSection(secFunction, fb), tab, glob, exp, start, elem, rawSection(secCode, cb))
	sameOutcome(t, mod, Options{MaxCallDepth: 100, MaxTableElements: 64, MaxTables: 4}, "run", 6)
	sameOutcome(t, mod, Options{MaxCallDepth: 100, MaxTableElements: 64, MaxTables: 4}, "run", 9) // out of the table: a trap
}

func opI32Mul() byte { return 0x6c }

// TestAttackDepthWrapperExits: with MaxCallDepth every function that calls is wrapped in
// a block whose end counts the depth down. Exits through return inside nested blocks and
// a loop, br_table to the function's label with two results, and unreachable code after
// return (with a loop in it) must all keep results and the depth right: the function is
// run 3000 times with MaxCallDepth 50, so a leaked count would stop it.
func TestAttackDepthWrapperExits(t *testing.T) {
	// Types: 0 (i32) -> (i32, i32); 1 (i32) -> i32; 2 (i32) -> i32 (run).
	typ := rawSection(secType, []byte{2, 0x60, 1, i32, 2, i32, i32, 0x60, 1, i32, 1, i32})
	fb := []byte{3, 1, 0, 1}
	exp := rawSection(secExport, append(appendName([]byte{1}, "run"), 0x00, 2))
	inc := rawBody(nil, []byte{opLocalGet, 0, opI32Const, 1, opI32Add})
	// f(n) -> (n', m): three exits chosen by n%3.
	f := []byte{
		opBlock, blockEmpty, opBlock, blockEmpty, opLoop, blockEmpty,
		opLocalGet, 0, opI32Const, 3, 0x70, // n%3
		opIf, blockEmpty, // != 0
		opLocalGet, 0, opI32Const, 3, 0x70, opI32Const, 1, 0x46, // == 1
		opIf, blockEmpty,
		opLocalGet, 0, opCall, 0, opLocalGet, 0, opReturn, // return (inc(n), n) from inside if/if/loop/block/block
		opLoop, blockEmpty, opBr, 0, opEnd, // unreachable loop after return
		opEnd,
		opLocalGet, 0, opCall, 0, opLocalGet, 0, opI32Const, 2, 0x0e, 1, 4, 4, // br_table to the function's label
		opEnd,
		opBr, 2, // leave the loop and both blocks
		opEnd, opEnd, opEnd,
		opLocalGet, 0, opI32Const, 100, opI32Add, opLocalGet, 0, opCall, 0, // fall out of the end
	}
	run := countdown(0, opLocalGet, 0, opCall, 1, 0x1a, 0x1a)
	run = append(run, opLocalGet, 0, opCall, 1, opI32Add)
	cod := rawSection(secCode, append(append(append([]byte{3}, inc...), rawBody(nil, f)...), rawBody(nil, run)...))
	mod := rawModule(typ, rawSection(secFunction, fb), exp, cod)
	sameOutcome(t, mod, Options{MaxCallDepth: 50}, "run", 3000)
}

// TestAttackPaddedFillSubOpcode: memory.fill encoded with a padded sub-opcode
// (0xfc 0x8b 0x00) and a padded memory index, to dodge the chunking helper. The reader
// decodes LEB128 as wazero does, so it is still replaced: the run ticks for its bytes.
func TestAttackPaddedFillSubOpcode(t *testing.T) {
	const size = 16 << 20
	const iters = 200
	typ := rawSection(secType, []byte{1, 0x60, 1, i32, 0})
	mem := rawSection(secMemory, []byte{1, 0x00, 0x80, 0x02})
	exp := rawSection(secExport, append(appendName([]byte{1}, "run"), 0x00, 0x00))
	step := append(append(append(i32c(0), i32c(7)...), i32c(size)...), opPrefixFC, 0x8b, 0x00, 0x80, 0x00)
	cod := rawSection(secCode, append([]byte{1}, rawBody(nil, countdown(0, step...))...))
	mod := rawModule(typ, rawSection(secFunction, []byte{1, 0}), mem, exp, cod)
	ticks, err, took, refused := guardedRun(t, mod, Options{}, "run", iters)
	if refused {
		return
	}
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	wantTicks(t, ticks, took, iters*size>>chunkShift, "memory.fill with a padded sub-opcode")
}

// TestAttackInvalidIndicesOutsideCode: the module-level cousins of the budget-global
// hole. Each module is invalid (it names a global, function, type or local that does
// not exist), yet after the rewrite the index exists, so wazero would accept it. They
// must be refused, by Instrument or by wazero on the rewritten module.
func TestAttackInvalidIndicesOutsideCode(t *testing.T) {
	typ := rawSection(secType, []byte{1, 0x60, 0, 0})
	fns := rawSection(secFunction, []byte{1, 0})
	mem := rawSection(secMemory, []byte{1, 0x00, 1})
	body := func(code ...byte) []byte { return rawSection(secCode, append([]byte{1}, rawBody(nil, code)...)) }
	for _, tc := range []struct {
		name string
		mod  []byte
	}{
		{"export of global 0 (the budget)", rawModule(typ, fns,
			rawSection(secExport, append(appendName([]byte{1}, "budget"), 0x03, 0x00)), body())},
		{"data offset global.get 0 (the budget)", rawModule(typ, fns, mem, body(),
			rawSection(secData, []byte{1, 0x00, opGlobalGet, 0x00, opEnd, 1, 0xaa}))},
		{"global.get 1 (the depth) in code", rawModule(typ, fns, body(opGlobalGet, 0x01, 0x1a))},
		{"local.set 0 in a function without locals (the guard's temp)", rawModule(typ, fns,
			body(opLoop, blockEmpty, opEnd, opI32Const, 0x01, opLocalSet, 0x00))},
		{"call 1 (one past the module's functions: a helper)", rawModule(typ, fns, mem,
			body(opI32Const, 0, opI32Const, 0, opI32Const, 0, opPrefixFC, subMemoryFill, 0, opI32Const, 0, opI32Const, 0, opI32Const, 0, opCall, 0x01))},
		{"call_indirect with type 1 (the tick's type)", rawModule(typ, fns,
			rawSection(secTable, []byte{1, 0x70, 0x00, 1}), body(opI32Const, 0, opCallIndirect, 0x01, 0x00, 0x1a))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, _, refused := guardedRunCompileOnly(t, tc.mod); !refused {
				t.Errorf("an invalid module was instrumented into a valid one")
			}
		})
	}
}

// guardedRunCompileOnly instruments and compiles mod; refused when either refuses.
func guardedRunCompileOnly(t *testing.T, mod []byte) (int, error, int, bool) {
	t.Helper()
	ctx := context.Background()
	rt, err := newGuardRuntime(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)
	if _, err := rt.CompileModule(ctx, mod); err == nil {
		t.Fatalf("the test module is valid; it should not be")
	}
	out, err := Instrument(mod, Options{MaxCallDepth: 100})
	if err != nil {
		t.Logf("refused by Instrument: %v", err)
		return 0, nil, 0, true
	}
	if _, err := rt.CompileModule(ctx, out); err != nil {
		t.Logf("refused by wazero after the rewrite: %v", err)
		return 0, nil, 0, true
	}
	return 0, nil, 0, false
}
