package runtime

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/tetratelabs/wazero/api"
)

// Result codes host functions return to the guest; all are negative, so a non-negative
// result is a length.
const (
	codeNotFound = -1 // no such key, secret or wait
	codeDenied   = -2 // the capability is not granted
	codeFault    = -3 // a pointer or length is outside the guest's memory
	codeTooLarge = -4 // a key, value or output is past its limit
	codeInvalid  = -5 // malformed arguments (bad JSON, no session, ...)
	codeFailed   = -6 // the store failed; the activity will fail too
)

// Output limits per activity.
const (
	maxOutputs      = 64
	maxActionLen    = 256
	maxWaitTTL      = 24 * time.Hour
	defaultWaitTTL  = 30 * time.Minute
	maxLogLineBytes = 4096
)

type hostFunc struct {
	params, results []api.ValueType
	// needs reports whether a manifest declares the capability this function uses; nil
	// for functions every pack may import.
	needs      func(Capabilities) bool
	capability string
	// fn runs the function on its arguments (u32 values) and returns its result code,
	// which is handed to the guest for functions with a result.
	fn func(ctx context.Context, c *call, mem api.Memory, a args) int32
}

var i32 = api.ValueTypeI32

// hostFunctions is the whole host side of ABI version 1.
var hostFunctions = map[string]hostFunc{
	"output":       {params: []api.ValueType{i32, i32, i32, i32}, results: []api.ValueType{i32}, fn: hostOutput},
	"log":          {params: []api.ValueType{i32, i32, i32}, fn: hostLog},
	"state_get":    {params: []api.ValueType{i32, i32, i32, i32}, results: []api.ValueType{i32}, fn: hostStateGet, needs: func(c Capabilities) bool { return c.State.Read }, capability: "capabilities.state.read"},
	"state_set":    {params: []api.ValueType{i32, i32, i32, i32}, results: []api.ValueType{i32}, fn: hostStateSet, needs: func(c Capabilities) bool { return c.State.Write }, capability: "capabilities.state.write"},
	"state_delete": {params: []api.ValueType{i32, i32}, results: []api.ValueType{i32}, fn: hostStateDelete, needs: func(c Capabilities) bool { return c.State.Write }, capability: "capabilities.state.write"},
	"session_wait": {params: []api.ValueType{i32, i32, i32}, results: []api.ValueType{i32}, fn: hostSessionWait, needs: func(c Capabilities) bool { return c.Session }, capability: "capabilities.session"},
	"secret_get":   {params: []api.ValueType{i32, i32, i32, i32}, results: []api.ValueType{i32}, fn: hostSecretGet, needs: func(c Capabilities) bool { return len(c.Secrets) > 0 }, capability: "capabilities.secrets"},
}

type callKey struct{}

func (e *Engine) instantiateHost(ctx context.Context) error {
	b := e.rt.NewHostModuleBuilder(HostModule)
	for name, hf := range hostFunctions {
		hf := hf
		b.NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(func(ctx context.Context, mod api.Module, stack []uint64) {
			checkDeadline(ctx) // a guest calling the host in a loop is stopped here too
			c, _ := ctx.Value(callKey{}).(*call)
			if c == nil || c.start {
				// Called outside an activity (during _initialize): nothing is in scope.
				if len(hf.results) > 0 {
					stack[0] = api.EncodeI32(codeDenied)
				}
				return
			}
			code := hf.fn(ctx, c, mod.Memory(), args(stack))
			if len(hf.results) > 0 {
				stack[0] = api.EncodeI32(code)
			}
		}), hf.params, hf.results).Export(name)
	}
	if _, err := b.Instantiate(ctx); err != nil {
		return fmt.Errorf("instantiate host module: %w", err)
	}
	return nil
}

// read returns a copy-free view of guest memory, recording a fault when the range is
// outside it. Views must be copied before the call returns.
func (c *call) read(mem api.Memory, ptr, n uint64, limit int) ([]byte, int32) {
	if n > uint64(limit) {
		return nil, codeTooLarge
	}
	if n == 0 {
		return nil, 0
	}
	b, ok := mem.Read(uint32(ptr), uint32(n))
	if !ok {
		c.fault(fmt.Errorf("guest passed %d bytes at %#x, outside its %d-byte memory", n, ptr, mem.Size()))
		return nil, codeFault
	}
	return b, 0
}

func (c *call) fault(err error) {
	if c.faultErr == nil {
		c.faultErr = err
	}
}

// args are a host function's parameters as the guest passed them.
type args []uint64

// u returns parameter i as an unsigned 32-bit value (a pointer or a length).
func (a args) u(i int) uint64 { return uint64(api.DecodeU32(a[i])) }

func hostOutput(_ context.Context, c *call, mem api.Memory, a args) int32 {
	if len(c.outputs) >= maxOutputs {
		c.fault(fmt.Errorf("more than %d outputs", maxOutputs))
		return codeTooLarge
	}
	action, code := c.read(mem, a.u(0), a.u(1), maxActionLen)
	if code != 0 {
		return code
	}
	if !utf8.Valid(action) {
		c.fault(fmt.Errorf("output action is not valid UTF-8"))
		return codeInvalid
	}
	payload, code := c.read(mem, a.u(2), a.u(3), c.rev.limits.MaxOutputBytes-c.outBytes)
	if code == codeTooLarge {
		c.fault(fmt.Errorf("output passes the %d-byte limit", c.rev.limits.MaxOutputBytes))
	}
	if code != 0 {
		return code
	}
	if len(payload) > 0 && !validJSON(payload) {
		c.fault(fmt.Errorf("output payload is not valid JSON"))
		return codeInvalid
	}
	out := Activity{Kind: KindCustom, Action: string(action)}
	if out.Action == "" {
		out.Action = ActionResponse
	}
	if len(payload) > 0 {
		out.Payload = append(json.RawMessage(nil), payload...)
	}
	c.outBytes += len(payload)
	c.outputs = append(c.outputs, out)
	return 0
}

