package runtime

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
)

// limitedMemory backs one instance's memory and refuses to grow past its cap or the
// replica's memory budget, so memory.grow fails inside the guest instead of taking the
// host's memory.
type limitedMemory struct {
	e   *Engine
	t   *tenantMemory
	s   *sleeper // the instance's: the running call, whose deadline paces growth
	buf []byte
	max uint64
	// denied is set when the budget refused a growth.
	denied bool
}

func (m *limitedMemory) Reallocate(size uint64) []byte {
	if size > m.max {
		return nil
	}
	if size <= uint64(cap(m.buf)) {
		m.buf = m.buf[:size]
		return m.buf
	}
	old := uint64(cap(m.buf))
	// Room ahead: double; when the budget cannot, all the room it has left up to the
	// cap, in one reallocation. Growing page by page under a tight budget then copies the
	// memory once more, not once a page (which was quadratic: seconds past a 20 ms
	// deadline, since the guard charges memory.grow as one instruction).
	newCap := uint64(0)
	if c := min(max(size, 2*old), m.max); m.e.tryReserveFor(m.t, memInstances, int64(c-old)) {
		newCap = c
	} else if g := m.e.reserveUpTo(m.t, memInstances, int64(size-old), int64(m.max-old)); g > 0 {
		newCap = old + uint64(g)
	}
	if newCap == 0 {
		if !m.e.reserve(m.t, memInstances, int64(size-old)) {
			m.denied = true
			return nil
		}
		newCap = size
	}
	if !m.paceGrowth(int64(newCap - old)) {
		m.e.release(m.t, memInstances, int64(newCap-old))
		return nil
	}
	nb := make([]byte, size, newCap)
	copy(nb, m.buf)
	m.buf = nb
	return nb
}

// paceGrowth holds a growth of n bytes during an activity while the tenant's instances
// grow faster than the engine's GrowthPerSecond: the guest rests, its processor token
// given back, until the bytes are due; false (the growth fails inside the guest) when
// they would be due only past the call's deadline. A start function's growth is not
// paced: it is bounded by the budget and the start's own deadline.
func (m *limitedMemory) paceGrowth(n int64) bool {
	if m.s == nil || m.s.call == nil || m.s.call.start || m.s.sleeping == nil {
		return true
	}
	switch waitDue(m.s.sleeping, m.s.call, m.t.growth, int(n)) {
	case dueBurst, dueLate:
		return false
	case dueRested:
		return m.s.sleeping.Err() == nil
	}
	return true
}

func (m *limitedMemory) Free() {
	m.e.release(m.t, memInstances, int64(cap(m.buf)))
	m.buf = nil
}

// newInstance starts an instance of the pack: its start functions (_initialize) are the
// tenant's code, so they run as an activity's guest call does, under the caller's
// deadline (at most the activity timeout) and cancellation, holding one of the tenant's
// processor tokens, which the guard gives up at each budget check.
func (p *packRuntime) newInstance(ctx context.Context, r *Revision) (*instance, error) {
	maxBytes := uint64(r.limits.MemoryPages) * 65536
	ctx, cancel := context.WithTimeout(ctx, r.limits.Timeout)
	defer cancel()
	inst := &instance{}
	ctx = experimental.WithMemoryAllocator(ctx, experimental.MemoryAllocatorFunc(func(_, m uint64) experimental.LinearMemory {
		inst.memory = &limitedMemory{e: r.engine, t: r.memory, s: &inst.sleeper, max: min(m, maxBytes)}
		return inst.memory
	}))
	if !r.engine.reserve(r.memory, memInstances, p.pack.overhead) {
		return nil, fmt.Errorf("%w: %w", ErrOverloaded, r.engine.budgetError(r.memory, "an instance of "+p.id, p.pack.overhead))
	}
	cfg := p.modConfig
	if p.clocks {
		cfg = cfg.WithNanosleep(inst.sleep)
	}
	var src io.Reader = rand.Reader
	if !p.random {
		src = mrand.NewChaCha8([32]byte{}) // deterministic, as wazero's default source
	}
	cfg = cfg.WithRandSource(&guardedRandom{src: src, s: &inst.sleeper})
	mod, err := p.start(ctx, r, inst, cfg)
	if err != nil {
		r.engine.release(r.memory, memInstances, p.pack.overhead)
		if inst.memory != nil {
			// A start function that trapped leaves wazero's module half made, and its
			// memory is never closed: give back what it held (Free is idempotent).
			defer inst.memory.Free()
		}
		switch {
		case errors.Is(err, errCPUWait):
			return nil, err // it never started
		case inst.memory != nil && inst.memory.denied:
			return nil, fmt.Errorf("%w: %w", ErrOverloaded, r.engine.budgetError(r.memory, "the memory of an instance of "+p.id, int64(p.pack.minPages)*65536))
		case ctx.Err() != nil || errors.Is(err, ErrTimeout):
			// The caller's deadline or cancellation, not the pack, ended the start. The
			// guard reads the clock too, so it may stop the start at the deadline before
			// ctx's timer has fired: that is no fault of the pack either.
			return nil, classify(ctx, err, r.name)
		}
		return nil, invalidPack("start %s: %v", p.id, err)
	}
	p.mu.Lock()
	p.total++
	p.mu.Unlock()
	inst.mod, inst.mem, inst.alloc, inst.handle = mod, mod.Memory(), mod.ExportedFunction(ExportAlloc), mod.ExportedFunction(ExportHandle)
	return inst, nil
}

