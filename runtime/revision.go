package runtime

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/sys"
	"golang.org/x/time/rate"
)

// SecretSource gives a revision the tenant's allowlisted secrets by name.
type SecretSource interface {
	Secret(ctx context.Context, name string) ([]byte, bool, error)
}

// Policy is what the tenant allows its packs.
type Policy struct {
	StateRead  bool
	StateWrite bool
	// Secrets are the secret names the tenant allowlists; nil grants none.
	Secrets []string
	// Env are the environment variable names a pack may see; values come from Config.
	Env    []string
	Clocks bool
	Random bool
}

// Limits bound one revision on this replica.
type Limits struct {
	// MemoryPages caps each instance's memory, in 64 KiB pages.
	MemoryPages uint32
	// Timeout is each activity's deadline.
	Timeout time.Duration
	// MaxConcurrency is how many activities run at once (one instance each).
	MaxConcurrency int
	// MaxQueue is how many activities may wait for an instance before ErrOverloaded.
	MaxQueue int
	// MaxOutputBytes bounds the payload bytes one activity may output.
	MaxOutputBytes int
	// IdleTimeout is how long an idle instance beyond the first is kept.
	IdleTimeout time.Duration
	// MaxReruns bounds how often an activity is run again after a state conflict; the
	// activity's deadline bounds the re-runs too.
	MaxReruns int
}

func (l *Limits) defaults() {
	if l.MemoryPages == 0 {
		l.MemoryPages = 1024
	}
	if l.Timeout == 0 {
		l.Timeout = 10 * time.Second
	}
	if l.MaxConcurrency == 0 {
		l.MaxConcurrency = 16
	}
	if l.MaxQueue == 0 {
		l.MaxQueue = 4 * l.MaxConcurrency
	}
	if l.MaxOutputBytes == 0 {
		l.MaxOutputBytes = 1 << 20
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = 30 * time.Second
	}
	if l.MaxReruns == 0 {
		l.MaxReruns = 128 // the deadline bounds them too
	}
}

// RevisionConfig is everything a revision runtime needs; the host fills it, never a guest.
type RevisionConfig struct {
	// Name identifies the revision in errors and logs (namespace/name).
	Name string
	// Env and Tenant scope session keys.
	Env    string
	Tenant string
	// Packs are the main pack then the overlays; the revision takes over their references
	// and releases them on Close (or when NewRevision fails).
	Packs []*Pack
	// Config is the revision's non-secret configuration, handed to every activity.
	Config  map[string]string
	Policy  Policy
	Limits  Limits
	Store   Store
	Secrets SecretSource
	Logger  logr.Logger
	// Clock tells the time for wait expiry; nil uses time.Now.
	Clock func() time.Time
}

// Revision is one loaded revision: its packs' instance pools, its limits and its store.
type Revision struct {
	engine  *Engine
	name    string
	env     string
	tenant  string
	packs   []*packRuntime
	byID    map[string]*packRuntime
	limits  Limits
	store   Store
	secrets SecretSource
	log     logr.Logger
	now     func() time.Time
	config  []byte // JSON, handed to every activity
	session bool   // a pack may park waits

	slots   chan struct{}
	waiting atomic.Int32
	closed  atomic.Bool
	logs    *rate.Limiter
	stop    chan struct{}
	wg      sync.WaitGroup
}

// packRuntime is one pack inside a revision: its grants and its instance pool.
type packRuntime struct {
	id         string
	pack       *Pack
	stateRead  bool
	stateWrite bool
	secrets    map[string]bool
	modConfig  wazero.ModuleConfig

	mu    sync.Mutex
	idle  []*instance
	total int
	// unloaded is set by Close: an instance handed back afterwards is closed, not pooled.
	unloaded bool
}

type instance struct {
	mod      api.Module
	mem      api.Memory
	alloc    api.Function
	handle   api.Function
	inPtr    uint32
	inCap    uint32
	buf      []byte
	lastUsed time.Time
}

