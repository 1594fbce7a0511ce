package runtime

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/packhost/packhost/internal/tracing"
	"github.com/packhost/packhost/internal/wasmguard"
)

// Guest exports the ABI names.
const (
	ExportMemory   = "memory"
	ExportAlloc    = "packhost_alloc"
	ExportHandle   = "packhost_handle"
	ExportIdentify = "packhost_identify"
	ExportDescribe = "packhost_describe_identify"
	ExportInvoke   = "packhost_invoke"
)

// HostModule is the import module name of packhost's host functions.
const HostModule = "packhost"

// DefaultMaxMemoryPages caps any instance's memory (1 GiB), whatever a tenant allows.
const DefaultMaxMemoryPages = 16384

// EngineConfig configures the process's one wazero runtime.
type EngineConfig struct {
	// CacheDir keeps compiled code across restarts; empty keeps it in memory only.
	CacheDir string
	// MaxMemoryPages caps every instance's memory; per-revision limits go lower.
	MaxMemoryPages uint32
	// Unguarded runs packs as they are, without the deadline guard that wasmguard
	// writes into them at load: a deadline can then no longer stop a guest stuck in a
	// loop, which holds an instance and a core until restart, and tables and the call
	// stack are bounded only by wazero. Only for trusted code, by a cluster admin's
	// decision; no tenant setting reaches it.
	Unguarded bool
	// MemoryBudget is the most bytes of guest memory the replica may hold: compiled
	// packs, instances and running activities' host buffers (see MemoryStats). Past it
	// idle instances are closed, then new instances and activities are refused as
	// overloaded and packs fail to load with ErrMemoryBudget. 0 means no budget.
	MemoryBudget int64
	// HostBytesPerSecond is how many bytes a second one tenant's activities may make the
	// host hold (state values and keys read and written, waits, secrets), over all its
	// revisions on the replica, after a burst of HostBytesBurst: past it the activity
	// waits, or is answered overloaded when it would wait past its deadline. 0 means
	// DefaultHostBytesPerSecond.
	HostBytesPerSecond int
	// GrowthPerSecond is how many bytes a second one tenant's instances may grow their
	// memory by during activities, over all its revisions on the replica, after a burst
	// of two seconds' worth: past it a growing guest rests, and its memory.grow fails
	// when it would rest past its deadline. 0 means DefaultGrowthPerSecond.
	GrowthPerSecond int
	// Logger receives guest logs and engine events.
	Logger logr.Logger
	// Tracing records a span per guest call and per state commit, as children of the
	// caller's span; nil (tracing off) records nothing and costs nothing.
	Tracing trace.TracerProvider
}

// Engine owns the wazero runtime and the compiled packs, shared by every revision and
// tenant of the process: a pack is compiled once per sha256 digest.
type Engine struct {
	rt        wazero.Runtime
	cache     wazero.CompilationCache
	log       logr.Logger
	unguarded bool
	cacheDir  string
	tracer    trace.Tracer // nil: tracing is off

	mem       memoryBudget
	hostBytes rate.Limit // per tenant and second (HostBytesPerSecond)
	growth    rate.Limit // per tenant and second (GrowthPerSecond)
	// lastFutileRelieve is when relieve last found no idle instance to close for what no
	// tenant owns (unix ns).
	lastFutileRelieve atomic.Int64
	// lastReturn is when memory was last handed back to the OS (unix nanoseconds).
	lastReturn atomic.Int64

	mu        sync.Mutex
	packs     map[string]*Pack
	inflight  map[string]*compileCall
	revisions map[*Revision]struct{} // loaded, for relieve
	tenants   map[string]*tenantMemory
}

type compileCall struct {
	done chan struct{}
	pack *Pack
	err  error
}