// start instantiates the module for inst with one of the tenant's processor tokens held
// as a guest call holds it (see invoke).
func (p *packRuntime) start(ctx context.Context, r *Revision, inst *instance, cfg wazero.ModuleConfig) (api.Module, error) {
	if err := r.memory.acquireCPU(ctx); err != nil {
		return nil, err
	}
	c := &call{rev: r, pack: p, cpu: true, start: true, started: time.Now()}
	inst.sleeping, inst.call = ctx, c
	defer func() {
		inst.sleeping, inst.call = nil, nil
		if c.cpu {
			r.memory.releaseCPU()
		}
	}()
	return instantiate(context.WithValue(ctx, callKey{}, c), r.engine.rt, p.pack.compiled, cfg)
}

// instantiate starts a module, turning a panic inside wazero into an error: a bad
// module must fail its revision, never the process.
func instantiate(ctx context.Context, rt wazero.Runtime, compiled wazero.CompiledModule, cfg wazero.ModuleConfig) (mod api.Module, err error) {
	defer func() {
		if p := recover(); p != nil {
			mod, err = nil, fmt.Errorf("instantiation panicked: %v", p)
		}
	}()
	return rt.InstantiateModule(ctx, compiled, cfg)
}

// get takes the most recently used idle instance, or starts one. An idle instance
// whose module was closed (a guest that called proc_exit) is discarded, never reused.
// Once the revision is unloaded it starts none: an activity abandoned by Close that
// would run its guest again (after a conflict, or the next pack of a probe) is refused,
// as the tenant account the instance would be charged to may be forgotten already.
func (p *packRuntime) get(ctx context.Context, r *Revision) (inst *instance, err error) {
	for {
		p.mu.Lock()
		if p.unloaded {
			p.mu.Unlock()
			return nil, fmt.Errorf("%w: %s was unloaded", ErrNotLoaded, r.name)
		}
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			inst, err = p.newInstance(ctx, r)
			break
		}
		inst = p.idle[n-1]
		p.idle[n-1] = nil // the backing array must not keep a discarded instance alive
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		if !inst.mod.IsClosed() {
			break
		}
		p.discard(inst)
	}
	if inst != nil && testHookTaken != nil {
		testHookTaken(inst.mod)
	}
	return inst, err
}

// testHookTaken, when set by a test, sees each instance's module as it is taken.
var testHookTaken func(api.Module)

func (p *packRuntime) put(inst *instance, now time.Time) {
	inst.lastUsed = now
	p.mu.Lock()
	if p.unloaded {
		p.mu.Unlock()
		p.discard(inst)
		return
	}
	p.idle = append(p.idle, inst)
	p.mu.Unlock()
}

func (p *packRuntime) discard(inst *instance) {
	_ = inst.mod.Close(context.Background())
	p.pack.engine.release(p.memory, memInstances, p.pack.overhead)
	p.mu.Lock()
	p.total--
	p.mu.Unlock()
}

// Instances reports the live instances of each pack, by pack id.
func (r *Revision) Instances() map[string]int {
	out := map[string]int{}
	for _, p := range r.packs {
		p.mu.Lock()
		out[p.id] = p.total
		p.mu.Unlock()
	}
	return out
}

// reap closes instances once they have been idle for IdleTimeout, down to none: an idle
// revision costs its bookkeeping only (the compiled code is shared per digest), and its
// next activity starts an instance on demand.
func (r *Revision) reap() {
	defer r.wg.Done()
	t := time.NewTicker(r.limits.IdleTimeout / 2)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.shrink(r.now())
		}
	}
}

func (r *Revision) shrink(now time.Time) {
	for _, p := range r.packs {
		var victims []*instance
		p.mu.Lock()
		keep := p.idle[:0]
		for _, inst := range p.idle {
			if now.Sub(inst.lastUsed) >= r.limits.IdleTimeout {
				victims = append(victims, inst)
				continue
			}
			keep = append(keep, inst)
		}
		clear(p.idle[len(keep):]) // nor here: a closed instance holds its whole memory
		p.idle = keep
		p.mu.Unlock()
		for _, inst := range victims {
			p.discard(inst)
		}
		if len(victims) > 0 {
			r.engine.returnMemory()
		}
	}
}

// sleeper is an instance's WASI sleep (poll_oneoff on a clock subscription): it sleeps
// as asked, but wakes when the running call's context ends and ends the call there, so
// a guest sleeping for an hour gives back its instance, its slot and its goroutine at
// the deadline. Calls on one instance never overlap, so one field holds the context.
type sleeper struct {
	sleeping context.Context // the running call's context; nil between calls
	call     *call           // the running activity's call, which may hold a processor token
}

func (s *sleeper) sleep(ns int64) {
	ctx := s.sleeping
	if ctx == nil || ns <= 0 {
		return
	}
	rest(ctx, s.call, time.Duration(ns))
	checkDeadline(ctx) // past the deadline: panics, and the call ends with its error
}