// NewRevision checks the packs against each other and the tenant's policy, and starts
// one warm instance of the main pack.
func (e *Engine) NewRevision(ctx context.Context, cfg RevisionConfig) (r *Revision, err error) {
	defer func() {
		if err != nil {
			for _, p := range cfg.Packs {
				e.Release(ctx, p)
			}
		}
	}()
	if len(cfg.Packs) == 0 {
		return nil, invalidPack("revision %s has no packs", cfg.Name)
	}
	if cfg.Store == nil {
		cfg.Store = NewMemStore()
	}
	cfg.Limits.defaults()
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	config, err := json.Marshal(cfg.Config)
	if err != nil {
		return nil, fmt.Errorf("encode config: %w", err)
	}
	r = &Revision{
		engine: e, name: cfg.Name, env: cfg.Env, tenant: cfg.Tenant, limits: cfg.Limits,
		store: cfg.Store, secrets: cfg.Secrets, log: cfg.Logger, now: cfg.Clock, config: config,
		byID: map[string]*packRuntime{}, slots: make(chan struct{}, cfg.Limits.MaxConcurrency),
		logs: rate.NewLimiter(rate.Limit(50), 100), stop: make(chan struct{}),
	}
	for _, p := range cfg.Packs {
		id := p.Manifest.PackID
		if _, dup := r.byID[id]; dup {
			return nil, &PackError{Pack: id, Err: invalidPack("pack id %q appears twice in revision %s", id, cfg.Name)}
		}
		if p.minPages > cfg.Limits.MemoryPages {
			return nil, &PackError{Pack: id, Err: fmt.Errorf("%w: pack %s needs %d memory pages (%d KiB) to start and revision %s allows %d: raise limits.memoryPages",
				ErrMemoryLimit, id, p.minPages, p.minPages*64, cfg.Name, cfg.Limits.MemoryPages)}
		}
		pr, err := r.grant(p, cfg)
		if err != nil {
			return nil, &PackError{Pack: id, Err: err}
		}
		r.packs = append(r.packs, pr)
		r.byID[id] = pr
		r.session = r.session || p.hostImports["session_wait"]
	}
	// A warm instance of the main pack proves the pack starts; it stays in the pool.
	inst, err := r.packs[0].newInstance(ctx, r)
	if err != nil {
		return nil, &PackError{Pack: r.packs[0].id, Err: err}
	}
	r.packs[0].put(inst, r.now())
	r.wg.Add(1)
	go r.reap()
	return r, nil
}

// grant intersects what a pack declares with what the tenant allows; a declared
// capability the tenant does not allow refuses the pack.
func (r *Revision) grant(p *Pack, cfg RevisionConfig) (*packRuntime, error) {
	caps, pol := p.Manifest.Capabilities, cfg.Policy
	deny := func(what string) error {
		return fmt.Errorf("%w: pack %s asks for %s, which tenant %s does not allow", ErrCapabilityDenied, p.Manifest.PackID, what, cfg.Tenant)
	}
	if caps.State.Read && !pol.StateRead {
		return nil, deny("state reads")
	}
	if caps.State.Write && !pol.StateWrite {
		return nil, deny("state writes")
	}
	if caps.WASI.Clock && !pol.Clocks {
		return nil, deny("the WASI clocks")
	}
	if caps.WASI.Random && !pol.Random {
		return nil, deny("the WASI random source")
	}
	pr := &packRuntime{id: p.Manifest.PackID, pack: p, stateRead: caps.State.Read, stateWrite: caps.State.Write, secrets: map[string]bool{}}
	for _, s := range caps.Secrets {
		if slices.Contains(pol.Secrets, s) {
			pr.secrets[s] = true
		}
	}
	mc := wazero.NewModuleConfig().WithName("").WithStartFunctions("_initialize").
		WithStdout(&guestWriter{r: r, pack: pr.id}).WithStderr(&guestWriter{r: r, pack: pr.id, stderr: true})
	for _, name := range caps.WASI.Env {
		if v, ok := cfg.Config[name]; ok && slices.Contains(pol.Env, name) {
			mc = mc.WithEnv(name, v)
		}
	}
	if caps.WASI.Clock {
		mc = mc.WithSysWalltime().WithSysNanotime().WithSysNanosleep()
	}
	if caps.WASI.Random {
		mc = mc.WithRandSource(rand.Reader)
	}
	pr.modConfig = mc
	return pr, nil
}

