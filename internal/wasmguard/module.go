package wasmguard

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// moduleInfo is what the rewrite needs to know of a module, read from its sections.
type moduleInfo struct {
	sections []section
	known    map[byte][]byte
	size     int // the module's bytes

	types        []funcType
	funcImports  uint32
	globals      uint32 // imported and defined
	tables       int
	hasMemory    bool
	funcTypes    []uint32 // type index of each defined function
	bodies       [][]byte
	funcs        []funcInfo // per defined function, from the first pass
	blockTypes   map[string]uint32
	newTypes     []funcType
	opts         Options
	tickType     uint32
	voidType     uint32
	helperType   uint32
	budgetGlobal uint32
	depthGlobal  uint32
	// importRefs is set when a table may hold an imported function (an element or a
	// ref.func names one): an indirect call may then reach the host.
	importRefs bool
	fillHelper int64 // function index, or -1 when not needed
	copyHelper int64
}

type funcType struct {
	params, results []byte
}

// shift is how far the added imports move every defined function's index.
const shift = 2

func (m *moduleInfo) tickFunc() uint32  { return m.funcImports }
func (m *moduleInfo) stackFunc() uint32 { return m.funcImports + 1 }

// ownFunc reports whether i names one of the module's own functions (imported or
// defined), not one the rewrite adds.
func (m *moduleInfo) ownFunc(i uint32) bool {
	return uint64(i) < uint64(m.funcImports)+uint64(len(m.funcTypes))
}

// funcIndex maps an original function index to its index in the rewritten module.
func (m *moduleInfo) funcIndex(i uint32) uint32 {
	if i < m.funcImports {
		return i
	}
	return i + shift
}

func (m *moduleInfo) rewrite(opts Options) ([]byte, error) {
	m.opts = opts
	m.blockTypes = map[string]uint32{}
	m.fillHelper, m.copyHelper = -1, -1
	if err := m.readTypes(); err != nil {
		return nil, fmt.Errorf("type section: %w", err)
	}
	importOut, err := m.readImports()
	if err != nil {
		return nil, fmt.Errorf("import section: %w", err)
	}
	if err := m.readFunctions(); err != nil {
		return nil, fmt.Errorf("function section: %w", err)
	}
	tableOut, err := m.rewriteTables()
	if err != nil {
		return nil, fmt.Errorf("table section: %w", err)
	}
	if err := m.checkData(); err != nil {
		return nil, fmt.Errorf("data section: %w", err)
	}
	if err := m.readMemories(); err != nil {
		return nil, fmt.Errorf("memory section: %w", err)
	}
	globalOut, err := m.rewriteGlobals()
	if err != nil {
		return nil, fmt.Errorf("global section: %w", err)
	}
	elemOut, err := m.rewriteElements()
	if err != nil {
		return nil, fmt.Errorf("element section: %w", err)
	}
	if err := m.scanCode(); err != nil {
		return nil, fmt.Errorf("code section: %w", err)
	}
	codeOut, err := m.rewriteCode()
	if err != nil {
		return nil, fmt.Errorf("code section: %w", err)
	}
	exportOut, err := m.rewriteExports()
	if err != nil {
		return nil, fmt.Errorf("export section: %w", err)
	}
	startOut, err := m.rewriteStart()
	if err != nil {
		return nil, fmt.Errorf("start section: %w", err)
	}
	names := map[int][]byte{}
	for i, s := range m.sections {
		if s.id == secCustom && s.name == "name" {
			body, ok := m.rewriteNames(s.body)
			if !ok {
				// wazero refuses a malformed name section; so does the rewrite, rather
				// than drop it and make an invalid module valid.
				return nil, errors.New("malformed name section")
			}
			names[i] = body
		}
	}
	// Functions are added last: helpers were decided while rewriting the code.
	funcOut := m.rewriteFunctions()
	typeOut := m.rewriteTypes()

	out := map[byte][]byte{secType: typeOut, secImport: importOut, secFunction: funcOut, secTable: tableOut,
		secGlobal: globalOut, secExport: exportOut, secStart: startOut, secElement: elemOut, secCode: codeOut}
	for id, body := range m.known {
		if _, ok := out[id]; !ok {
			out[id] = body // memory, data count, data: unchanged
		}
	}
	b := slices.Clone(wasmHeader)
	emit := func(id byte, body []byte) {
		b = append(b, id)
		b = appendU32(b, uint32(len(body)))
		b = append(b, body...)
	}
	customsAfter := func(id byte) {
		for i, s := range m.sections {
			if s.id != secCustom || s.after != id {
				continue
			}
			switch {
			case s.name == "name":
				emit(secCustom, names[i])
			case strings.HasPrefix(s.name, ".debug_"), s.name == "sourceMappingURL":
				// Offsets into the code no longer hold.
			default:
				emit(secCustom, s.body)
			}
		}
	}
	customsAfter(0)
	ids := make([]byte, 0, len(sectionOrder))
	for id := range sectionOrder {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b byte) int { return sectionOrder[a] - sectionOrder[b] })
	for _, id := range ids {
		body, ok := out[id]
		if !ok || body == nil {
			continue
		}
		emit(id, body)
		customsAfter(id)
	}
	return b, nil
}

