package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"golang.org/x/time/rate"
)

// Revision is one loaded revision: its packs' instance pools, its limits and its store.
type Revision struct {
	engine  *Engine
	name    string
	env     string
	tenant  string
	memory  *tenantMemory // the tenant's account in the engine's memory budget
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
	clocks     bool          // the pack may sleep
	random     bool          // the pack reads crypto/rand (else a fixed-seed source)
	memory     *tenantMemory // the tenant's account in the memory budget
	hints      hintCache     // identify hints, resolved once (identify.go)

	mu    sync.Mutex
	idle  []*instance
	total int
	// unloaded is set by Close: an instance handed back afterwards is closed, not pooled.
	unloaded bool
}

type instance struct {
	sleeper
	memory   *limitedMemory
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
	if e.tracer != nil {
		cfg.Store = &tracedStore{Store: cfg.Store, tracer: e.tracer, revision: revisionAttrs(cfg.Name)}
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
		memory: e.tenantMemory(namespaceOf(cfg.Name) + "/" + cfg.Tenant),
	}
	defer func(t *tenantMemory) {
		if err != nil {
			e.releaseTenant(t)
		}
	}(r.memory)
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
		switch {
		case errors.Is(err, errCPUWait):
			// The tenant's guests held its processors: the pack may start later.
			err = fmt.Errorf("%w: %w", ErrOverloaded, err)
		case errors.Is(err, ErrTimeout) && ctx.Err() == nil:
			// Not the loader's deadline but the activity timeout: the pack cannot start.
			err = invalidPack("start %s: its start functions ran past the activity timeout (%s)", r.packs[0].id, r.limits.Timeout)
		}
		return nil, &PackError{Pack: r.packs[0].id, Err: err}
	}
	r.packs[0].put(inst, r.now())
	e.mu.Lock()
	e.revisions[r] = struct{}{}
	e.mu.Unlock()
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
	pr.hints.lock = make(chan struct{}, 1)
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
		// Sleeps (poll_oneoff on a clock) go through each instance's sleeper, which
		// wakes at the call's deadline: see newInstance.
		mc = mc.WithSysWalltime().WithSysNanotime()
		pr.clocks = true
	}
	pr.random = caps.WASI.Random
	pr.modConfig = mc
	pr.memory = r.memory
	return pr, nil
}

// closeGrace is the longest Close waits for running activities: unloading must not hold
// a reconcile worker for a guest's whole deadline.
const closeGrace = 2 * time.Second

// Close unloads the revision: new activities get ErrNotLoaded, instances are closed
// and the packs' references released.
func (r *Revision) Close(ctx context.Context) {
	if r.closed.Swap(true) {
		return
	}
	r.engine.mu.Lock()
	delete(r.engine.revisions, r)
	r.engine.mu.Unlock()
	close(r.stop)
	r.wg.Wait()
	// Take every slot so no activity is running, then free the instances. If ctx ends
	// or closeGrace passes first, activities still running are abandoned: they end at
	// their deadline (the guard sees to it) and close their instances when they hand
	// them back. No caller waits on a guest longer than the grace.
	grace := time.NewTimer(closeGrace)
	defer grace.Stop()
take:
	for range cap(r.slots) {
		select {
		case r.slots <- struct{}{}:
		case <-ctx.Done():
			break take
		case <-grace.C:
			break take
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
		p.dropHints()
		r.engine.Release(ctx, p.pack)
	}
	r.engine.releaseTenant(r.memory)
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

// namespaceOf is the namespace part of a revision's name (namespace/name).
func namespaceOf(name string) string {
	ns, _, _ := strings.Cut(name, "/")
	return ns
}
