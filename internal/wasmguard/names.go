package wasmguard

// Name subsections.
const (
	nameModule    = 0
	nameFunctions = 1
	nameLocals    = 2
	nameLabels    = 3
)

// rewriteNames renumbers the name section's functions, names the added imports and
// helpers, and drops label names. ok is false when the section cannot be read.
func (m *moduleInfo) rewriteNames(body []byte) (out []byte, ok bool) {
	r := &reader{b: body}
	out = appendName(nil, r.name())
	for !r.done() {
		id := r.byte()
		payload := r.bytes(r.u32())
		if r.err != nil {
			return nil, false
		}
		var sub []byte
		switch id {
		case nameFunctions:
			if sub, ok = m.rewriteFunctionNames(payload); !ok {
				return nil, false
			}
		case nameLocals:
			if sub, ok = m.rewriteLocalNames(payload); !ok {
				return nil, false
			}
		case nameLabels:
			continue
		default:
			sub = payload
		}
		out = append(out, id)
		out = appendU32(out, uint32(len(sub)))
		out = append(out, sub...)
	}
	return out, true
}

func (m *moduleInfo) rewriteFunctionNames(p []byte) ([]byte, bool) {
	r := &reader{b: p}
	n := r.count()
	type entry struct {
		idx  uint32
		name string
	}
	entries := make([]entry, 0, min(n, uint32(len(p))))
	added := false
	addOurs := func() {
		entries = append(entries, entry{m.tickFunc(), ImportModule + "." + ImportTick},
			entry{m.stackFunc(), ImportModule + "." + ImportStackExhausted})
		added = true
	}
	for i := uint32(0); i < n && r.err == nil; i++ {
		idx, name := r.u32(), r.name()
		if idx >= m.funcImports && !added {
			addOurs()
		}
		entries = append(entries, entry{m.funcIndex(idx), name})
	}
	if r.err != nil || !r.done() {
		return nil, false
	}
	if !added {
		addOurs()
	}
	if m.fillHelper >= 0 {
		entries = append(entries, entry{uint32(m.fillHelper), "packhost_guard.memory_fill"})
	}
	if m.copyHelper >= 0 {
		entries = append(entries, entry{uint32(m.copyHelper), "packhost_guard.memory_copy"})
	}
	out := appendU32(nil, uint32(len(entries)))
	for _, e := range entries {
		out = appendU32(out, e.idx)
		out = appendName(out, e.name)
	}
	return out, true
}

func (m *moduleInfo) rewriteLocalNames(p []byte) ([]byte, bool) {
	r := &reader{b: p}
	n := r.count()
	out := appendU32(nil, n)
	for i := uint32(0); i < n && r.err == nil; i++ {
		out = appendU32(out, m.funcIndex(r.u32()))
		k := r.count()
		out = appendU32(out, k)
		for j := uint32(0); j < k && r.err == nil; j++ {
			out = appendU32(out, r.u32())
			out = appendName(out, r.name())
		}
	}
	if r.err != nil || !r.done() {
		return nil, false
	}
	return out, true
}
