package wasmguard

import (
	"errors"
	"fmt"
)

// funcInfo is what the first pass learns of a defined function.
type funcInfo struct {
	instrs     int64 // instructions in the body
	hasLoop    bool
	hasCall    bool // call or call_indirect
	startsLoop bool // the body's first instruction is a loop
	leaf       bool // a small leaf: no checkpoint, charged at its call sites
	usesFill   bool
	usesCopy   bool
	outside    int64 // instructions outside every loop
	bulk       bool  // memory.init or a table bulk operation: charged by its length
}

// Opcodes the rewrite looks at or emits.
const (
	opBlock        = 0x02
	opLoop         = 0x03
	opIf           = 0x04
	opElse         = 0x05
	opEnd          = 0x0b
	opBr           = 0x0c
	opBrIf         = 0x0d
	opReturn       = 0x0f
	opCall         = 0x10
	opCallIndirect = 0x11
	opLocalGet     = 0x20
	opLocalSet     = 0x21
	opLocalTee     = 0x22
	opGlobalGet    = 0x23
	opGlobalSet    = 0x24
	opI32Const     = 0x41
	opI32LtS       = 0x48
	opI32GtU       = 0x4b
	opI32Add       = 0x6a
	opI32Sub       = 0x6b
	opRefFunc      = 0xd2
	opPrefixFC     = 0xfc
	subMemoryCopy  = 10
	subMemoryFill  = 11
	blockEmpty     = 0x40
)

var errNotSupported = errors.New("not supported")

// noIndex is readInstr's index for an instruction that names none.
const noIndex = ^uint32(0)

// readInstr decodes one instruction: its opcode, the sub-opcode of a prefixed one, and an
// immediate the rewrite needs (the function index of call and ref.func; for memory.copy
// and memory.fill, the memory indices or'ed together).
func readInstr(r *reader) (op byte, sub uint32, idx uint32) {
	op = r.byte()
	switch {
	case op <= 0x01, op == opElse, op == opEnd, op == opReturn, op == 0x1a, op == 0x1b,
		op >= 0x45 && op <= 0xc4, op == 0xd1:
	case op == opBlock, op == opLoop, op == opIf:
		start := r.off
		idx = noIndex
		if v := r.signed(33); v < 0 && r.err == nil {
			if r.off-start != 1 || (r.b[start] != blockEmpty && !validValType(r.b[start])) {
				r.fail("bad block type")
			}
		} else if v < 1<<32 {
			idx = uint32(v) // a type index
		}
	case op == opBr, op == opBrIf:
		r.u32()
	case op >= 0x20 && op <= 0x26: // locals, globals, table.get and table.set
		idx = r.u32()
	case op == 0x0e: // br_table
		n := r.count()
		if uint64(n) > uint64(len(r.b)) {
			r.fail("br_table with %d labels", n)
		}
		for i := uint32(0); i <= n && r.err == nil; i++ {
			r.u32()
		}
	case op == opCall, op == opRefFunc:
		idx = r.u32()
	case op == opCallIndirect:
		idx = r.u32() // the type
		r.u32()
	case op == 0x1c: // select t*
		n := r.count()
		if uint64(n) > uint64(len(r.b)) {
			r.fail("select with %d types", n)
		}
		r.bytes(n)
	case op >= 0x28 && op <= 0x3e:
		readMemarg(r)
	case op == 0x3f, op == 0x40: // memory.size, memory.grow
		if r.u32() != 0 && r.err == nil {
			r.fail("memory index other than 0: %v", errNotSupported)
		}
	case op == opI32Const:
		r.signed(32)
	case op == 0x42:
		r.signed(64)
	case op == 0x43:
		r.bytes(4)
	case op == 0x44:
		r.bytes(8)
	case op == 0xd0: // ref.null
		r.byte()
	case op == opPrefixFC:
		sub = r.u32()
		switch {
		case sub <= 7:
		case sub == 8: // memory.init
			r.u32()
			idx = r.u32()
		case sub == 9, sub == 13, sub >= 15 && sub <= 17:
			r.u32()
		case sub == subMemoryCopy:
			idx = r.u32() | r.u32()
		case sub == subMemoryFill:
			idx = r.u32()
		case sub == 12, sub == 14:
			r.u32()
			r.u32()
		default:
			r.fail("instruction 0xfc %d: %v", sub, errNotSupported)
		}
	case op == 0xfd:
		sub = r.u32()
		switch {
		case sub <= 11, sub == 92, sub == 93:
			readMemarg(r)
		case sub == 12, sub == 13:
			r.bytes(16)
		case sub >= 21 && sub <= 34:
			r.byte()
		case sub >= 84 && sub <= 91:
			readMemarg(r)
			r.byte()
		case sub > 255:
			r.fail("instruction 0xfd %d (relaxed SIMD): %v", sub, errNotSupported)
		}
	case op == 0x12, op == 0x13:
		r.fail("tail calls: %v", errNotSupported)
	case op >= 0x06 && op <= 0x0a, op == 0x18, op == 0x19, op == 0x1f:
		r.fail("exception handling: %v", errNotSupported)
	case op == 0xfe:
		r.fail("threads (atomic instructions): %v", errNotSupported)
	default:
		r.fail("opcode %#x: %v", op, errNotSupported)
	}
	return op, sub, idx
}