// limitedMemory backs one instance's memory and refuses to grow past its cap, so
// memory.grow fails inside the guest instead of taking the host's memory.
type limitedMemory struct {
	buf []byte
	max uint64
}

func (m *limitedMemory) Reallocate(size uint64) []byte {
	if size > m.max {
		return nil
	}
	if size <= uint64(cap(m.buf)) {
		m.buf = m.buf[:size]
		return m.buf
	}
	nb := make([]byte, size, min(max(size, 2*uint64(cap(m.buf))), m.max))
	copy(nb, m.buf)
	m.buf = nb
	return nb
}

func (m *limitedMemory) Free() { m.buf = nil }

func (p *packRuntime) newInstance(ctx context.Context, r *Revision) (*instance, error) {
	maxBytes := uint64(r.limits.MemoryPages) * 65536
	// The instance outlives ctx; its start functions (_initialize) get the activity
	// timeout, which the guard enforces as it does for any call.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.limits.Timeout)
	defer cancel()
	ctx = experimental.WithMemoryAllocator(ctx, experimental.MemoryAllocatorFunc(func(c, m uint64) experimental.LinearMemory {
		return &limitedMemory{buf: make([]byte, 0, min(c, maxBytes)), max: min(m, maxBytes)}
	}))
	mod, err := instantiate(ctx, r.engine.rt, p.pack.compiled, p.modConfig)
	if err != nil {
		return nil, invalidPack("start %s: %v", p.id, err)
	}
	p.mu.Lock()
	p.total++
	p.mu.Unlock()
	return &instance{mod: mod, mem: mod.Memory(), alloc: mod.ExportedFunction(ExportAlloc), handle: mod.ExportedFunction(ExportHandle)}, nil
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
// whose module was closed after its last call returned (see errInstanceClosed) is
// discarded, never reused.
func (p *packRuntime) get(ctx context.Context, r *Revision) (inst *instance, err error) {
	for {
		p.mu.Lock()
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			inst, err = p.newInstance(ctx, r)
			break
		}
		inst = p.idle[n-1]
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

// reap closes idle instances beyond the first of each pack once they have been idle
// for IdleTimeout, so an idle revision keeps one instance.
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
		for i, inst := range p.idle {
			// The most recently used instance (the last) always stays.
			if i < len(p.idle)-1 && now.Sub(inst.lastUsed) >= r.limits.IdleTimeout {
				victims = append(victims, inst)
				continue
			}
			keep = append(keep, inst)
		}
		p.idle = keep
		p.mu.Unlock()
		for _, inst := range victims {
			p.discard(inst)
		}
	}
}

// Close unloads the revision: new activities get ErrNotLoaded, instances are closed
// and the packs' references released.
func (r *Revision) Close(ctx context.Context) {
	if r.closed.Swap(true) {
		return
	}
	close(r.stop)
	r.wg.Wait()
	// Take every slot so no activity is running, then free the instances. If ctx ends
	// first, activities still running close their instances when they hand them back.
	for range cap(r.slots) {
		select {
		case r.slots <- struct{}{}:
		case <-ctx.Done():
		}
	}
	for _, p := range r.packs {
		p.mu.Lock()
		idle := p.idle
		p.idle, p.unloaded = nil, true
		p.mu.Unlock()
		for _, inst := range idle {
			p.discard(inst)
		}
		r.engine.Release(ctx, p.pack)
	}
}