func (m *moduleInfo) readTypes() error {
	r := &reader{b: m.known[secType]}
	if r.b == nil {
		return nil
	}
	n := r.count()
	for i := uint32(0); i < n && r.err == nil; i++ {
		if form := r.byte(); form != 0x60 {
			if r.err == nil {
				return fmt.Errorf("type %d has form %#x: only function types are supported (no GC proposal)", i, form)
			}
			break
		}
		var t funcType
		for _, dst := range []*[]byte{&t.params, &t.results} {
			k := r.count()
			if uint64(k) > uint64(len(r.b)) {
				r.fail("type %d: %d value types in a %d-byte section", i, k, len(r.b))
			}
			for j := uint32(0); j < k && r.err == nil; j++ {
				v := r.byte()
				if !validValType(v) && r.err == nil {
					return fmt.Errorf("type %d: value type %#x is not supported", i, v)
				}
				*dst = append(*dst, v)
			}
		}
		m.types = append(m.types, t)
	}
	if r.err == nil && !r.done() {
		r.fail("trailing bytes")
	}
	return r.err
}

func validValType(v byte) bool {
	switch v {
	case 0x7f, 0x7e, 0x7d, 0x7c, 0x7b, 0x70, 0x6f: // i32 i64 f32 f64 v128 funcref externref
		return true
	}
	return false
}

// addType returns the index of a type appended to the module's.
func (m *moduleInfo) addType(t funcType) uint32 {
	m.newTypes = append(m.newTypes, t)
	return uint32(len(m.types) + len(m.newTypes) - 1)
}

func (m *moduleInfo) rewriteTypes() []byte {
	b := appendU32(nil, uint32(len(m.types)+len(m.newTypes)))
	if body := m.known[secType]; body != nil {
		r := &reader{b: body}
		r.u32()
		b = append(b, body[r.off:]...)
	}
	for _, t := range m.newTypes {
		b = append(b, 0x60)
		b = appendU32(b, uint32(len(t.params)))
		b = append(b, t.params...)
		b = appendU32(b, uint32(len(t.results)))
		b = append(b, t.results...)
	}
	return b
}

func (m *moduleInfo) readImports() ([]byte, error) {
	m.tickType = m.addType(funcType{results: []byte{0x7f}})
	m.voidType = m.addType(funcType{})
	var b []byte
	var n uint32
	if body := m.known[secImport]; body != nil {
		r := &reader{b: body}
		n = r.count()
		for i := uint32(0); i < n && r.err == nil; i++ {
			module, _ := r.name(), r.name()
			if module == ImportModule && r.err == nil {
				return nil, fmt.Errorf("the module imports from %q, which the guard reserves", ImportModule)
			}
			switch kind := r.byte(); kind {
			case 0x00:
				if t := r.u32(); t >= uint32(len(m.types)) && r.err == nil {
					return nil, fmt.Errorf("import %d names type %d of %d", i, t, len(m.types))
				}
				m.funcImports++
			case 0x01:
				r.byte()
				r.limits()
				m.tables++
			case 0x02:
				r.limits()
				m.hasMemory = true
			case 0x03:
				r.byte()
				r.byte()
				m.globals++
			default:
				if r.err == nil {
					return nil, fmt.Errorf("import %d has kind %#x", i, kind)
				}
			}
		}
		if r.err == nil && !r.done() {
			r.fail("trailing bytes")
		}
		if r.err != nil {
			return nil, r.err
		}
		// The count's encoding may be padded: take the entries from where they start.
		r2 := &reader{b: body}
		r2.u32()
		b = append([]byte(nil), body[r2.off:]...)
	}
	out := appendU32(nil, n+2)
	out = append(out, b...)
	out = appendName(out, ImportModule)
	out = appendName(out, ImportTick)
	out = append(out, 0x00)
	out = appendU32(out, m.tickType)
	out = appendName(out, ImportModule)
	out = appendName(out, ImportStackExhausted)
	out = append(out, 0x00)
	out = appendU32(out, m.voidType)
	return out, nil
}

