package runtime

import (
	"context"
	"fmt"
	"testing"

	"github.com/tetratelabs/wazero/api"
)

// Floor returns a function that calls the main pack's handler export once on an already
// instantiated module, with a's input already in guest memory: the bare wazero call that
// Handle is measured against. It holds one instance of the revision until release.
func (r *Revision) Floor(ctx context.Context, a *Activity) (fn func() error, release func(), err error) {
	p := r.packs[0]
	inst, err := p.get(ctx, r)
	if err != nil {
		return nil, nil, err
	}
	flow, _ := p.pack.Manifest.firstEntryFlow()
	in := encodeInput(nil, a, p.id, flow, "", nil, r.config)
	res, err := inst.alloc.Call(ctx, uint64(len(in)))
	if err != nil {
		return nil, nil, err
	}
	ptr := uint32(res[0])
	if !inst.mem.Write(ptr, in) {
		return nil, nil, fmt.Errorf("alloc returned %#x", ptr)
	}
	c := &call{rev: r, pack: p}
	cctx := context.WithValue(ctx, callKey{}, c)
	fn = func() error {
		c.outputs, c.outBytes = c.outputs[:0], 0
		res, err := inst.handle.Call(cctx, uint64(ptr), uint64(len(in)))
		if err != nil {
			return err
		}
		if res[0] != 0 || len(c.outputs) != 1 {
			return fmt.Errorf("handler returned %d with %d outputs", res[0], len(c.outputs))
		}
		return nil
	}
	return fn, func() { p.put(inst, r.now()) }, nil
}

// HostCallResult is what HostCall observed.
type HostCallResult struct {
	Code    int32
	MemSize uint32
	Outputs int
	Faulted bool
	// HostBytes is what the activity's host calls held after this one.
	HostBytes int
	// Stopped is the error the call was ended with (a limit), or nil.
	Stopped error
}

// HostCall calls host function name directly with args on an instance of the main pack,
// as a guest would, in an activity whose host calls already held used bytes. For fuzzing
// the bounds checks and the per-activity host memory budget.
func (r *Revision) HostCall(ctx context.Context, name string, args []uint64, used int) (res HostCallResult, err error) {
	hf, ok := hostFunctions[name]
	if !ok {
		return res, fmt.Errorf("no host function %s", name)
	}
	p := r.packs[0]
	inst, err := p.get(ctx, r)
	if err != nil {
		return res, err
	}
	defer p.put(inst, r.now())
	txn, _ := r.store.Begin(ctx)
	defer txn.Discard()
	c := &call{rev: r, pack: p, flow: "f", session: "s", txn: txn, hostBytes: used}
	defer c.releaseHost()
	stack := make([]uint64, max(len(hf.params), len(hf.results)))
	copy(stack, args)
	defer func() {
		if v := recover(); v != nil {
			stop, ok := v.(*hostStop)
			if !ok {
				panic(v)
			}
			res.Stopped = stop.err
		}
		res.MemSize, res.Outputs, res.Faulted, res.HostBytes = inst.mem.Size(), len(c.outputs), c.faultErr != nil, c.hostBytes
	}()
	res.Code = hf.fn(ctx, c, inst.mem, stack)
	return res, nil
}

// MaxHostBytes is the revision's per-activity host memory budget.
func (r *Revision) MaxHostBytes() int { return r.limits.MaxHostBytes }

// SelectFlow runs flow selection over packs as a revision of them would.
func SelectFlow(packs []*Pack, a *Activity) (pack, flow string, err error) {
	prs := make([]*packRuntime, len(packs))
	for i, p := range packs {
		prs[i] = &packRuntime{id: p.Manifest.PackID, pack: p}
	}
	i, f, err := selectFlow(prs, a)
	if err != nil {
		return "", "", err
	}
	return prs[i].id, f.ID, nil
}

// ParseFast and ParseJSON expose the two activity decoders for differential fuzzing.
func ParseFast(data []byte) (Activity, bool) { return parseFast(data) }

// ParseJSON is the encoding/json decoder.
func ParseJSON(data []byte) (*Activity, error) { return parseJSON(data) }

// ValidJSON exposes the host's JSON validator for differential fuzzing.
func ValidJSON(data []byte) bool { return validJSON(data) }

// CloseIdleInstances closes the module of every idle instance with exit code code, as
// wazero's context watcher does when a call's context ends just as the call returns,
// and returns how many it closed.
func (r *Revision) CloseIdleInstances(code uint32) int {
	n := 0
	for _, p := range r.packs {
		p.mu.Lock()
		for _, inst := range p.idle {
			_ = inst.mod.CloseWithExitCode(context.Background(), code)
			n++
		}
		p.mu.Unlock()
	}
	return n
}

// OnInstanceTaken has f see each instance's module as it is taken for a call, until the
// test ends.
func OnInstanceTaken(t testing.TB, f func(api.Module)) {
	testHookTaken = f
	t.Cleanup(func() { testHookTaken = nil })
}

// CPUTokensHeld is how many of the revision's tenant's processor tokens are held now.
func (r *Revision) CPUTokensHeld() int { return len(r.memory.cpu) }

// TenantAccounts is how many tenants' memory and processor accounts the engine keeps.
func (e *Engine) TenantAccounts() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.tenants)
}

// HoldTenantCPU takes every processor token of tenant key (namespace/name) until
// release, as the tenant's running guests would.
func (e *Engine) HoldTenantCPU(key string) (release func()) {
	t := e.tenantMemory(key)
	n := cap(t.cpu)
	for range n {
		t.cpu <- struct{}{}
	}
	return func() {
		for range n {
			<-t.cpu
		}
		e.releaseTenant(t)
	}
}