// NewEngine starts the wazero runtime with WASI and the packhost host module.
func NewEngine(ctx context.Context, cfg EngineConfig) (*Engine, error) {
	if cfg.MaxMemoryPages == 0 {
		cfg.MaxMemoryPages = DefaultMaxMemoryPages
	}
	rc := wazero.NewRuntimeConfig().
		// The guard is in the code (wasmguard), not in wazero: close-on-context-done
		// would start a goroutine per call and exit to Go at every loop header.
		WithCloseOnContextDone(false).
		WithMemoryLimitPages(cfg.MaxMemoryPages).
		WithCustomSections(true)
	var cache wazero.CompilationCache
	if cfg.CacheDir != "" {
		c, err := wazero.NewCompilationCacheWithDir(cfg.CacheDir)
		if err != nil {
			return nil, fmt.Errorf("open compilation cache %q: %w", cfg.CacheDir, err)
		}
		cache = c
		rc = rc.WithCompilationCache(c)
	}
	rt := wazero.NewRuntimeWithConfig(ctx, rc)
	e := &Engine{rt: rt, cache: cache, log: cfg.Logger, unguarded: cfg.Unguarded, cacheDir: cfg.CacheDir, tracer: tracing.Tracer(cfg.Tracing, tracerScope),
		packs: map[string]*Pack{}, inflight: map[string]*compileCall{}, revisions: map[*Revision]struct{}{}, tenants: map[string]*tenantMemory{}}
	e.mem.limit = cfg.MemoryBudget
	e.hostBytes = rate.Limit(cmp.Or(cfg.HostBytesPerSecond, DefaultHostBytesPerSecond))
	e.growth = rate.Limit(cmp.Or(cfg.GrowthPerSecond, DefaultGrowthPerSecond))
	if err := e.instantiateWASI(ctx); err != nil {
		_ = rt.Close(ctx)
		return nil, err
	}
	if err := e.instantiateHost(ctx); err != nil {
		_ = rt.Close(ctx)
		return nil, err
	}
	if err := e.instantiateGuard(ctx); err != nil {
		_ = rt.Close(ctx)
		return nil, err
	}
	return e, nil
}

// Close stops the runtime and every instance in it.
func (e *Engine) Close(ctx context.Context) error {
	err := e.rt.Close(ctx)
	if e.cache != nil {
		if cerr := e.cache.Close(ctx); err == nil {
			err = cerr
		}
	}
	return err
}

// Pack is one compiled module with its manifest, shared by reference count.
type Pack struct {
	// Digest is the hex SHA-256 of the module bytes.
	Digest string
	// Size is the module's length in bytes.
	Size int
	// Manifest is what the pack says about itself.
	Manifest *Manifest

	compiled    wazero.CompiledModule
	minPages    uint32 // the memory the module needs to start
	hostImports map[string]bool
	hasIdentify bool
	hasDescribe bool
	hasInvoke   bool
	refs        int
	engine      *Engine
	reserved    int64 // bytes of the memory budget the compiled code holds
	overhead    int64 // bytes each instance holds besides its linear memory
}

// Packs reports how many compiled packs the engine holds.
func (e *Engine) Packs() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.packs)
}