func readMemarg(r *reader) {
	if align := r.count(); align >= 64 && r.err == nil {
		r.fail("memory index in a memarg (multi-memory): %v", errNotSupported)
	}
	r.u32()
}

// bulkShift is, for a bulk operation whose length is on top of the stack, how far that
// length is shifted right to give its cost (memory: 16 bytes a unit; tables: 2 elements
// a unit), or -1 for other instructions. memory.fill and memory.copy have helpers of
// their own (helpers.go).
func bulkShift(sub uint32) int {
	switch sub {
	case 8: // memory.init
		return chunkShift
	case 12, 14, 15, 17: // table.init, table.copy, table.grow, table.fill
		return 1
	}
	return -1
}

// codeEntries splits the code section into function bodies.
func (m *moduleInfo) codeEntries() error {
	body := m.known[secCode]
	if body == nil {
		if len(m.funcTypes) != 0 {
			return fmt.Errorf("%d functions declared and no code section", len(m.funcTypes))
		}
		return nil
	}
	r := &reader{b: body}
	n := r.count()
	if r.err == nil && int(n) != len(m.funcTypes) {
		return fmt.Errorf("%d bodies for %d functions", n, len(m.funcTypes))
	}
	for i := uint32(0); i < n && r.err == nil; i++ {
		size := r.u32()
		m.bodies = append(m.bodies, r.bytes(size))
	}
	if r.err == nil && !r.done() {
		r.fail("trailing bytes")
	}
	return r.err
}

// readLocals reads a body's local declarations and returns how many locals they declare
// and where the instructions start.
func readLocals(body []byte) (groups uint32, locals uint64, codeStart int, err error) {
	r := &reader{b: body}
	groups = r.count()
	for i := uint32(0); i < groups && r.err == nil; i++ {
		locals += uint64(r.u32())
		if locals > MaxLocals && r.err == nil {
			r.fail("more than %d locals in one function", MaxLocals)
		}
		if v := r.byte(); !validValType(v) && r.err == nil {
			r.fail("local type %#x: %v", v, errNotSupported)
		}
	}
	return groups, locals, r.off, r.err
}