func (r *Revision) acquire(ctx context.Context) error {
	select {
	case r.slots <- struct{}{}:
		return nil
	default:
	}
	if int(r.waiting.Add(1)) > r.limits.MaxQueue {
		r.waiting.Add(-1)
		return fmt.Errorf("%w: %s runs %d activities and %d wait", ErrOverloaded, r.name, r.limits.MaxConcurrency, r.limits.MaxQueue)
	}
	defer r.waiting.Add(-1)
	select {
	case r.slots <- struct{}{}:
		return nil
	case <-r.stop: // unloading: Close takes every slot and never gives them back
		return fmt.Errorf("%w: %s is unloading", ErrNotLoaded, r.name)
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("%w: waited for an instance until the deadline", ErrTimeout)
		}
		return ctx.Err()
	}
}

func (r *Revision) release() { <-r.slots }

// Load reports how many activities are running and how many wait for an instance.
func (r *Revision) Load() (running, waiting int) {
	return len(r.slots), int(r.waiting.Load())
}

// outcome is the error of a guest call that returned res: a store failure, a fault the
// host recorded, or a non-zero result; nil when the call succeeded.
func (c *call) outcome(res int32, what string) error {
	switch {
	case c.storeErr != nil:
		return fmt.Errorf("state: %w", c.storeErr)
	case c.faultErr != nil:
		return fmt.Errorf("%w: %v", ErrInvalidOutput, c.faultErr)
	case res != 0:
		return fmt.Errorf("%w: %s returned error code %d", ErrInvalidOutput, what, res)
	}
	return nil
}

// call is the host side of one guest call: where host functions find their scope.
type call struct {
	rev      *Revision
	pack     *packRuntime
	flow     string
	session  string
	txn      Txn
	outputs  []Activity
	outBytes int
	wait     *Wait
	faultErr error
	storeErr error
}

// Handle runs one activity: it selects the flow, resumes the session's parked wait if
// there is one, runs the guest on a pooled instance under the deadline, and commits the
// activity's state before returning its replies. A state conflict runs it again.
func (r *Revision) Handle(ctx context.Context, a *Activity) ([]Activity, error) {
	if r.closed.Load() {
		return nil, fmt.Errorf("%w: %s", ErrNotLoaded, r.name)
	}
	ctx, cancel := context.WithTimeout(ctx, r.limits.Timeout)
	defer cancel()
	if err := r.acquire(ctx); err != nil {
		return nil, err
	}
	defer r.release()
	session := SessionKey(r.env, r.tenant, a)
	for attempt := 0; ; attempt++ {
		out, err := r.handleOnce(WithAttempt(ctx, attempt), a, session)
		if !errors.Is(err, ErrConflict) || attempt >= r.limits.MaxReruns {
			return out, err
		}
		// Activities that conflicted on a hot key retry at jittered times, so they do not
		// collide again in lockstep.
		select {
		case <-time.After(time.Duration(mrand.Int64N(int64(time.Millisecond) << min(attempt, 5)))):
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %s: re-running after conflicts until the deadline", ErrTimeout, r.name)
		}
	}
}

func (r *Revision) handleOnce(ctx context.Context, a *Activity, session string) ([]Activity, error) {
	txn, err := r.store.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin state transaction: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			txn.Discard()
		}
	}()

	var resumed *Wait
	if r.session && session != "" {
		w, err := txn.Wait(session)
		if err != nil {
			return nil, fmt.Errorf("read session wait: %w", err)
		}
		if w != nil {
			if r.now().Before(w.Expires) && r.byID[w.Pack] != nil {
				resumed = w
			} else {
				txn.SetWait(session, nil) // expired: clear it with this turn
			}
		}
	}
	var p *packRuntime
	var flow Flow
	if resumed != nil {
		p = r.byID[resumed.Pack]
		flow = Flow{ID: resumed.Flow}
		for _, f := range p.pack.Manifest.Flows {
			if f.ID == resumed.Flow {
				flow = f
			}
		}
	} else {
		idx, f, err := selectFlow(r.packs, a)
		if err != nil {
			return nil, err
		}
		p, flow = r.packs[idx], f
	}

	inst, err := p.get(ctx, r)
	if err != nil {
		return nil, err
	}
	c := &call{rev: r, pack: p, flow: flow.ID, session: session, txn: txn}
	in := encodeInput(inst.buf[:0], a, p.id, flow, session, resumed, r.config)
	inst.buf = in
	res, err := r.invoke(ctx, inst, c, inst.handle, in)
	if err != nil {
		p.discard(inst)
		return nil, err
	}
	p.put(inst, r.now())
	if err := c.outcome(res, "handler of flow "+flow.ID); err != nil {
		return nil, err
	}
	if c.wait != nil {
		txn.SetWait(session, c.wait)
	} else if resumed != nil {
		txn.SetWait(session, nil) // the turn completed
	}
	committed = true
	if err := txn.Commit(ctx); err != nil {
		return nil, err
	}
	return c.outputs, nil
}