func (m *moduleInfo) readFunctions() error {
	r := &reader{b: m.known[secFunction]}
	if r.b == nil {
		return nil
	}
	n := r.count()
	if uint64(n) > uint64(len(r.b)) {
		return fmt.Errorf("%d functions in a %d-byte section", n, len(r.b))
	}
	for i := uint32(0); i < n && r.err == nil; i++ {
		t := r.u32()
		if t >= uint32(len(m.types)) && r.err == nil {
			return fmt.Errorf("function %d names type %d of %d", i, t, len(m.types))
		}
		m.funcTypes = append(m.funcTypes, t)
	}
	if r.err == nil && !r.done() {
		r.fail("trailing bytes")
	}
	return r.err
}

func (m *moduleInfo) rewriteFunctions() []byte {
	n := uint32(len(m.funcTypes))
	var extra []uint32
	if m.fillHelper >= 0 {
		extra = append(extra, m.helperType)
	}
	if m.copyHelper >= 0 {
		extra = append(extra, m.helperType)
	}
	if n == 0 && len(extra) == 0 {
		return m.known[secFunction]
	}
	b := appendU32(nil, n+uint32(len(extra)))
	for _, t := range m.funcTypes {
		b = appendU32(b, t)
	}
	for _, t := range extra {
		b = appendU32(b, t)
	}
	return b
}

func (m *moduleInfo) rewriteTables() ([]byte, error) {
	body := m.known[secTable]
	if body == nil {
		if m.opts.MaxTables > 0 && m.tables > m.opts.MaxTables {
			return nil, fmt.Errorf("%d tables, the limit is %d", m.tables, m.opts.MaxTables)
		}
		return nil, nil
	}
	r := &reader{b: body}
	n := r.count()
	m.tables += int(n)
	if m.opts.MaxTables > 0 && m.tables > m.opts.MaxTables {
		return nil, fmt.Errorf("%d tables, the limit is %d", m.tables, m.opts.MaxTables)
	}
	b := appendU32(nil, n)
	limit := m.opts.MaxTableElements
	for i := uint32(0); i < n && r.err == nil; i++ {
		ref := r.byte()
		lo, hi, hasMax := r.limits()
		if r.err != nil {
			break
		}
		if limit > 0 {
			if lo > limit {
				return nil, fmt.Errorf("table %d starts with %d elements, the limit is %d", i, lo, limit)
			}
			if !hasMax {
				// No maximum: room to double, within the limit. Compilers that declare
				// none never grow the table (Go, Rust, C), and the host accounts each
				// table at its maximum.
				hi, hasMax = min(max(2*lo, 1024), limit), true
			}
			hi = min(hi, limit)
		}
		b = append(b, ref)
		if hasMax {
			b = append(b, 0x01)
			b = appendU32(b, lo)
			b = appendU32(b, hi)
		} else {
			b = append(b, 0x00)
			b = appendU32(b, lo)
		}
	}
	if r.err == nil && !r.done() {
		r.fail("trailing bytes")
	}
	return b, r.err
}

// checkData checks the data segments' count against the section's size and the data
// count section; the segments themselves are copied as they are.
func (m *moduleInfo) checkData() error {
	var n uint32
	if body := m.known[secData]; body != nil {
		r := &reader{b: body}
		if n = r.count(); r.err != nil {
			return r.err
		}
	}
	if body, ok := m.known[secDataCount]; ok {
		r := &reader{b: body}
		if c := r.u32(); r.err != nil || c != n || !r.done() {
			return fmt.Errorf("the data count section says %d segments, the data section has %d", c, n)
		}
	}
	return nil
}

func (m *moduleInfo) readMemories() error {
	r := &reader{b: m.known[secMemory]}
	if r.b == nil {
		return nil
	}
	n := r.count()
	for i := uint32(0); i < n && r.err == nil; i++ {
		r.limits()
		m.hasMemory = true
	}
	if n > 1 && r.err == nil {
		return errors.New("more than one memory (multi-memory proposal) is not supported")
	}
	if r.err == nil && !r.done() {
		r.fail("trailing bytes")
	}
	return r.err
}

func (m *moduleInfo) rewriteGlobals() ([]byte, error) {
	var n uint32
	var b []byte
	if body := m.known[secGlobal]; body != nil {
		r := &reader{b: body}
		n = r.count()
		for i := uint32(0); i < n && r.err == nil; i++ {
			b = append(b, r.byte(), r.byte()) // value type, mutability
			var err error
			if b, err = m.copyConstExpr(r, b); err != nil {
				return nil, fmt.Errorf("global %d: %w", i, err)
			}
		}
		if r.err == nil && !r.done() {
			r.fail("trailing bytes")
		}
		if r.err != nil {
			return nil, r.err
		}
	}
	m.budgetGlobal = m.globals + n
	m.depthGlobal = m.budgetGlobal + 1
	out := appendU32(nil, n+2)
	out = append(out, b...)
	out = append(out, 0x7f, 0x01, 0x41) // mutable i32 = Refill
	out = appendPaddedI32(out, Refill)
	out = append(out, 0x0b)
	out = append(out, 0x7f, 0x01, 0x41, 0x00, 0x0b) // mutable i32 = 0 (call depth)
	return out, nil
}