// scanCode is the first pass: what each function contains, so that calls to small
// leaves can be charged at the call site and helpers numbered before the rewrite.
func (m *moduleInfo) scanCode() error {
	if err := m.codeEntries(); err != nil {
		return err
	}
	m.funcs = make([]funcInfo, len(m.bodies))
	var fill, cp bool
	var moduleLocals uint64
	maxModuleLocals := uint64(MaxLocals) + 8*uint64(m.size)
	funcs := m.funcImports + uint32(len(m.funcTypes))
	for i, body := range m.bodies {
		_, locals, start, err := readLocals(body)
		if err != nil {
			return fmt.Errorf("function %d: %w", i, err)
		}
		if moduleLocals += locals; moduleLocals > maxModuleLocals {
			return fmt.Errorf("the module declares more than %d locals in all (%d per byte of the module, beyond the first %d)", maxModuleLocals, 8, MaxLocals)
		}
		// Indices are checked here, not only by wazero: an index one past the module's
		// own would name what the rewrite adds (its globals, imports, helpers, locals)
		// and make an invalid module valid.
		nlocals := uint64(len(m.types[m.funcTypes[i]].params)) + locals
		fi := &m.funcs[i]
		r := &reader{b: body, off: start}
		depth, loops := 0, 0
		// loopDepths records, for each open block, whether it is a loop.
		var loopDepths []bool
		for first := true; ; first = false {
			op, sub, idx := readInstr(r)
			if r.err != nil {
				return fmt.Errorf("function %d: %w", i, r.err)
			}
			fi.instrs++
			if loops == 0 {
				fi.outside++
			}
			switch {
			case op >= opLocalGet && op <= opLocalTee && uint64(idx) >= nlocals,
				(op == opGlobalGet || op == opGlobalSet) && idx >= m.budgetGlobal,
				(op == 0x25 || op == 0x26) && int(idx) >= m.tables,
				(op == opCall || op == opRefFunc) && idx >= funcs,
				op == opCallIndirect && int(idx) >= len(m.types),
				(op == opBlock || op == opLoop || op == opIf) && idx != noIndex && int(idx) >= len(m.types):
				return fmt.Errorf("function %d: instruction %#x names index %d, past the module's own", i, op, idx)
			}
			switch op {
			case opLoop:
				fi.hasLoop = true
				fi.startsLoop = fi.startsLoop || first
				depth++
				loops++
				loopDepths = append(loopDepths, true)
			case opBlock, opIf:
				depth++
				loopDepths = append(loopDepths, false)
			case opCall, opCallIndirect:
				fi.hasCall = true
			case opRefFunc:
				m.importRefs = m.importRefs || idx < m.funcImports
			case opPrefixFC:
				fi.usesFill = fi.usesFill || sub == subMemoryFill && idx == 0
				fi.usesCopy = fi.usesCopy || sub == subMemoryCopy && idx == 0
				fi.bulk = fi.bulk || bulkShift(sub) >= 0
			}
			if op == opEnd {
				if depth == 0 {
					break
				}
				depth--
				if loopDepths[len(loopDepths)-1] {
					loops--
				}
				loopDepths = loopDepths[:len(loopDepths)-1]
			}
		}
		if !r.done() {
			return fmt.Errorf("function %d: %d bytes after its end", i, len(body)-r.off)
		}
		fi.leaf = !fi.hasLoop && !fi.hasCall && fi.instrs <= LeafMax
		fill = fill || fi.usesFill
		cp = cp || fi.usesCopy
	}
	if !m.hasMemory {
		return nil // the module is invalid anyway; leave those instructions alone
	}
	next := int64(m.funcImports) + shift + int64(len(m.funcTypes))
	if fill || cp {
		m.helperType = m.addType(funcType{params: []byte{0x7f, 0x7f, 0x7f}})
	}
	if fill {
		m.fillHelper, next = next, next+1
	}
	if cp {
		m.copyHelper = next
	}
	return nil
}

// region is a stretch of code paid for at one checkpoint.
type region struct {
	cost    int64
	patchAt int // offset of the cost's padded immediate in the output; -1: unchecked
}

const maxRegionCost = 1 << 27

// leadingLoopSlack is how many instructions outside its loops a body that starts with
// a loop may have and still go without an entry check (Go-built functions have a few:
// the loop's end, an unreachable).
const leadingLoopSlack = 8

func (m *moduleInfo) rewriteCode() ([]byte, error) {
	if m.known[secCode] == nil && m.fillHelper < 0 && m.copyHelper < 0 {
		return nil, nil
	}
	n := len(m.bodies)
	if m.fillHelper >= 0 {
		n++
	}
	if m.copyHelper >= 0 {
		n++
	}
	out := appendU32(nil, uint32(n))
	var body []byte
	for i := range m.bodies {
		var err error
		if body, err = m.rewriteBody(i, body[:0]); err != nil {
			return nil, fmt.Errorf("function %d: %w", i, err)
		}
		out = appendU32(out, uint32(len(body)))
		out = append(out, body...)
	}
	if m.fillHelper >= 0 {
		body = m.fillBody(body[:0])
		out = appendU32(out, uint32(len(body)))
		out = append(out, body...)
	}
	if m.copyHelper >= 0 {
		body = m.copyBody(body[:0])
		out = appendU32(out, uint32(len(body)))
		out = append(out, body...)
	}
	return out, nil
}

