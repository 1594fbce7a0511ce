package wasmguard

// Hostile-tenant attacks on the deadline guard. Each test is written to fail while the
// attack works and to pass once it is stopped: either Instrument (or wazero, on the
// instrumented module) refuses the module, or the guarded run calls tick about as often
// as the work it does says it should.
//
// Every attack here is bounded (it ends by itself after a second or two of work), so a
// failing test costs seconds, not a hung test binary; the real attacks loop forever.

import (
	"context"
	"errors"
	goruntime "runtime"
	"testing"
	"time"

	"github.com/tetratelabs/wazero"
)

// rawModule assembles a module from whole sections, in the order given.
func rawModule(sections ...[]byte) []byte {
	return append(append([]byte(nil), wasmHeader...), bytesJoin(sections)...)
}

func rawSection(id byte, body []byte) []byte {
	return append(appendU32([]byte{id}, uint32(len(body))), body...)
}

func bytesJoin(parts [][]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// rawBody is one code-section entry: its local groups (count, type pairs) and code
// (without the final end).
func rawBody(localGroups [][2]uint32, code []byte) []byte {
	b := appendU32(nil, uint32(len(localGroups)))
	for _, g := range localGroups {
		b = append(appendU32(b, g[0]), byte(g[1]))
	}
	b = append(append(b, code...), opEnd)
	return append(appendU32(nil, uint32(len(b))), b...)
}

func i32c(v int32) []byte { return appendSigned([]byte{opI32Const}, int64(v)) }

// countdown wraps body in "loop { body; n -= 1; br_if n != 0 }" with n in local l
// (the caller sets it), the shape every attack below repeats its expensive step in.
func countdown(l byte, body ...byte) []byte {
	b := []byte{opLoop, blockEmpty}
	b = append(b, body...)
	b = append(b, opLocalGet, l, opI32Const, 0x01, opI32Sub, opLocalTee, l, opBrIf, 0x00, opEnd)
	return b
}

// guardedRun instruments mod, runs export name with args on the test guard runtime and
// reports how often tick was called. refused is true when Instrument or wazero refused
// the instrumented module: the attack is then stopped at load.
func guardedRun(t *testing.T, mod []byte, opts Options, name string, args ...uint64) (ticks int, callErr error, took time.Duration, refused bool) {
	t.Helper()
	out, err := Instrument(mod, opts)
	if err != nil {
		t.Logf("refused by Instrument: %v", err)
		return 0, nil, 0, true
	}
	ctx := context.Background()
	rt, err := newGuardRuntime(ctx, &ticks)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)
	compiled, err := rt.CompileModule(ctx, out)
	if err != nil {
		t.Logf("instrumented module refused by wazero: %v", err)
		return 0, nil, 0, true
	}
	mod2, err := rt.InstantiateModule(ctx, compiled, wazeroConfig())
	if err != nil {
		t.Fatalf("instantiate: %v", err)
	}
	start := time.Now()
	_, callErr = mod2.ExportedFunction(name).Call(ctx, args...)
	return ticks, callErr, time.Since(start), false
}

// wantTicks fails t unless the run ticked at least once per Refill of the work it did,
// within a factor of 4 (units is a deliberately low estimate of that work).
func wantTicks(t *testing.T, ticks int, took time.Duration, units int64, what string) {
	t.Helper()
	want := int(units / Refill / 4)
	t.Logf("%s: %d ticks in %v for about %d units of work (%d Refills)", what, ticks, took, units, units/Refill)
	if ticks < want {
		t.Errorf("%s: tick was called %d times in %v; the work done (≥ %d units) should have called it at least %d times: "+
			"a guest doing this in an endless loop is never stopped by its deadline (longest stretch without a check: the whole call)",
			what, ticks, took, units, want)
	}
}

// TestAttackGuestWritesBudgetGlobal: the guest writes global index 0, which does not
// exist in its module (it declares no globals). Instrument does not validate the
// original, so in the rewritten module index 0 is the injected budget: the guest keeps
// it full and tick is never called. The real attack is "loop { budget = 2^30; br 0 }",
// an instance and a core held until the process restarts.
func TestAttackGuestWritesBudgetGlobal(t *testing.T) {
	const iters = 200_000_000
	typ := rawSection(secType, []byte{1, 0x60, 1, i32, 0})
	fns := rawSection(secFunction, []byte{1, 0})
	exp := rawSection(secExport, append(appendName([]byte{1}, "run"), 0x00, 0x00))
	code := countdown(0, append(i32c(1<<30), opGlobalSet, 0x00)...) // budget = 2^30 (global 0 is not the module's)
	cod := rawSection(secCode, append([]byte{1}, rawBody(nil, code)...))
	mod := rawModule(typ, fns, exp, cod)

	ticks, err, took, refused := guardedRun(t, mod, Options{MaxCallDepth: 1000}, "run", iters)
	if refused {
		return
	}
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	// Each iteration is at least 8 instructions.
	wantTicks(t, ticks, took, 8*iters, "budget global overwritten by the guest")
}