func hostLog(ctx context.Context, c *call, mem api.Memory, a args) int32 {
	msg, code := c.read(mem, a.u(1), min(a.u(2), maxLogLineBytes), maxLogLineBytes)
	if code == 0 {
		c.rev.guestLog(ctx, c.pack.id, int(api.DecodeI32(a[0])), msg)
	}
	return 0
}

func (c *call) key(mem api.Memory, ptr, n uint64) (StateKey, int32) {
	name, code := c.read(mem, ptr, n, MaxKeyLen)
	if code != 0 {
		return StateKey{}, code
	}
	if len(name) == 0 {
		return StateKey{}, codeInvalid
	}
	return StateKey{Pack: c.pack.id, Name: string(name)}, 0
}

// answer gives the guest the result of a lookup: the value written to the buffer in
// arguments 2 and 3, or the code for why there is none.
func (c *call) answer(mem api.Memory, a args, v []byte, ok bool, err error) int32 {
	switch {
	case err != nil:
		return c.stored(err)
	case !ok:
		return codeNotFound
	}
	return c.writeBack(mem, a.u(2), a.u(3), v)
}

// writeBack copies v into the guest's buffer when it fits and returns len(v); a result
// larger than the buffer's capacity tells the guest to call again with a larger one.
func (c *call) writeBack(mem api.Memory, bPtr, bCap uint64, v []byte) int32 {
	if uint64(len(v)) <= bCap && len(v) > 0 {
		if !mem.Write(uint32(bPtr), v) {
			c.fault(fmt.Errorf("guest buffer at %#x for %d bytes is outside its memory", bPtr, len(v)))
			return codeFault
		}
	}
	return int32(len(v))
}

// stateKey checks that the pack may read (or write) state in this call and reads the
// key the guest passes as its first two arguments.
func (c *call) stateKey(mem api.Memory, a args, write bool) (StateKey, int32) {
	if c.txn == nil || !c.pack.stateRead || (write && !c.pack.stateWrite) {
		return StateKey{}, codeDenied
	}
	return c.key(mem, a.u(0), a.u(1))
}

// stored records a store failure for the activity and returns the guest's code for it.
func (c *call) stored(err error) int32 {
	if err != nil {
		c.storeErr = err
		return codeFailed
	}
	return 0
}

func hostStateGet(ctx context.Context, c *call, mem api.Memory, a args) int32 {
	key, code := c.stateKey(mem, a, false)
	if code != 0 {
		return code
	}
	var v []byte
	var ok bool
	var err error
	// A read may wait for a pending commit or the API server: the tenant's other guests
	// run meanwhile.
	offCPU(ctx, c, func() { v, ok, err = c.txn.Get(key) })
	checkDeadline(ctx)
	c.charge(ctx, len(key.Name)+len(v))
	return c.answer(mem, a, v, ok, err)
}

func hostStateSet(ctx context.Context, c *call, mem api.Memory, a args) int32 {
	key, code := c.stateKey(mem, a, true)
	if code != 0 {
		return code
	}
	v, code := c.read(mem, a.u(2), a.u(3), MaxValueLen)
	if code != 0 {
		return code
	}
	c.charge(ctx, len(key.Name)+len(v))
	return c.stored(c.txn.Put(key, v))
}

func hostStateDelete(ctx context.Context, c *call, mem api.Memory, a args) int32 {
	key, code := c.stateKey(mem, a, true)
	if code != 0 {
		return code
	}
	c.charge(ctx, len(key.Name))
	return c.stored(c.txn.Delete(key))
}

func hostSessionWait(ctx context.Context, c *call, mem api.Memory, a args) int32 {
	if c.session == "" {
		return codeInvalid // an activity without a session cannot be resumed
	}
	// A session's waits share its bounds: MaxParkedFlows of them, MaxValueLen bytes.
	if len(c.parked) >= MaxParkedFlows {
		return codeTooLarge
	}
	held := 0
	for _, w := range c.parked {
		held += len(w.Data)
	}
	data, code := c.read(mem, a.u(0), a.u(1), MaxValueLen-held)
	if code != 0 {
		return code
	}
	c.charge(ctx, len(data))
	ttl := time.Duration(api.DecodeI32(a[2])) * time.Millisecond
	if ttl <= 0 {
		ttl = defaultWaitTTL
	}
	ttl = min(ttl, maxWaitTTL)
	c.wait = &Wait{Pack: c.pack.id, Flow: c.flow, Data: append([]byte(nil), data...), Expires: c.rev.now().Add(ttl)}
	return 0
}

func hostSecretGet(ctx context.Context, c *call, mem api.Memory, a args) int32 {
	name, code := c.read(mem, a.u(0), a.u(1), 253)
	if code != 0 {
		return code
	}
	if !c.pack.secrets[string(name)] || c.rev.secrets == nil {
		return codeDenied
	}
	// The source may ask the API server: a wait, not guest code, so the tenant's other
	// guests get the processor token meanwhile.
	var v []byte
	var ok bool
	var err error
	offCPU(ctx, c, func() { v, ok, err = c.rev.secrets.Secret(ctx, string(name)) })
	checkDeadline(ctx) // past the deadline the call holds no token: it ends here
	c.charge(ctx, len(v))
	return c.answer(mem, a, v, ok, err)
}