// Compile returns the pack for wasm, compiling it unless a pack with the same digest is
// already loaded; concurrent calls for one digest compile once. Every successful call
// must be paired with Release.
func (e *Engine) Compile(ctx context.Context, wasm []byte) (*Pack, error) {
	sum := sha256.Sum256(wasm)
	digest := hex.EncodeToString(sum[:])
	for {
		e.mu.Lock()
		if p, ok := e.packs[digest]; ok {
			p.refs++
			e.mu.Unlock()
			return p, nil
		}
		if call, ok := e.inflight[digest]; ok {
			e.mu.Unlock()
			select {
			case <-call.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if call.err != nil {
				return nil, call.err
			}
			continue // take a reference under the lock
		}
		call := &compileCall{done: make(chan struct{})}
		e.inflight[digest] = call
		e.mu.Unlock()

		p, err := e.compile(ctx, wasm, digest)
		e.mu.Lock()
		delete(e.inflight, digest)
		if err == nil {
			p.refs = 1
			e.packs[digest] = p
		}
		call.pack, call.err = p, err
		close(call.done)
		e.mu.Unlock()
		return p, err
	}
}

// Release drops a reference to p and frees its compiled code when it was the last.
func (e *Engine) Release(ctx context.Context, p *Pack) {
	e.mu.Lock()
	p.refs--
	last := p.refs == 0
	if last {
		delete(e.packs, p.Digest)
	}
	e.mu.Unlock()
	if last {
		_ = p.compiled.Close(ctx)
		e.release(nil, memCompiled, p.reserved)
	}
}

func (e *Engine) compile(ctx context.Context, wasm []byte, digest string) (*Pack, error) {
	m, err := ReadManifest(wasm)
	if err != nil {
		return nil, fmt.Errorf("%w: %w: %v", ErrInvalidPack, ErrInvalidManifest, err)
	}
	reserved := int64(len(wasm)) * compiledFactor
	if !e.reserve(nil, memCompiled, reserved) {
		return nil, fmt.Errorf("%w: %w", ErrInvalidPack, e.budgetError(nil, "compiling "+m.PackID, reserved))
	}
	ok := false
	defer func() {
		if !ok {
			e.release(nil, memCompiled, reserved)
		}
	}()
	code := wasm
	if !e.unguarded {
		if code, err = e.guardedCode(wasm, digest); err != nil {
			return nil, invalidPack("%s cannot be guarded: %v", m.PackID, err)
		}
	}
	compiled, err := e.rt.CompileModule(ctx, code)
	if err != nil {
		return nil, invalidPack("compile %s: %v", m.PackID, err)
	}
	p := &Pack{Digest: digest, Size: len(wasm), Manifest: m, compiled: compiled, hostImports: map[string]bool{}, engine: e}
	if err := p.checkExports(); err != nil {
		_ = compiled.Close(ctx)
		return nil, err
	}
	if err := p.checkImports(); err != nil {
		_ = compiled.Close(ctx)
		return nil, err
	}
	tables, globals, err := wasmguard.Footprint(code)
	if err != nil {
		_ = compiled.Close(ctx)
		return nil, invalidPack("%s: %v", m.PackID, err)
	}
	p.overhead = instanceOverhead + int64(tables)*tableElementBytes + int64(globals)*globalBytes
	p.reserved, ok = reserved, true
	return p, nil
}

func (p *Pack) checkExports() error {
	mem, ok := p.compiled.ExportedMemories()[ExportMemory]
	if !ok {
		return invalidPack("%s exports no memory named %q", p.Manifest.PackID, ExportMemory)
	}
	p.minPages = mem.Min()
	fns := p.compiled.ExportedFunctions()
	want := func(name string, params, results []api.ValueType, required bool) (bool, error) {
		def, ok := fns[name]
		if !ok {
			if required {
				return false, invalidPack("%s does not export %s", p.Manifest.PackID, name)
			}
			return false, nil
		}
		if !sameTypes(def.ParamTypes(), params) || !sameTypes(def.ResultTypes(), results) {
			return false, invalidPack("%s exports %s with the wrong signature", p.Manifest.PackID, name)
		}
		return true, nil
	}
	i32 := api.ValueTypeI32
	if _, err := want(ExportAlloc, []api.ValueType{i32}, []api.ValueType{i32}, true); err != nil {
		return err
	}
	if _, err := want(ExportHandle, []api.ValueType{i32, i32}, []api.ValueType{i32}, true); err != nil {
		return err
	}
	var err error
	if p.hasIdentify, err = want(ExportIdentify, []api.ValueType{i32, i32}, []api.ValueType{i32}, false); err != nil {
		return err
	}
	if p.hasDescribe, err = want(ExportDescribe, nil, []api.ValueType{i32}, false); err != nil {
		return err
	}
	if p.hasInvoke, err = want(ExportInvoke, []api.ValueType{i32, i32}, []api.ValueType{i32}, false); err != nil {
		return err
	}
	return nil
}

// checkImports refuses an import the host does not provide, or a host function the
// manifest does not declare the capability for.
func (p *Pack) checkImports() error {
	caps := p.Manifest.Capabilities
	for _, def := range p.compiled.ImportedFunctions() {
		module, name, _ := def.Import()
		switch module {
		case wasi_snapshot_preview1.ModuleName, wasmguard.ImportModule:
			continue // the guard's imports are added by the rewrite, which refuses a guest's own
		case HostModule:
		default:
			return invalidPack("%s imports %s.%s: the host provides only %s and %s", p.Manifest.PackID, module, name, HostModule, wasi_snapshot_preview1.ModuleName)
		}
		hf, ok := hostFunctions[name]
		if !ok {
			return invalidPack("%s imports %s.%s, which abi %d does not have", p.Manifest.PackID, module, name, ABIVersion)
		}
		if !sameTypes(def.ParamTypes(), hf.params) || !sameTypes(def.ResultTypes(), hf.results) {
			return invalidPack("%s imports %s.%s with the wrong signature", p.Manifest.PackID, module, name)
		}
		if hf.needs != nil && !hf.needs(caps) {
			return invalidPack("%s imports %s.%s but its manifest does not declare the capability (%s)", p.Manifest.PackID, module, name, hf.capability)
		}
		p.hostImports[name] = true
	}
	return nil
}

func sameTypes(a, b []api.ValueType) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// returnInterval is how often at most freed guest memory is handed back to the OS: a
// forced collection is a pause for every goroutine, so many revisions going idle at once
// pay for one.
const returnInterval = 10 * time.Second

// returnMemory hands the memory of closed instances back to the OS, at most every
// returnInterval. Go's background scavenger would do it too, but slowly enough that an
// idle replica would keep the RSS of its busiest minute for a long while.
func (e *Engine) returnMemory() {
	now := time.Now().UnixNano()
	last := e.lastReturn.Load()
	if now-last < int64(returnInterval) || !e.lastReturn.CompareAndSwap(last, now) {
		return
	}
	go debug.FreeOSMemory()
}
