package wasmguard

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// asm assembles small modules for tests, section by section.
type asm struct {
	types   []funcType
	imports []asmImport
	funcs   []asmFunc
	tables  [][3]uint32 // min, max, hasMax
	memory  []uint32    // min, max (max 0: none)
	globals [][]byte    // whole entries: type, mut, init expr
	exports []asmExport
	start   *uint32
	elems   [][]byte // whole segment entries
	names   []string // function names, by index, for the name section
}

type asmImport struct {
	module, name string
	typ          uint32
}

type asmFunc struct {
	typ    uint32
	locals []byte // one local per byte, of that type
	code   []byte // instructions, without the final end
}

type asmExport struct {
	name string
	kind byte
	idx  uint32
}

func (a *asm) typ(params, results []byte) uint32 {
	a.types = append(a.types, funcType{params, results})
	return uint32(len(a.types) - 1)
}

func (a *asm) fn(typ uint32, locals []byte, code ...byte) uint32 {
	a.funcs = append(a.funcs, asmFunc{typ, locals, code})
	return uint32(len(a.imports) + len(a.funcs) - 1)
}

func (a *asm) export(name string, idx uint32) { a.exports = append(a.exports, asmExport{name, 0, idx}) }

func (a *asm) bytes() []byte {
	b := append([]byte(nil), wasmHeader...)
	sec := func(id byte, body []byte) {
		b = append(b, id)
		b = appendU32(b, uint32(len(body)))
		b = append(b, body...)
	}
	var s []byte
	s = appendU32(nil, uint32(len(a.types)))
	for _, t := range a.types {
		s = append(s, 0x60)
		s = append(appendU32(s, uint32(len(t.params))), t.params...)
		s = append(appendU32(s, uint32(len(t.results))), t.results...)
	}
	sec(secType, s)
	if len(a.imports) > 0 {
		s = appendU32(nil, uint32(len(a.imports)))
		for _, im := range a.imports {
			s = appendName(appendName(s, im.module), im.name)
			s = appendU32(append(s, 0x00), im.typ)
		}
		sec(secImport, s)
	}
	s = appendU32(nil, uint32(len(a.funcs)))
	for _, f := range a.funcs {
		s = appendU32(s, f.typ)
	}
	sec(secFunction, s)
	if len(a.tables) > 0 {
		s = appendU32(nil, uint32(len(a.tables)))
		for _, t := range a.tables {
			s = append(s, 0x70)
			if t[2] != 0 {
				s = appendU32(appendU32(append(s, 0x01), t[0]), t[1])
			} else {
				s = appendU32(append(s, 0x00), t[0])
			}
		}
		sec(secTable, s)
	}
	if a.memory != nil {
		if a.memory[1] > 0 {
			sec(secMemory, appendU32(appendU32([]byte{1, 0x01}, a.memory[0]), a.memory[1]))
		} else {
			sec(secMemory, appendU32([]byte{1, 0x00}, a.memory[0]))
		}
	}
	if len(a.globals) > 0 {
		sec(secGlobal, vec(a.globals))
	}
	s = appendU32(nil, uint32(len(a.exports)))
	for _, e := range a.exports {
		s = appendU32(append(appendName(s, e.name), e.kind), e.idx)
	}
	sec(secExport, s)
	if a.start != nil {
		sec(secStart, appendU32(nil, *a.start))
	}
	if len(a.elems) > 0 {
		sec(secElement, vec(a.elems))
	}
	s = appendU32(nil, uint32(len(a.funcs)))
	for _, f := range a.funcs {
		var body []byte
		body = appendU32(body, uint32(len(f.locals)))
		for _, l := range f.locals {
			body = append(body, 0x01, l)
		}
		body = append(append(body, f.code...), opEnd)
		s = append(appendU32(s, uint32(len(body))), body...)
	}
	sec(secCode, s)
	if len(a.names) > 0 {
		s = appendName(nil, "name")
		var m []byte
		m = appendU32(m, uint32(len(a.names)))
		for i, n := range a.names {
			m = appendName(appendU32(m, uint32(i)), n)
		}
		s = append(appendU32(append(s, nameFunctions), uint32(len(m))), m...)
		sec(secCustom, s)
	}
	return b
}

// vec is a vector of whole, already encoded entries.
func vec(entries [][]byte) []byte {
	b := appendU32(nil, uint32(len(entries)))
	for _, e := range entries {
		b = append(b, e...)
	}
	return b
}

// Test errors the guard's host functions end a call with.
var (
	errDeadline = errors.New("deadline")
	errStack    = errors.New("call stack exhausted")
)

// newGuardRuntime is a wazero runtime with the guard's host module, as packhost links
// it: tick ends the call once ctx is done, else refills the budget.
func newGuardRuntime(ctx context.Context, ticks *int) (wazero.Runtime, error) {
	rt := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfig().WithMemoryLimitPages(16384))
	_, err := rt.NewHostModuleBuilder(ImportModule).
		NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(func(ctx context.Context, _ api.Module, stack []uint64) {
		if ticks != nil {
			*ticks++
		}
		if d, ok := ctx.Deadline(); ctx.Err() != nil || ok && !time.Now().Before(d) {
			panic(errDeadline)
		}
		stack[0] = Refill
	}), nil, []api.ValueType{api.ValueTypeI32}).Export(ImportTick).
		NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(func(context.Context, api.Module, []uint64) {
		panic(errStack)
	}), nil, nil).Export(ImportStackExhausted).
		Instantiate(ctx)
	if err != nil {
		return nil, fmt.Errorf("instantiate guard host module: %w", err)
	}
	_, err = rt.NewHostModuleBuilder("env").NewFunctionBuilder().
		WithGoModuleFunction(api.GoModuleFunc(func(context.Context, api.Module, []uint64) {}), nil, nil).Export("nop").
		Instantiate(ctx)
	if err != nil {
		return nil, fmt.Errorf("instantiate env host module: %w", err)
	}
	return rt, nil
}

func wazeroConfig() wazero.ModuleConfig { return wazero.NewModuleConfig().WithName("") }