// TestAttackGuestResetsDepthGlobal: the same hole with the call-depth counter (global 1
// in a module without globals): the guest zeroes it at every entry and recurses far
// past MaxCallDepth; stack_exhausted is never called.
func TestAttackGuestResetsDepthGlobal(t *testing.T) {
	typ := rawSection(secType, []byte{1, 0x60, 1, i32, 0})
	fns := rawSection(secFunction, []byte{1, 0})
	exp := rawSection(secExport, append(appendName([]byte{1}, "run"), 0x00, 0x00))
	code := append(i32c(0), opGlobalSet, 0x01) // depth = 0 (global 1 is not the module's)
	code = append(code, opLocalGet, 0x00, opIf, blockEmpty,
		opLocalGet, 0x00, opI32Const, 0x01, opI32Sub, opCall, 0x00, opEnd)
	cod := rawSection(secCode, append([]byte{1}, rawBody(nil, code)...))
	mod := rawModule(typ, fns, exp, cod)

	_, err, _, refused := guardedRun(t, mod, Options{MaxCallDepth: 100}, "run", 5000)
	if refused {
		return
	}
	if !errors.Is(err, errStack) {
		t.Errorf("recursion 5000 deep with MaxCallDepth 100 ended with %v, want the stack_exhausted error: the guest resets the injected depth global", err)
	}
}

// TestAttackMemoryInitUnchunked: memory.init is one instruction (one unit) however many
// bytes it copies, and it is not chunked as memory.fill and memory.copy are. A 64 KiB
// passive segment copied 100,000 times is 6.5 GB of copying for ~1M units; with a
// segment as large as the module allows, or a loop that never ends, the deadline is
// never noticed.
func TestAttackMemoryInitUnchunked(t *testing.T) {
	const segment = 64 << 10
	const iters = 100_000
	typ := rawSection(secType, []byte{1, 0x60, 1, i32, 0})
	fns := rawSection(secFunction, []byte{1, 0})
	mem := rawSection(secMemory, []byte{1, 0x00, 2})
	exp := rawSection(secExport, append(appendName([]byte{1}, "run"), 0x00, 0x00))
	dcount := rawSection(secDataCount, []byte{1})
	step := append(append(append(i32c(0), i32c(0)...), i32c(segment)...), opPrefixFC, 8, 0x00, 0x00) // memory.init 0
	cod := rawSection(secCode, append([]byte{1}, rawBody(nil, countdown(0, step...))...))
	data := rawSection(secData, append(appendU32([]byte{1, 0x01}, segment), make([]byte, segment)...)) // passive
	mod := rawModule(typ, fns, mem, exp, dcount, cod, data)

	ticks, err, took, refused := guardedRun(t, mod, Options{}, "run", iters)
	if refused {
		return
	}
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	// memory.fill and memory.copy charge a unit per 16 bytes; ask for one per 64.
	wantTicks(t, ticks, took, iters*segment/64, "memory.init of 64 KiB in a loop")
}

// TestAttackTableBulkUnchunked: table.fill and table.copy over a table of
// MaxTableElements (2^18, runtime's limit) are one unit each; each moves 2 MiB.
func TestAttackTableBulkUnchunked(t *testing.T) {
	const elems = 1 << 18
	const iters = 4000
	typ := rawSection(secType, []byte{1, 0x60, 1, i32, 0})
	fns := rawSection(secFunction, []byte{1, 0})
	tab := rawSection(secTable, appendU32([]byte{1, 0x70, 0x00}, elems))
	exp := rawSection(secExport, append(appendName([]byte{1}, "run"), 0x00, 0x00))
	fill := append(append(append(i32c(0), opRefFunc, 0x00), i32c(elems)...), opPrefixFC, 17, 0x00)  // table.fill 0 (ref.func run)
	cp := append(append(append(i32c(0), i32c(1)...), i32c(elems-1)...), opPrefixFC, 14, 0x00, 0x00) // table.copy 0 0
	elem := rawSection(secElement, []byte{1, 0x03, 0x00, 1, 0x00})                                  // declarative: ref.func 0
	cod := rawSection(secCode, append([]byte{1}, rawBody(nil, countdown(0, append(fill, cp...)...))...))
	mod := rawModule(typ, fns, tab, exp, elem, cod)

	ticks, err, took, refused := guardedRun(t, mod, Options{MaxTableElements: elems, MaxTables: 4}, "run", iters)
	if refused {
		return
	}
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	// Ask for one unit per 16 elements moved (128 bytes of table).
	wantTicks(t, ticks, took, iters*2*elems/16, "table.fill + table.copy of 2^18 elements in a loop")
}

