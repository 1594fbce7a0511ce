package wasmguard_test

// Attacks on the runtime's memory budget (runtime/pool.go limitedMemory, runtime/budget.go),
// through the runtime's public API. They live here because this package's tests are the
// ones the review may run; they import the runtime, which imports wasmguard, so they are
// an external test package.

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/packhost/packhost/runtime"
)

func sec(id byte, body ...byte) []byte {
	return append([]byte{id, byte(len(body))}, body...) // every section here is < 128 bytes
}

func name(s string) []byte { return append([]byte{byte(len(s))}, s...) }

// budgetPack is a minimal pack (memory of minPages, packhost_alloc, packhost_handle).
// With trapStart its start function traps, so instantiation fails after wazero has
// allocated its memory through the runtime's allocator.
func budgetPack(t *testing.T, id string, minPages byte, trapStart bool) []byte {
	return budgetPackHandle(t, id, minPages, trapStart, 0x41, 0x00)
}

// budgetPackHandle is budgetPack with handle's code (without the final end).
func budgetPackHandle(t *testing.T, id string, minPages byte, trapStart bool, handle ...byte) []byte {
	t.Helper()
	m := []byte{0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00}
	m = append(m, sec(1, 3,
		0x60, 1, 0x7f, 1, 0x7f, // 0: (i32) -> i32
		0x60, 2, 0x7f, 0x7f, 1, 0x7f, // 1: (i32, i32) -> i32
		0x60, 0, 0)...) // 2: () -> ()
	m = append(m, sec(3, 3, 0, 1, 2)...)
	m = append(m, sec(5, 1, 0x00, minPages)...)
	var exp []byte
	exp = append(exp, 3)
	exp = append(append(exp, name("memory")...), 0x02, 0)
	exp = append(append(exp, name("packhost_alloc")...), 0x00, 0)
	exp = append(append(exp, name("packhost_handle")...), 0x00, 1)
	m = append(m, sec(7, exp...)...)
	if trapStart {
		m = append(m, sec(8, 2)...)
	}
	code := []byte{3, 4, 0, 0x41, 0x10, 0x0b} // alloc: 16
	code = append(code, byte(len(handle)+2), 0)
	code = append(append(code, handle...), 0x0b)
	code = append(code, 3, 0, 0x00, 0x0b) // start: unreachable
	m = append(m, sec(10, code...)...)
	wasm, err := runtime.EmbedManifest(m, []byte(`{"abi":1,"pack_id":"`+id+`","flows":[{"id":"f","entry":true}]}`))
	if err != nil {
		t.Fatal(err)
	}
	return wasm
}

// TestAttackFailedInstantiationLeaksBudget: when instantiation fails after wazero
// allocated the instance's memory (a start function that traps, or an active data
// segment out of bounds), wazero returns the error without closing the half-built
// module, so limitedMemory.Free is never called and the memory's reservation is never
// released. newInstance gives back only instanceOverhead. Every load attempt of such a
// pack (NewRevision starts a warm instance; the controller retries) leaks minPages of
// the replica's budget for good; with three tenant names (namespace/name keys the account) a tenant fills the whole budget,
// and every tenant's revisions and activities are then refused until restart.
func TestAttackFailedInstantiationLeaksBudget(t *testing.T) {
	ctx := context.Background()
	const budget = 64 << 20
	e, err := runtime.NewEngine(ctx, runtime.EngineConfig{MemoryBudget: budget})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)

	// 4 MiB of memory then a trapping start; then 64 KiB ones to fill what is left.
	big, small := budgetPack(t, "leak", 64, true), budgetPack(t, "leak", 1, true)
	attempts := 0
	for _, tenant := range []string{"attacker-1", "attacker-2", "attacker-3"} {
		for _, bad := range [][]byte{big, small} {
			for range 1000 {
				p, err := e.Compile(ctx, bad)
				if err != nil {
					t.Fatal(err)
				}
				attempts++
				_, err = e.NewRevision(ctx, runtime.RevisionConfig{Name: "evil/" + tenant, Tenant: tenant, Packs: []*runtime.Pack{p}})
				if err == nil {
					t.Fatal("a pack whose start function traps loaded")
				}
				if errors.Is(err, runtime.ErrMemoryBudget) {
					break // this tenant's share (or the replica's budget) is full
				}
			}
		}
	}
	stats := e.MemoryStats()
	t.Logf("after %d load attempts: %+v", attempts, stats)
	if stats.Instances != 0 {
		t.Errorf("failed instantiations still hold %d MiB of the instance budget (no instance is alive)", stats.Instances>>20)
	}

	good := budgetPack(t, "victim", 1, false)
	p, err := e.Compile(ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	r, err := e.NewRevision(ctx, runtime.RevisionConfig{Name: "victim/r", Tenant: "victim", Packs: []*runtime.Pack{p}})
	if err != nil {
		if errors.Is(err, runtime.ErrMemoryBudget) {
			t.Fatalf("another tenant's 64 KiB pack is refused: %v", err)
		}
		t.Fatal(err)
	}
	r.Close(ctx)
}