// blockType is the block type of a block that takes nothing and leaves results.
func (m *moduleInfo) blockType(results []byte) []byte {
	switch len(results) {
	case 0:
		return []byte{blockEmpty}
	case 1:
		return []byte{results[0]}
	}
	key := string(results)
	t, ok := m.blockTypes[key]
	if !ok {
		t = m.addType(funcType{results: results})
		m.blockTypes[key] = t
	}
	return appendSigned(nil, int64(t))
}

func (m *moduleInfo) rewriteBody(i int, out []byte) ([]byte, error) {
	body, fi := m.bodies[i], &m.funcs[i]
	ft := m.types[m.funcTypes[i]]
	groups, locals, codeStart, err := readLocals(body)
	if err != nil {
		return nil, err
	}
	depth := m.opts.MaxCallDepth > 0 && fi.hasCall
	// A body that starts with a loop is checked at that header, unless real work follows
	// the loop outside any other loop: that work is region 0's and needs the entry check.
	entryCheck := !fi.leaf && (!fi.startsLoop || fi.outside > leadingLoopSlack)
	needTemp := entryCheck || fi.hasLoop || depth || fi.bulk
	temp := uint64(len(ft.params)) + locals
	if needTemp && temp >= 1<<32-1 {
		return nil, errors.New("too many locals")
	}
	r := &reader{b: body}
	r.u32() // the group count, written anew
	if needTemp {
		groups++
	}
	out = appendU32(out, groups)
	out = append(out, body[r.off:codeStart]...)
	switch {
	case fi.bulk:
		out = append(out, 0x02, 0x7f) // the check's temporary and a bulk length
	case needTemp:
		out = append(out, 0x01, 0x7f)
	}
	t := uint32(temp)

	regions := []region{{patchAt: -1}}
	if depth {
		out = m.appendDepthEnter(out, t)
	}
	if entryCheck {
		out, regions[0].patchAt = m.appendCheck(out, t)
	}
	if depth {
		out = append(out, opBlock)
		out = append(out, m.blockType(ft.results)...)
	}
	frames := make([]int, 0, 16) // the region of each open block; -1-r marks a loop's own
	cur := 0
	r.off = codeStart
	for {
		start := r.off
		op, sub, idx := readInstr(r)
		if r.err != nil {
			return nil, r.err
		}
		regions[cur].cost++
		switch op {
		case opBlock, opIf:
			out = append(out, body[start:r.off]...)
			frames = append(frames, cur)
		case opLoop:
			out = append(out, body[start:r.off]...)
			frames = append(frames, cur)
			cur = len(regions)
			var at int
			out, at = m.appendCheck(out, t)
			regions = append(regions, region{patchAt: at})
			frames[len(frames)-1] = -1 - cur // remember the loop's region; cur returns to the parent at its end
		case opEnd:
			if len(frames) == 0 {
				if depth {
					out = append(out, opEnd) // the wrapping block
					out = m.appendDepthLeave(out)
				}
				out = append(out, opEnd)
				return patchRegions(out, regions), nil
			}
			top := frames[len(frames)-1]
			frames = frames[:len(frames)-1]
			if top < 0 {
				// The loop's region ends; the parent's is the region of the frame that
				// contained the loop.
				cur = m.parentRegion(frames)
			}
			out = append(out, opEnd)
		case opReturn:
			if depth {
				out = append(out, opBr)
				out = appendU32(out, uint32(len(frames)))
			} else {
				out = append(out, opReturn)
			}
		case opCall:
			out = append(out, opCall)
			out = appendU32(out, m.funcIndex(idx))
			switch {
			case idx < m.funcImports:
				regions[cur].cost += ImportCallCost
			case int(idx-m.funcImports) < len(m.funcs) && m.funcs[idx-m.funcImports].leaf:
				regions[cur].cost += m.funcs[idx-m.funcImports].instrs
			}
		case opCallIndirect:
			out = append(out, body[start:r.off]...)
			if m.importRefs {
				regions[cur].cost += ImportCallCost // it may reach the host
			} else {
				regions[cur].cost += LeafMax
			}
		case opRefFunc:
			out = append(out, opRefFunc)
			out = appendU32(out, m.funcIndex(idx))
		case opPrefixFC:
			switch {
			case sub == subMemoryFill && idx == 0 && m.fillHelper >= 0:
				out = append(out, opCall)
				out = appendU32(out, uint32(m.fillHelper))
			case sub == subMemoryCopy && idx == 0 && m.copyHelper >= 0:
				out = append(out, opCall)
				out = appendU32(out, uint32(m.copyHelper))
			case bulkShift(sub) >= 0:
				// Charged by its length, read off the stack: a loop of memory.init or
				// table.fill does real work per iteration that its header does not see.
				out = m.appendBulkCharge(out, t, t+1, bulkShift(sub))
				out = append(out, body[start:r.off]...)
			default:
				out = append(out, body[start:r.off]...)
			}
		default:
			out = append(out, body[start:r.off]...)
		}
		if r.done() {
			return nil, errors.New("the body does not end with end")
		}
	}
}