func (m *moduleInfo) rewriteExports() ([]byte, error) {
	body := m.known[secExport]
	if body == nil {
		return nil, nil
	}
	r := &reader{b: body}
	n := r.count()
	b := appendU32(nil, n)
	for i := uint32(0); i < n && r.err == nil; i++ {
		b = appendName(b, r.name())
		kind := r.byte()
		idx := r.u32()
		if r.err == nil && (kind == 0x00 && !m.ownFunc(idx) || kind == 0x03 && idx >= m.budgetGlobal || kind == 0x01 && int(idx) >= m.tables) {
			return nil, fmt.Errorf("export %d names index %d of kind %d, past the module's own", i, idx, kind)
		}
		if kind == 0x00 {
			idx = m.funcIndex(idx)
		}
		b = append(b, kind)
		b = appendU32(b, idx)
	}
	if r.err == nil && !r.done() {
		r.fail("trailing bytes")
	}
	return b, r.err
}

func (m *moduleInfo) rewriteStart() ([]byte, error) {
	body := m.known[secStart]
	if body == nil {
		return nil, nil
	}
	r := &reader{b: body}
	idx := r.u32()
	if r.err == nil && !r.done() {
		r.fail("trailing bytes")
	}
	if r.err == nil && !m.ownFunc(idx) {
		return nil, fmt.Errorf("start function %d is past the module's own", idx)
	}
	return appendU32(nil, m.funcIndex(idx)), r.err
}

func (m *moduleInfo) rewriteElements() ([]byte, error) {
	body := m.known[secElement]
	if body == nil {
		return nil, nil
	}
	r := &reader{b: body}
	n := r.count()
	b := appendU32(nil, n)
	var err error
	for i := uint32(0); i < n && r.err == nil; i++ {
		flags := r.u32()
		if flags > 7 {
			return nil, fmt.Errorf("element segment %d has flags %d", i, flags)
		}
		b = appendU32(b, flags)
		if flags&0x02 != 0 && flags&0x01 == 0 { // an explicit table index
			b = appendU32(b, r.u32())
		}
		if flags&0x01 == 0 { // active: an offset
			if b, err = m.copyConstExpr(r, b); err != nil {
				return nil, fmt.Errorf("element segment %d offset: %w", i, err)
			}
		}
		if flags&0x03 != 0 { // an element kind or reference type
			b = append(b, r.byte())
		}
		k := r.count()
		b = appendU32(b, k)
		for j := uint32(0); j < k && r.err == nil; j++ {
			if flags&0x04 == 0 {
				f := r.u32()
				if r.err == nil && !m.ownFunc(f) {
					return nil, fmt.Errorf("element segment %d names function %d, past the module's own", i, f)
				}
				m.importRefs = m.importRefs || f < m.funcImports
				b = appendU32(b, m.funcIndex(f))
			} else if b, err = m.copyConstExpr(r, b); err != nil {
				return nil, fmt.Errorf("element segment %d item %d: %w", i, j, err)
			}
		}
	}
	if r.err == nil && !r.done() {
		r.fail("trailing bytes")
	}
	return b, r.err
}

// copyConstExpr copies a constant expression up to and including its end, renumbering
// ref.func.
func (m *moduleInfo) copyConstExpr(r *reader, b []byte) ([]byte, error) {
	for r.err == nil {
		start := r.off
		switch op := r.byte(); op {
		case 0x0b:
			return append(b, op), nil
		case 0xd2:
			f := r.u32()
			if r.err == nil && !m.ownFunc(f) {
				return nil, fmt.Errorf("ref.func %d is past the module's own functions", f)
			}
			m.importRefs = m.importRefs || f < m.funcImports
			b = append(b, op)
			b = appendU32(b, m.funcIndex(f))
			continue
		case 0x41:
			r.signed(32)
		case 0x42:
			r.signed(64)
		case 0x43:
			r.bytes(4)
		case 0x44:
			r.bytes(8)
		case 0x23:
			// Only imported globals are valid here; the rewrite's are never.
			if g := r.u32(); r.err == nil && g >= m.globals {
				return nil, fmt.Errorf("global.get %d in a constant expression names no imported global", g)
			}
		case 0xd0:
			r.byte()
		case 0xfd:
			if sub := r.u32(); sub != 12 && r.err == nil {
				return nil, fmt.Errorf("instruction 0xfd %d in a constant expression", sub)
			}
			r.bytes(16)
		default:
			if r.err == nil {
				return nil, fmt.Errorf("instruction %#x in a constant expression", op)
			}
		}
		b = append(b, r.b[start:r.off]...)
	}
	return nil, r.err
}