// TestAttackGrowUnderBudgetPressureIsQuadratic: limitedMemory.Reallocate doubles the
// capacity ahead, but when the doubling does not fit the budget (or the tenant's share)
// it reserves exactly the size asked. From then on every memory.grow of one page
// allocates a new buffer and copies the whole memory, and memory.grow is one unit for
// the guard: a loop of one-page grows is quadratic work that never reaches tick. Here
// (a 64 MiB budget, a 32 MiB instance) that is ~250 reallocations of 16-32 MiB, seconds
// past a 20 ms deadline; with a 1 GiB instance under a 2 GiB budget it is ~8,000
// reallocations of 0.5-1 GiB: terabytes of copying, minutes past any deadline, and as
// much garbage for the GC.
func TestAttackGrowUnderBudgetPressureIsQuadratic(t *testing.T) {
	ctx := context.Background()
	e, err := runtime.NewEngine(ctx, runtime.EngineConfig{MemoryBudget: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	grow := budgetPackHandle(t, "grow", 1, false,
		0x03, 0x40, // loop
		0x41, 0x01, 0x40, 0x00, // memory.grow 1
		0x41, 0x7f, 0x47, 0x0d, 0x00, // br_if (result != -1)
		0x0b,
		0x41, 0x00)
	p, err := e.Compile(ctx, grow)
	if err != nil {
		t.Fatal(err)
	}
	const timeout = 20 * time.Millisecond
	r, err := e.NewRevision(ctx, runtime.RevisionConfig{Name: "evil/grow", Tenant: "evil", Packs: []*runtime.Pack{p},
		Limits: runtime.Limits{MemoryPages: 512, Timeout: timeout}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(ctx)
	start := time.Now()
	_, err = r.Handle(ctx, &runtime.Activity{Kind: "message"})
	took := time.Since(start)
	t.Logf("Handle took %v (deadline %v): %v; %+v", took, timeout, err, e.MemoryStats())
	if took > 25*timeout {
		t.Errorf("an activity with a %v deadline ran %v: one-page memory.grow steps reallocate and copy the whole memory once the budget refuses doubling, uncharged by the guard", timeout, took)
	}
}

func leb(v uint32) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v == 0 {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func secL(id byte, body ...byte) []byte {
	return append(append([]byte{id}, leb(uint32(len(body)))...), body...)
}

// TestAttackWASIVectorCallsEscapeDeadline: a call to an import is charged
// ImportCallCost (1024 units) whatever it does, and every pack may import all of
// wasi_snapshot_preview1. fd_write walks its iovec array and calls the stdout writer
// (guestWriter: a rate limiter per call) once per entry: one call over 8 MiB of zero
// iovecs is 1M writes, ~110 ms here, and a Refill of budget pays for ~1,000 such calls
// (~2 minutes); over a 1 GiB memory one call is 128M writes, ~14 s, and a Refill ~4 h. The
// same holds for poll_oneoff (subscriptions) and, with the random capability, random_get
// (a length up to the memory's size of crypto/rand). The host call itself never checks
// the deadline.
func TestAttackWASIVectorCallsEscapeDeadline(t *testing.T) {
	ctx := context.Background()
	e, err := runtime.NewEngine(ctx, runtime.EngineConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	m := []byte{0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00}
	m = append(m, secL(1, 3,
		0x60, 1, 0x7f, 1, 0x7f, // 0: (i32) -> i32
		0x60, 2, 0x7f, 0x7f, 1, 0x7f, // 1: (i32, i32) -> i32
		0x60, 4, 0x7f, 0x7f, 0x7f, 0x7f, 1, 0x7f)...) // 2: fd_write
	imp := append([]byte{1}, name("wasi_snapshot_preview1")...)
	imp = append(append(imp, name("fd_write")...), 0x00, 2)
	m = append(m, secL(2, imp...)...)
	m = append(m, secL(3, 2, 0, 1)...)
	m = append(m, secL(5, 1, 0x00, 0x80, 0x02)...) // 256 pages: 16 MiB
	var exp []byte
	exp = append(exp, 3)
	exp = append(append(exp, name("memory")...), 0x02, 0)
	exp = append(append(exp, name("packhost_alloc")...), 0x00, 1)
	exp = append(append(exp, name("packhost_handle")...), 0x00, 2)
	m = append(m, secL(7, exp...)...)
	handle := []byte{1, 2, 0x7f, // locals: the counter, the last errno
		0x41, 0x14, 0x21, 0x02, // n = 20
		0x03, 0x40, // loop
		0x41, 0x01, 0x41, 0x80, 0x80, 0xc0, 0x00, 0x41, 0x80, 0x80, 0xc0, 0x00, 0x41, 0x00, 0x10, 0x00, 0x21, 0x03, // errno = fd_write(1, 1 MiB, 1M iovecs, 0)
		0x20, 0x02, 0x41, 0x01, 0x6b, 0x22, 0x02, 0x0d, 0x00, // br_if --n
		0x0b, 0x20, 0x03, 0x0b} // return errno: 0 proves the writes happened
	code := append([]byte{2, 4, 0, 0x41, 0x10, 0x0b}, leb(uint32(len(handle)))...)
	code = append(code, handle...)
	m = append(m, secL(10, code...)...)
	wasm, err := runtime.EmbedManifest(m, []byte(`{"abi":1,"pack_id":"wasi","flows":[{"id":"f","entry":true}]}`))
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.Compile(ctx, wasm)
	if err != nil {
		t.Fatal(err)
	}
	const timeout = 20 * time.Millisecond
	r, err := e.NewRevision(ctx, runtime.RevisionConfig{Name: "evil/wasi", Tenant: "evil", Packs: []*runtime.Pack{p},
		Limits: runtime.Limits{Timeout: timeout}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(ctx)
	start := time.Now()
	_, err = r.Handle(ctx, &runtime.Activity{Kind: "message"})
	took := time.Since(start)
	t.Logf("Handle took %v (deadline %v): %v", took, timeout, err)
	if took > 25*timeout {
		t.Errorf("an activity with a %v deadline ran %v in 20 fd_write calls of 1M iovecs each (~20K units: no tick)", timeout, took)
	}
}

// TestAttackInstanceOverheadUndercounted: an instance is charged instanceOverhead
// (512 KiB) plus its linear memory, but the guard lets it declare maxTables (4) tables
// of maxTableElements (2^18) references, 8 MiB of host memory per instance (measured:
// 8,199 KiB a wazero instance of a 31-byte module), and wazero allocates ~86 bytes per
// global (a 1 MB pack of 200K globals: ~17 MiB an instance) and keeps a grown call stack
// (tens of MiB after one deep call) in the pooled instance. A tenant's share of the
// budget then stands for 16 or more times as much real memory: the budget no longer
// protects the replica from OOM.
func TestAttackInstanceOverheadUndercounted(t *testing.T) {
	ctx := context.Background()
	e, err := runtime.NewEngine(ctx, runtime.EngineConfig{MemoryBudget: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(ctx)
	m := []byte{0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00}
	m = append(m, secL(1, 2, 0x60, 1, 0x7f, 1, 0x7f, 0x60, 2, 0x7f, 0x7f, 1, 0x7f)...)
	m = append(m, secL(3, 2, 0, 1)...)
	tabs := []byte{4}
	for range 4 {
		tabs = append(tabs, 0x70, 0x00, 0x80, 0x80, 0x10) // funcref, min 2^18
	}
	m = append(m, secL(4, tabs...)...)
	m = append(m, secL(5, 1, 0x00, 1)...)
	var exp []byte
	exp = append(exp, 3)
	exp = append(append(exp, name("memory")...), 0x02, 0)
	exp = append(append(exp, name("packhost_alloc")...), 0x00, 0)
	exp = append(append(exp, name("packhost_handle")...), 0x00, 1)
	m = append(m, secL(7, exp...)...)
	m = append(m, secL(10, 2, 4, 0, 0x41, 0x10, 0x0b, 4, 0, 0x41, 0x00, 0x0b)...)
	wasm, err := runtime.EmbedManifest(m, []byte(`{"abi":1,"pack_id":"tables","flows":[{"id":"f","entry":true}]}`))
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.Compile(ctx, wasm)
	if err != nil {
		t.Fatal(err)
	}
	r, err := e.NewRevision(ctx, runtime.RevisionConfig{Name: "evil/tables", Tenant: "evil", Packs: []*runtime.Pack{p}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(ctx)
	const tables = 4 << 18 * 8 // what wazero allocates for them
	s := e.MemoryStats()
	t.Logf("one instance with 4 tables of 2^18: %d KiB charged, ≥ %d KiB held", s.Instances>>10, tables>>10)
	if s.Instances < tables {
		t.Errorf("an instance holding %d KiB of tables is charged %d KiB: instanceOverhead should be computed from the module (tables' maxima, globals, element segments), not fixed", tables>>10, s.Instances>>10)
	}
}
