package wasmguard

import (
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"time"
)

const (
	i32 = 0x7f
	i64 = 0x7e
)

// fibModule exports fib(n), loop-free recursion: no loop header ever runs.
func fibModule() *asm {
	a := &asm{}
	t := a.typ([]byte{i32}, []byte{i32})
	f := uint32(0)
	a.fn(t, nil,
		0x20, 0x00, 0x41, 0x02, 0x49, 0x04, i32, // if n < 2
		0x20, 0x00, // n
		0x05,                                        // else
		0x20, 0x00, 0x41, 0x01, 0x6b, 0x10, byte(f), // fib(n-1)
		0x20, 0x00, 0x41, 0x02, 0x6b, 0x10, byte(f), // fib(n-2)
		0x6a, 0x0b)
	a.export("run", f)
	a.names = []string{"fib"}
	return a
}

// outcome is what one call of an export did, comparable across the two modules.
type outcome struct {
	results []uint64
	err     string // the error's first line: the trap, without the stack trace
	memory  [32]byte
}

func callExport(t testing.TB, ctx context.Context, module []byte, guarded bool, opts Options, name string, args ...uint64) (outcome, error) {
	o, err, _ := timedCall(t, ctx, 0, module, guarded, opts, name, args...)
	return o, err
}

// timedCall instantiates module (instrumented when guarded) and calls its export name,
// under a deadline of timeout (none when 0) that starts with the call; it reports how
// long the call took.
func timedCall(t testing.TB, ctx context.Context, timeout time.Duration, module []byte, guarded bool, opts Options, name string, args ...uint64) (outcome, error, time.Duration) {
	t.Helper()
	if guarded {
		var err error
		if module, err = Instrument(module, opts); err != nil {
			t.Fatalf("instrument: %v", err)
		}
	}
	rt, err := newGuardRuntime(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(context.Background())
	compiled, err := rt.CompileModule(context.Background(), module)
	if err != nil {
		t.Fatalf("compile (guarded=%v): %v", guarded, err)
	}
	mod, err := rt.InstantiateModule(ctx, compiled, wazeroConfig())
	if err != nil {
		return outcome{err: firstLine(err)}, err, 0
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	start := time.Now()
	res, callErr := mod.ExportedFunction(name).Call(ctx, args...)
	took := time.Since(start)
	o := outcome{results: res}
	if callErr != nil {
		o.err = firstLine(callErr)
	}
	if _, ok := compiled.ExportedMemories()["memory"]; ok {
		mem := mod.Memory()
		b, _ := mem.Read(0, mem.Size())
		o.memory = sha256.Sum256(b)
	}
	return o, callErr, took
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

func TestInstrumentKeepsResults(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		mod  []byte
		fn   string
		args []uint64
		want []uint64
	}{
		{"loop-free recursion", fibModule().bytes(), "run", []uint64{20}, []uint64{6765}},
		{"loop", loopSumModule(), "run", []uint64{1000}, []uint64{499500}},
		{"memory.copy forward across chunks", copyModule(), "forward", nil, nil},
		{"memory.copy backward across chunks", copyModule(), "backward", nil, nil},
		{"memory.copy out of bounds", copyModule(), "oob", nil, nil},
		{"memory.fill across chunks", copyModule(), "fill", nil, nil},
		{"memory.fill out of bounds", copyModule(), "filloob", nil, nil},
		{"tables, elements, start and ref.func", tableModule(), "run", []uint64{1}, []uint64{12}},
		{"multi-value return through the depth block", multiValueModule(), "run", []uint64{5}, []uint64{5, 6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plain, perr := callExport(t, ctx, tc.mod, false, Options{}, tc.fn, tc.args...)
			guarded, gerr := callExport(t, ctx, tc.mod, true, Options{MaxCallDepth: 1000, MaxTableElements: 1 << 16}, tc.fn, tc.args...)
			if (perr == nil) != (gerr == nil) || plain.err != guarded.err {
				t.Fatalf("errors differ: plain %q, guarded %q", plain.err, guarded.err)
			}
			if tc.want != nil && (perr != nil || !equalU64(plain.results, tc.want)) {
				t.Fatalf("plain module returned %v (%v), want %v", plain.results, perr, tc.want)
			}
			if !equalU64(plain.results, guarded.results) || plain.memory != guarded.memory {
				t.Fatalf("guarded module returned %v with memory %x, plain %v with memory %x", guarded.results, guarded.memory[:4], plain.results, plain.memory[:4])
			}
		})
	}
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// loopSumModule exports run(n) = 0+1+...+(n-1), with a loop.
func loopSumModule() []byte {
	a := &asm{}
	t := a.typ([]byte{i32}, []byte{i32})
	f := a.fn(t, []byte{i32, i32}, // i, sum
		0x03, 0x40, // loop
		0x20, 0x01, 0x20, 0x00, 0x4f, 0x04, 0x40, 0x20, 0x02, 0x0f, 0x0b, // if i >= n return sum
		0x20, 0x02, 0x20, 0x01, 0x6a, 0x21, 0x02, // sum += i
		0x20, 0x01, 0x41, 0x01, 0x6a, 0x21, 0x01, // i++
		0x0c, 0x00, 0x0b, // br 0; end
		0x41, 0x00)
	a.export("run", f)
	return a.bytes()
}

// copyModule has a 4 MiB memory with a pattern written by its start function, and
// exports overlapping copies and fills larger than a chunk, and out-of-bounds ones.
func copyModule() []byte {
	a := &asm{memory: []uint32{64, 64}}
	v := a.typ(nil, nil)
	pattern := a.fn(v, []byte{i32},
		0x03, 0x40,
		0x20, 0x00, 0x20, 0x00, 0x41, 0x07, 0x6c, 0x3a, 0x00, 0x00, // store8 i, i*7
		0x20, 0x00, 0x41, 0x01, 0x6a, 0x22, 0x00, // i++
		0x41, 0x80, 0x80, 0x80, 0x02, 0x49, 0x0d, 0x00, // br_if i < 4 MiB
		0x0b)
	a.start = &pattern
	cp := func(d, s, n uint32) []byte {
		b := appendSigned([]byte{0x41}, int64(int32(d)))
		b = appendSigned(append(b, 0x41), int64(int32(s)))
		b = appendSigned(append(b, 0x41), int64(int32(n)))
		return append(b, copyOp...)
	}
	fill := func(d, val, n uint32) []byte {
		b := appendSigned([]byte{0x41}, int64(int32(d)))
		b = appendSigned(append(b, 0x41), int64(int32(val)))
		b = appendSigned(append(b, 0x41), int64(int32(n)))
		return append(b, fillOp...)
	}
	a.export("forward", a.fn(v, nil, cp(1000, 3000, 2_500_000)...))
	a.export("backward", a.fn(v, nil, cp(3001, 1000, 2_500_000)...))
	a.export("oob", a.fn(v, nil, append(cp(10, 20, 30), cp(4<<20-100, 0, 200)...)...))
	a.export("fill", a.fn(v, nil, fill(77, 0xab, 3_000_001)...))
	a.export("filloob", a.fn(v, nil, append(fill(0, 1, 10), fill(4<<20-5, 2, 6)...)...))
	a.exports = append(a.exports, asmExport{"memory", 0x02, 0})
	return a.bytes()
}

// tableModule: a table filled by an element segment and by ref.func from a global,
// a start function that sets a global, and call_indirect through it.
func tableModule() []byte {
	a := &asm{tables: [][3]uint32{{4, 0, 0}}}
	rt := a.typ(nil, []byte{i32})
	run := a.typ([]byte{i32}, []byte{i32})
	v := a.typ(nil, nil)
	ten := a.fn(rt, nil, 0x41, 10)
	two := a.fn(rt, nil, 0x41, 2)
	a.globals = append(a.globals,
		[]byte{i32, 0x01, 0x41, 0x00, 0x0b},       // global 0: set by start
		[]byte{0x70, 0x00, 0xd2, byte(two), 0x0b}) // global 1: ref.func two
	start := a.fn(v, nil, 0x41, 0x00, 0x23, 0x01, 0x26, 0x00, // table[0] = global 1 (two)
		0x41, 0x01, 0x24, 0x00) // global 0 = 1
	a.start = &start
	a.elems = append(a.elems, []byte{0x00, 0x41, 0x01, 0x0b, 0x01, byte(ten)}) // table[1] = ten
	f := a.fn(run, nil,
		0x20, 0x00, 0x11, byte(rt), 0x00, // call_indirect table[arg]
		0x41, 0x00, 0x11, byte(rt), 0x00, // call_indirect table[0]
		0x6a, 0x23, 0x00, 0x6b, // - global 0... plus
		0x41, 0x01, 0x6a) // + 1
	a.export("run", f)
	return a.bytes()
}

// multiValueModule returns two values from a function that makes calls, through an
// early return inside a block: the depth counter's wrapping block must carry both.
func multiValueModule() []byte {
	a := &asm{}
	two := a.typ([]byte{i32}, []byte{i32, i32})
	one := a.typ([]byte{i32}, []byte{i32})
	inc := a.fn(one, nil, 0x20, 0x00, 0x41, 0x01, 0x6a)
	f := a.fn(two, nil,
		0x02, 0x40, // block
		0x20, 0x00, 0x20, 0x00, 0x10, byte(inc), 0x0f, // return (n, inc(n))
		0x0b,
		0x41, 0x00, 0x41, 0x00)
	a.export("run", f)
	return a.bytes()
}

// runaway is a module whose export never ends by itself (or not for minutes).
type runaway struct {
	name    string
	mod     func() []byte
	fn      string
	args    []uint64
	wantErr error
}

func runaways() []runaway {
	return []runaway{
		{"loop-free recursion", func() []byte { return fibModule().bytes() }, "run", []uint64{45}, errDeadline},
		{"tight loop", func() []byte {
			a := &asm{}
			a.export("run", a.fn(a.typ(nil, nil), nil, 0x03, 0x40, 0x0c, 0x00, 0x0b))
			return a.bytes()
		}, "run", nil, errDeadline},
		{"endless recursion", func() []byte {
			a := &asm{}
			a.export("run", a.fn(a.typ(nil, nil), nil, 0x10, 0x00))
			return a.bytes()
		}, "run", nil, errStack},
		{"deep call chain", callChainModule, "run", nil, errDeadline},
		{"memory.fill from recursion", fillRecursionModule, "run", []uint64{40}, errDeadline},
		{"one huge memory.fill", func() []byte {
			a := &asm{memory: []uint32{16384, 16384}}
			a.export("run", a.fn(a.typ(nil, nil), nil, append([]byte{0x41, 0x00, 0x41, 0x01, 0x41, 0x80, 0x80, 0x80, 0x80, 0x04}, fillOp...)...))
			return a.bytes()
		}, "run", nil, errDeadline},
		{"host calls in a loop", func() []byte {
			a := &asm{}
			v := a.typ(nil, nil)
			a.imports = append(a.imports, asmImport{"env", "nop", v})
			a.export("run", a.fn(v, nil, 0x03, 0x40, 0x10, 0x00, 0x0c, 0x00, 0x0b))
			return a.bytes()
		}, "run", nil, errDeadline},
	}
}

// callChainModule: 40 functions, each calling the next twice, without a loop.
func callChainModule() []byte {
	a := &asm{}
	v := a.typ(nil, nil)
	const n = 40
	for i := range n - 1 {
		a.fn(v, nil, 0x10, byte(i+1), 0x10, byte(i+1))
	}
	a.fn(v, nil, 0x41, 0x01, 0x1a)
	a.export("run", 0)
	return a.bytes()
}

// fillRecursionModule: f(n) fills 16 MiB, then calls f(n-1) twice.
func fillRecursionModule() []byte {
	a := &asm{memory: []uint32{256, 256}}
	t := a.typ([]byte{i32}, nil)
	code := append([]byte{0x41, 0x00, 0x41, 0x07, 0x41, 0x80, 0x80, 0x80, 0x08}, fillOp...)
	code = append(code, 0x20, 0x00, 0x04, 0x40,
		0x20, 0x00, 0x41, 0x01, 0x6b, 0x10, 0x00,
		0x20, 0x00, 0x41, 0x01, 0x6b, 0x10, 0x00, 0x0b)
	a.export("run", a.fn(t, nil, code...))
	return a.bytes()
}

// TestInstrumentStopsRunaways: each runaway ends within its deadline plus 10 ms with the
// guard's error. The best of three tries is judged, so that one descheduling on a busy
// machine does not decide.
func TestInstrumentStopsRunaways(t *testing.T) {
	const deadline, slack = 20 * time.Millisecond, 10 * time.Millisecond
	for _, tc := range runaways() {
		t.Run(tc.name, func(t *testing.T) {
			mod := tc.mod()
			best := time.Hour
			for range 3 {
				_, err, took := timedCall(t, context.Background(), deadline, mod, true, Options{MaxCallDepth: 10000}, tc.fn, tc.args...)
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, want %v", err, tc.wantErr)
				}
				best = min(best, took)
			}
			if best > deadline+slack {
				t.Fatalf("the best of three runs ended after %v, past the deadline %v + %v", best, deadline, slack)
			}
		})
	}
}

func TestInstrumentKeepsNames(t *testing.T) {
	a := &asm{}
	v := a.typ(nil, nil)
	boom := a.fn(v, nil, 0x00)
	a.export("run", a.fn(v, nil, 0x03, 0x40, 0x10, byte(boom), 0x0b))
	a.names = []string{"boom", "caller"}
	_, err := callExport(t, context.Background(), a.bytes(), true, Options{}, "run")
	if err == nil || !strings.Contains(err.Error(), "boom") || !strings.Contains(err.Error(), "caller") {
		t.Fatalf("the trap's stack trace does not name the functions: %v", err)
	}
	guarded, err := Instrument(a.bytes(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := newGuardRuntime(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(context.Background())
	compiled, err := rt.CompileModule(context.Background(), guarded)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range compiled.ExportedFunctions() {
		names[f.DebugName()] = true
	}
	if !names[".caller"] {
		t.Fatalf("exported function names after the rewrite: %v, want .caller", names)
	}
}

func TestInstrumentLimitsTables(t *testing.T) {
	grow := func(min, max uint32, hasMax bool) []byte {
		a := &asm{tables: [][3]uint32{{min, max, map[bool]uint32{true: 1}[hasMax]}}}
		a.export("run", a.fn(a.typ(nil, []byte{i32}), nil, 0xd0, 0x70, 0x41, 0x80, 0x01, 0xfc, 0x0f, 0x00)) // table.grow(null, 128)
		return a.bytes()
	}
	opts := Options{MaxTableElements: 100, MaxTables: 1}
	for _, tc := range []struct {
		name string
		mod  []byte
		want uint64
	}{
		{"no maximum", grow(1, 0, false), uint64(0xffffffff)},
		{"a larger maximum", grow(1, 1000, true), uint64(0xffffffff)},
		{"within the limit", grow(1, 200, true), uint64(0xffffffff)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plain, err := callExport(t, context.Background(), tc.mod, false, opts, "run")
			if err != nil || plain.results[0] != 1 {
				t.Fatalf("the plain module's table.grow returned %v, %v; want 1", plain.results, err)
			}
			guarded, err := callExport(t, context.Background(), tc.mod, true, opts, "run")
			if err != nil || guarded.results[0] != tc.want {
				t.Fatalf("the guarded module's table.grow returned %v, %v; want -1", guarded.results, err)
			}
		})
	}
	if _, err := Instrument(grow(101, 0, false), opts); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "101 elements") {
		t.Fatalf("a table declared with 101 elements: %v, want a refusal naming the figure", err)
	}
	two := &asm{tables: [][3]uint32{{1, 1, 1}, {1, 1, 1}}}
	two.export("run", two.fn(two.typ(nil, nil), nil))
	if _, err := Instrument(two.bytes(), opts); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("two tables with a limit of one: %v, want refused", err)
	}
}

func TestInstrumentRefuses(t *testing.T) {
	v := func(code ...byte) []byte {
		a := &asm{}
		a.export("run", a.fn(a.typ(nil, nil), nil, code...))
		return a.bytes()
	}
	reserved := &asm{}
	reserved.imports = append(reserved.imports, asmImport{ImportModule, ImportTick, reserved.typ(nil, []byte{i32})})
	good := v()
	for _, tc := range []struct {
		name string
		mod  []byte
		want string
	}{
		{"tail call", v(0x12, 0x00), "tail calls"},
		{"exceptions", v(0x06, 0x40, 0x0b), "exception"},
		{"atomics", v(0xfe, 0x03, 0x00), "threads"},
		{"relaxed SIMD", v(0xfd, 0x80, 0x02), "relaxed SIMD"},
		{"the guard's import module", reserved.bytes(), "reserves"},
		{"truncated", good[:len(good)-3], "framing"},
		{"not wasm", []byte("\x00asm\x02\x00\x00\x00"), "magic"},
		{"tag section", append(append([]byte(nil), wasmHeader...), secTag, 0x01, 0x00), "tag section"},
		// Declared counts that a decoder would allocate for: gigabytes from a few bytes.
		{"a data section claiming 100M segments", []byte("\x00asm\x01\x00\x00\x00\x0b\x06\xff\xff\xff\x30\x30\x30"), "vector of"},
		{"four billion locals", hugeLocals(), "locals"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Instrument(tc.mod, Options{})
			if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an ErrUnsupported naming %q", err, tc.want)
			}
		})
	}
}