// parentRegion is the region code runs in given the open frames.
func (m *moduleInfo) parentRegion(frames []int) int {
	for i := len(frames) - 1; i >= 0; i-- {
		if frames[i] < 0 {
			return -1 - frames[i]
		}
	}
	return 0
}

func patchRegions(out []byte, regions []region) []byte {
	for _, rg := range regions {
		if rg.patchAt >= 0 {
			putPaddedI32(out, rg.patchAt, int32(min(rg.cost, maxRegionCost)))
		}
	}
	return out
}

// appendCheck appends "budget -= cost; if budget < 0 { budget = tick() }" with the cost
// left to patch, and returns where the cost's immediate is.
func (m *moduleInfo) appendCheck(out []byte, temp uint32) ([]byte, int) {
	out = append(out, opGlobalGet)
	out = appendU32(out, m.budgetGlobal)
	out = append(out, opI32Const)
	at := len(out)
	out = appendPaddedI32(out, 0)
	return m.appendCheckTail(out, temp), at
}

// appendCheckTail finishes a check whose cost is already on the stack above the budget.
func (m *moduleInfo) appendCheckTail(out []byte, temp uint32) []byte {
	out = append(out, opI32Sub, opLocalTee)
	out = appendU32(out, temp)
	out = append(out, opGlobalSet)
	out = appendU32(out, m.budgetGlobal)
	out = append(out, opLocalGet)
	out = appendU32(out, temp)
	out = append(out, opI32Const, 0x00, opI32LtS, opIf, blockEmpty, opCall)
	out = appendU32(out, m.tickFunc())
	out = append(out, opGlobalSet)
	out = appendU32(out, m.budgetGlobal)
	return append(out, opEnd)
}

// appendBulkCharge appends "budget -= len>>shift + 1; check" for the length on top of
// the stack, which it leaves there.
func (m *moduleInfo) appendBulkCharge(out []byte, temp, length uint32, shift int) []byte {
	const i32ShrU = 0x76
	out = append(out, opLocalTee)
	out = appendU32(out, length)
	out = append(out, opGlobalGet)
	out = appendU32(out, m.budgetGlobal)
	out = append(out, opLocalGet)
	out = appendU32(out, length)
	out = append(out, opI32Const, byte(shift), i32ShrU, opI32Sub, opI32Const, 0x01)
	return m.appendCheckTail(out, temp)
}

// appendDepthEnter appends "depth++; if depth > max { stack_exhausted() }".
func (m *moduleInfo) appendDepthEnter(out []byte, temp uint32) []byte {
	out = append(out, opGlobalGet)
	out = appendU32(out, m.depthGlobal)
	out = append(out, opI32Const, 0x01, opI32Add, opLocalTee)
	out = appendU32(out, temp)
	out = append(out, opGlobalSet)
	out = appendU32(out, m.depthGlobal)
	out = append(out, opLocalGet)
	out = appendU32(out, temp)
	out = append(out, opI32Const)
	out = appendSigned(out, int64(int32(m.opts.MaxCallDepth)))
	out = append(out, opI32GtU, opIf, blockEmpty, opCall)
	out = appendU32(out, m.stackFunc())
	return append(out, opEnd)
}

// appendDepthLeave appends "depth--".
func (m *moduleInfo) appendDepthLeave(out []byte) []byte {
	out = append(out, opGlobalGet)
	out = appendU32(out, m.depthGlobal)
	out = append(out, opI32Const, 0x01, opI32Sub, opGlobalSet)
	return appendU32(out, m.depthGlobal)
}

// appendSigned appends v as a signed LEB128.
func appendSigned(b []byte, v int64) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}