// invoke copies in into the instance's input buffer and calls fn with it. Any error
// means the instance must be discarded.
func (r *Revision) invoke(ctx context.Context, inst *instance, c *call, fn api.Function, in []byte) (int32, error) {
	if uint32(len(in)) > inst.inCap || inst.inCap == 0 {
		res, err := inst.alloc.Call(ctx, uint64(len(in)))
		if err != nil {
			return 0, classify(ctx, err, r.name)
		}
		inst.inPtr, inst.inCap = api.DecodeU32(res[0]), uint32(len(in))
	}
	if !inst.mem.Write(inst.inPtr, in) {
		inst.inCap = 0
		return 0, fmt.Errorf("%w: %s returned an input buffer at %#x outside its memory", ErrInvalidOutput, ExportAlloc, inst.inPtr)
	}
	ctx = context.WithValue(ctx, callKey{}, c)
	res, err := fn.Call(ctx, uint64(inst.inPtr), uint64(len(in)))
	if err != nil {
		return 0, classify(ctx, err, r.name)
	}
	return api.DecodeI32(res[0]), nil
}

// classify turns a failed guest call into a typed error. The guard's own errors (the
// deadline, a limit) come through wazero wrapped with the guest's stack trace, which is
// kept for the log but not for the answer.
func classify(ctx context.Context, err error, rev string) error {
	var exit *sys.ExitError
	var stop *hostStop
	switch {
	case errors.As(err, &stop):
		return fmt.Errorf("%s: %w", rev, stop.err)
	case errors.As(err, &exit):
		return fmt.Errorf("%w: %s exited with code %d", ErrTrap, rev, exit.ExitCode())
	case ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%w: %s", ErrTimeout, rev)
	}
	return fmt.Errorf("%w: %s: %v", ErrTrap, rev, err)
}

// selectFlow picks the flow an activity enters: its explicit flow id, else the unique
// entry flow of its flow type, else the main pack's first entry flow. Flows tagged
// internal are never entered from outside. A pack_id hint narrows the search.
func selectFlow(packs []*packRuntime, a *Activity) (int, Flow, error) {
	candidates := func(yield func(int, Flow) bool) {
		for i, p := range packs {
			if a.PackID != "" && p.id != a.PackID {
				continue
			}
			for _, f := range p.pack.Manifest.Flows {
				if !f.Internal() && !yield(i, f) {
					return
				}
			}
		}
	}
	switch {
	case a.FlowID != "":
		for i, f := range candidates {
			if f.ID == a.FlowID {
				return i, f, nil
			}
		}
		return 0, Flow{}, fmt.Errorf("%w: no flow %q that can be entered from outside", ErrNoSuchFlow, a.FlowID)
	case a.FlowType != "":
		found, idx, n := Flow{}, 0, 0
		for i, f := range candidates {
			if f.Entry && f.Type == a.FlowType {
				found, idx, n = f, i, n+1
			}
		}
		switch n {
		case 1:
			return idx, found, nil
		case 0:
			return 0, Flow{}, fmt.Errorf("%w: no entry flow of type %q", ErrNoSuchFlow, a.FlowType)
		default:
			return 0, Flow{}, fmt.Errorf("%w: %d entry flows of type %q; name one with flow_id", ErrNoSuchFlow, n, a.FlowType)
		}
	}
	main := 0
	if a.PackID != "" {
		main = slices.IndexFunc(packs, func(p *packRuntime) bool { return p.id == a.PackID })
		if main < 0 {
			return 0, Flow{}, fmt.Errorf("%w: no pack %q", ErrNoSuchFlow, a.PackID)
		}
	}
	if f, ok := packs[main].pack.Manifest.firstEntryFlow(); ok {
		return main, f, nil
	}
	return 0, Flow{}, fmt.Errorf("%w: pack %s has no entry flow", ErrNoSuchFlow, packs[main].id)
}