func hugeLocals() []byte {
	a := &asm{}
	a.export("run", a.fn(a.typ(nil, nil), nil))
	b := a.bytes()
	// The last section is the code: one body of "no locals, end" (02 00 0b). Swap in one
	// group of 2^32-1 i32 locals.
	body := []byte{0x01, 0xff, 0xff, 0xff, 0xff, 0x0f, i32, opEnd}
	code := append([]byte{0x01, byte(len(body))}, body...)
	i := len(b) - 6 // id, size, count, body size, 00, 0b
	return append(append(b[:i:i], secCode, byte(len(code))), code...)
}

// TestInstrumentTicksRarely: a loop of a million short iterations calls the host only a
// few times, so that the guard's cost stays in the budget's arithmetic.
func TestInstrumentTicksRarely(t *testing.T) {
	mod, err := Instrument(loopSumModule(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	ticks := 0
	rt, err := newGuardRuntime(context.Background(), &ticks)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(context.Background())
	m, err := rt.Instantiate(context.Background(), mod)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.ExportedFunction("run").Call(context.Background(), 1_000_000); err != nil {
		t.Fatal(err)
	}
	// About 15 instructions an iteration: 15M units, 1M a refill.
	if ticks < 5 || ticks > 40 {
		t.Fatalf("a million iterations ticked %d times, want about 15", ticks)
	}
}