// TestAttackLeadingLoopSkipsEntryCharge: a body that starts with a loop has no entry
// checkpoint, but only the loop's body is charged at its header: everything after the
// loop's end (region 0) is never charged. f is "loop end" followed by 4,000 load-add-
// store steps (24,000 instructions), and costs 1 unit a call; the caller's loop costs a
// few more. 20,000 calls are 480M instructions for ~150K units.
func TestAttackLeadingLoopSkipsEntryCharge(t *testing.T) {
	const steps = 4000
	const calls = 20_000
	typ := rawSection(secType, []byte{2, 0x60, 1, i32, 0, 0x60, 0, 0})
	fns := rawSection(secFunction, []byte{2, 0, 1})
	mem := rawSection(secMemory, []byte{1, 0x00, 1})
	exp := rawSection(secExport, append(appendName([]byte{1}, "run"), 0x00, 0x00))
	var heavy []byte
	heavy = append(heavy, opLoop, blockEmpty, opEnd)
	for range steps {
		heavy = append(heavy, opI32Const, 0x00, opI32Const, 0x00, 0x28, 0x02, 0x00, opI32Const, 0x01, opI32Add, 0x36, 0x02, 0x00)
	}
	run := countdown(0, opCall, 0x01)
	cod := rawSection(secCode, append(append([]byte{2}, rawBody(nil, run)...), rawBody(nil, heavy)...))
	mod := rawModule(typ, fns, mem, exp, cod)

	ticks, err, took, refused := guardedRun(t, mod, Options{MaxCallDepth: 1000}, "run", calls)
	if refused {
		return
	}
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	wantTicks(t, ticks, took, calls*steps*6, "code after a leading loop")
}

// TestAttackLocalsAcrossFunctions: MaxLocals caps one function's locals, not the
// module's. wazero keeps a byte per declared local for every function, and more while
// compiling (measured: ~0.5 MB held per function of 65,536 locals): 200 functions of
// 8 bytes each (a 1.6 KB module) hold ~100 MB after CompileModule; a 1 MB pack holds
// ~60 GB, against a compile reservation of 6 MB (compiledFactor), and the compile
// itself runs for minutes on the reconciler's goroutine. The replica is OOM-killed.
func TestAttackLocalsAcrossFunctions(t *testing.T) {
	const nf = 200
	typ := rawSection(secType, []byte{1, 0x60, 0, 0})
	fb := appendU32(nil, nf)
	cb := appendU32(nil, nf)
	for range nf {
		fb = append(fb, 0)
		cb = append(cb, rawBody([][2]uint32{{MaxLocals, uint32(i64)}}, nil)...)
	}
	mod := rawModule(typ, rawSection(secFunction, fb), rawSection(secCode, cb))
	out, err := Instrument(mod, Options{MaxCallDepth: 1000})
	if err != nil {
		t.Logf("refused by Instrument: %v", err)
		return
	}
	var before, after goruntime.MemStats
	goruntime.GC()
	goruntime.ReadMemStats(&before)
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	compiled, err := rt.CompileModule(ctx, out)
	if err != nil {
		t.Logf("refused by wazero: %v", err)
		return
	}
	goruntime.GC()
	goruntime.ReadMemStats(&after)
	held := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	goruntime.KeepAlive(compiled)
	t.Logf("a %d-byte module holds %d MiB once compiled", len(mod), held>>20)
	// The runtime reserves compiledFactor (6) bytes per module byte; allow 1000.
	if held > int64(len(mod))*1000 {
		t.Errorf("a %d-byte module made wazero hold %d MiB (%d bytes per module byte): Instrument should bound the locals of the whole module, not of one function",
			len(mod), held>>20, held/int64(len(mod)))
	}
}