// Input fields, in the order of the input record (see ABI.md).
const (
	fieldKind = iota
	fieldAction
	fieldFlowID
	fieldFlowType
	fieldSessionKey
	fieldPackID
	fieldProviderID
	fieldEndpointID
	fieldUserID
	fieldChannelID
	fieldConversationID
	fieldSessionID
	fieldPayload
	fieldWaitData
	fieldConfig
	numFields
)

// Input flags.
const flagResumed = 1

const inputHeader = 12 + 8*numFields

// encodeInput lays the activity out as the guest reads it: a header with a field table
// of (offset, length) pairs, then the bytes. The guest scans nothing.
func encodeInput(buf []byte, a *Activity, pack string, flow Flow, session string, w *Wait, config []byte) []byte {
	var fields [numFields][]byte
	fields[fieldKind] = []byte(a.Kind)
	fields[fieldAction] = []byte(a.Action)
	fields[fieldFlowID] = []byte(flow.ID)
	fields[fieldFlowType] = []byte(flow.Type)
	fields[fieldSessionKey] = []byte(session)
	fields[fieldPackID] = []byte(pack)
	fields[fieldProviderID] = []byte(a.ProviderID)
	fields[fieldEndpointID] = []byte(a.EndpointID)
	fields[fieldUserID] = []byte(a.UserID)
	fields[fieldChannelID] = []byte(a.ChannelID)
	fields[fieldConversationID] = []byte(a.ConversationID)
	fields[fieldSessionID] = []byte(a.SessionID)
	fields[fieldPayload] = a.Payload
	fields[fieldConfig] = config
	var flags uint32
	if w != nil {
		fields[fieldWaitData] = w.Data
		flags |= flagResumed
	}
	size := inputHeader
	for _, f := range fields {
		size += len(f)
	}
	if cap(buf) < size {
		buf = make([]byte, 0, size)
	}
	buf = buf[:inputHeader]
	binary.LittleEndian.PutUint32(buf[0:], ABIVersion)
	binary.LittleEndian.PutUint32(buf[4:], flags)
	binary.LittleEndian.PutUint32(buf[8:], numFields)
	for i, f := range fields {
		binary.LittleEndian.PutUint32(buf[12+8*i:], uint32(len(buf)))
		binary.LittleEndian.PutUint32(buf[16+8*i:], uint32(len(f)))
		buf = append(buf, f...)
	}
	return buf
}

// guestLog writes a guest's log line, rate limited per revision.
func (r *Revision) guestLog(pack string, level int, msg []byte) {
	if !r.logs.Allow() {
		return
	}
	r.log.V(max(0, level)).Info("Guest log", "revision", r.name, "pack", pack, "message", string(msg))
}

// guestWriter captures a guest's stdout or stderr into the log.
type guestWriter struct {
	r      *Revision
	pack   string
	stderr bool
}

func (w *guestWriter) Write(p []byte) (int, error) {
	level := 1
	if w.stderr {
		level = 0
	}
	if len(p) > maxLogLineBytes {
		p = p[:maxLogLineBytes]
	}
	w.r.guestLog(w.pack, level, p)
	return len(p), nil
}

var _ io.Writer = (*guestWriter)(nil)
