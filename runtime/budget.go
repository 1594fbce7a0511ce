package runtime

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	goruntime "runtime"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// ErrMemoryBudget: the replica's memory budget cannot hold what was asked (a compiled
// pack, an instance, an activity's host buffers). For an activity it comes wrapped in
// ErrOverloaded: try again later, or on another replica.
var ErrMemoryBudget = errors.New("replica memory budget exhausted")

// What the budget counts, by kind.
const (
	memCompiled  = iota // compiled packs, shared per digest
	memInstances        // instances: linear memory and a fixed overhead each
	memHost             // what the host holds for guests: running activities' host calls, packs' identify hints
	numMemKinds
)

const (
	// compiledFactor estimates what a compiled pack keeps per wasm byte: compiled code is
	// 4x the module and the process keeps 5.7x with wazero's decoded module
	// (BenchmarkLoad, rss-growth/wasm-bytes).
	compiledFactor = 6
	// instanceOverhead is charged per instance besides its linear memory and tables: the
	// module instance, its globals and the call engine's stack.
	instanceOverhead = 512 << 10
	// tableElementBytes is what one table element holds in the host.
	tableElementBytes = 8
	// globalBytes is what one global holds in the host, with wazero's bookkeeping of it
	// (100,000 globals measured 8.6 MiB an instance).
	globalBytes = 96
)

// memoryBudget accounts guest memory against the replica's budget. Reservations that
// would pass it are refused, after idle instances were closed to make room.
type memoryBudget struct {
	limit int64 // 0: no limit
	total atomic.Int64
	used  [numMemKinds]atomic.Int64
}

func (b *memoryBudget) tryReserve(kind int, n int64) bool {
	for {
		cur := b.total.Load()
		if b.limit > 0 && n > 0 && cur+n > b.limit {
			return false
		}
		if b.total.CompareAndSwap(cur, cur+n) {
			b.used[kind].Add(n)
			return true
		}
	}
}

func (b *memoryBudget) release(kind int, n int64) {
	b.total.Add(-n)
	b.used[kind].Add(-n)
}

// MemoryStats is the engine's memory accounting, in bytes.
type MemoryStats struct {
	// Budget is the replica's budget; 0 means none.
	Budget int64
	// Compiled, Instances and Host are what compiled packs, instances, and the host
	// for guests (running activities' host buffers, packs' cached identify hints) hold.
	Compiled, Instances, Host int64
}

// MemoryStats reports the engine's memory accounting.
func (e *Engine) MemoryStats() MemoryStats {
	return MemoryStats{Budget: e.mem.limit, Compiled: e.mem.used[memCompiled].Load(),
		Instances: e.mem.used[memInstances].Load(), Host: e.mem.used[memHost].Load()}
}

// tenantShare is the most of the budget one tenant's instances and activities may hold,
// so that one tenant filling its share leaves room for everyone else's.
const tenantShare = 0.5

// tenantMemory is what one tenant's instances and activities hold, and its share of the
// replica's processors.
type tenantMemory struct {
	used atomic.Int64
	// cpu holds a token for each of the tenant's guests running guest code: at most
	// cap(cpu) at once, half the processors (at least one), so a tenant's busy guests
	// always leave the other half to everyone else. Guests give their token back at every
	// budget check (about every millisecond of guest code) and while they sleep.
	cpu chan struct{}
	// lastFutileRelieve is when relieve last found none of the idle instances it may close
	// for this tenant (unix ns).
	lastFutileRelieve atomic.Int64
	// refs counts the revisions made or being made with this account (under Engine.mu).
	refs int
	// hostBytes paces what the tenant's activities make the host hold (see pace).
	hostBytes *rate.Limiter
	// growth paces how fast the tenant's instances grow their memory (see paceGrowth).
	growth *rate.Limiter
}

// Host bytes pacing: a tenant's activities may make the host hold this many bytes a
// second on a replica, after a burst of HostBytesBurst. The per-activity limit
// (Limits.MaxHostBytes, 8 MiB) bounds what one activity holds at once; the pace bounds
// how fast a tenant can make the host allocate, copy and collect, which is a cost every
// tenant shares: 800 state values of 256 KiB an activity, refused at 8 MiB and started
// again, took the victims' p99 from 2.4 to 23 ms (hack/hostile.sh). 64 MiB a second is
// four times what a revision's whole state (64 shards of 256 KiB) holds.
const (
	DefaultHostBytesPerSecond = 64 << 20
	HostBytesBurst            = 16 << 20
)

// Memory growth pacing: a tenant's instances may grow their linear memory by this many
// bytes a second on a replica during activities, after a burst of two seconds' worth (by
// default enough to take an instance from 512 MiB to the 1 GiB most any may hold, in one
// step). The budget
// bounds what a tenant holds; the pace bounds how fast it makes the host allocate, copy
// and give back memory: four instances growing to the tenant's share, trapping and
// starting again took the victims' p99 from 2 to 5 ms (hack/hostile.sh). A pooled
// instance grows once, so a tenant's ordinary traffic never meets the pace.
const DefaultGrowthPerSecond = 256 << 20

// errCPUWait: the deadline passed while the call waited for one of its tenant's
// processor tokens (the tenant's other guests were running), before it ran anything.
var errCPUWait = fmt.Errorf("%w: waited for the tenant's share of the processors until the deadline", ErrTimeout)

// acquireCPU waits for one of the tenant's processor tokens, or for ctx to end.
func (t *tenantMemory) acquireCPU(ctx context.Context) error {
	select {
	case t.cpu <- struct{}{}:
		return nil
	default:
	}
	select {
	case t.cpu <- struct{}{}:
		return nil
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return errCPUWait
		}
		return ctx.Err()
	}
}

func (t *tenantMemory) releaseCPU() { <-t.cpu }

// tenantMemory returns the account of a tenant (namespace/name) for a new revision,
// which gives it back with releaseTenant.
func (e *Engine) tenantMemory(key string) *tenantMemory {
	e.mu.Lock()
	defer e.mu.Unlock()
	t, ok := e.tenants[key]
	if !ok {
		t = &tenantMemory{cpu: make(chan struct{}, max(1, goruntime.GOMAXPROCS(0)/2)), hostBytes: rate.NewLimiter(e.hostBytes, HostBytesBurst),
			growth: rate.NewLimiter(e.growth, int(2*e.growth))}
		e.tenants[key] = t
	}
	t.refs++
	return t
}

// releaseTenant gives back a revision's reference to t, and forgets every account that
// no revision refers to and that holds nothing, so tenants that come and go leave
// nothing behind. An account still held by an abandoned activity (one still running
// past its revision's unload) is kept until a later release finds it empty: forgetting
// it sooner would give a new revision of that tenant a second, empty account.
func (e *Engine) releaseTenant(t *tenantMemory) {
	e.mu.Lock()
	defer e.mu.Unlock()
	t.refs--
	for key, x := range e.tenants {
		if x.refs == 0 && x.used.Load() == 0 && len(x.cpu) == 0 {
			delete(e.tenants, key)
		}
	}
}

// reserve takes n bytes of kind from the budget for tenant t (nil for what no tenant
// owns: compiled code is shared per digest). When they do not fit it closes idle
// instances, just enough of them (relieve). False means they still do not fit, or that
// t would hold more than its share.
func (e *Engine) reserve(t *tenantMemory, kind int, n int64) bool {
	if e.tryReserveFor(t, kind, n) {
		return true
	}
	if t != nil && e.mem.limit > 0 && t.used.Load()+n > e.share() {
		return false // past the tenant's share: closing others' instances would not help
	}
	return e.relieve(t, kind, n)
}

// tryReserveFor is reserve without closing idle instances first: for room taken ahead
// of need, which is not worth closing anyone's instance for.
func (e *Engine) tryReserveFor(t *tenantMemory, kind int, n int64) bool {
	if t == nil {
		return e.mem.tryReserve(kind, n)
	}
	// Take the tenant's share first, atomically, so that concurrent growths of one
	// tenant's instances cannot all pass a check made before any of them counted.
	for {
		used := t.used.Load()
		if e.mem.limit > 0 && n > 0 && used+n > e.share() {
			return false
		}
		if t.used.CompareAndSwap(used, used+n) {
			break
		}
	}
	if !e.mem.tryReserve(kind, n) {
		t.used.Add(-n)
		return false
	}
	return true
}

// share is the most one tenant may hold (tenantShare of the budget).
func (e *Engine) share() int64 { return int64(float64(e.mem.limit) * tenantShare) }

// reserveUpTo reserves as much as it can between need and want bytes, and returns how
// much (0: not even need fits). It does not close idle instances.
func (e *Engine) reserveUpTo(t *tenantMemory, kind int, need, want int64) int64 {
	for range 4 { // a race with another reservation only shrinks what is left
		avail := want
		if e.mem.limit > 0 {
			avail = min(avail, e.mem.limit-e.mem.total.Load())
			if t != nil {
				avail = min(avail, e.share()-t.used.Load())
			}
		}
		if avail < need {
			return 0
		}
		if e.tryReserveFor(t, kind, avail) {
			return avail
		}
	}
	return 0
}

// release gives back n bytes of kind that t held.
func (e *Engine) release(t *tenantMemory, kind int, n int64) {
	e.mem.release(kind, n)
	if t != nil {
		t.used.Add(-n)
	}
}

// budgetError says what did not fit for tenant t. What no tenant owns (compiling a pack,
// t nil) is the operator's to fix, so the error, which ends up in the Revision's status,
// has the replica's figures. A tenant's error goes back to its callers, so it has the
// tenant's own figure only: what the other tenants hold is theirs (the operator has the
// replica's figures as packhost_runtime_memory_* metrics).
func (e *Engine) budgetError(t *tenantMemory, what string, n int64) error {
	if t != nil {
		return fmt.Errorf("%w: %s needs %d MiB; the tenant holds %d MiB on this replica, which has no room left for it: try again later, or on another replica",
			ErrMemoryBudget, what, mib(n), mib(t.used.Load()))
	}
	s := e.MemoryStats()
	return fmt.Errorf("%w: %s needs %d MiB; %d of %d MiB in use (compiled packs %d, instances %d, activities %d MiB): raise --memory-budget or spread revisions over more replicas",
		ErrMemoryBudget, what, mib(n), mib(s.Compiled+s.Instances+s.Host), mib(s.Budget), mib(s.Compiled), mib(s.Instances), mib(s.Host))
}

func mib(n int64) int64 { return (n + 1<<20 - 1) >> 20 }

// relieveInterval is how long a tenant for which relieve found nothing to close waits
// before it looks again: a guest whose growth the budget refuses, in a loop, must not
// walk every revision's pools at each attempt.
const relieveInterval = time.Second

// relieve closes idle instances, least recently used first, one at a time until n bytes
// of kind fit for t, and reports whether they then do. An instance that runs nothing is
// the first thing to go under memory pressure (the next activity starts one), but not
// anyone's: t's own idle instances go first, then those of the tenants that hold more
// than t would, the biggest first, and each only while it still holds more. So a tenant
// filling the replica makes room from itself and from the tenants bigger than itself,
// never by making a smaller tenant's next activity start cold.
func (e *Engine) relieve(t *tenantMemory, kind int, n int64) bool {
	now := time.Now().UnixNano()
	var futile *atomic.Int64
	if t != nil {
		futile = &t.lastFutileRelieve
	} else {
		futile = &e.lastFutileRelieve
	}
	if now-futile.Load() < int64(relieveInterval) {
		return false
	}
	closed := false
	defer func() {
		if closed {
			e.returnMemory()
		}
	}()
	for _, victim := range e.relieveOrder(t, n) {
		for victim == t || t == nil || victim.used.Load() > t.used.Load()+n {
			p, inst := e.takeLeastRecentlyUsed(victim)
			if inst == nil {
				break
			}
			p.discard(inst)
			closed = true
			if e.tryReserveFor(t, kind, n) {
				return true
			}
		}
	}
	if !closed {
		futile.Store(now)
	}
	return false
}

// relieveOrder lists the tenants whose idle instances relieve may close for t, in the
// order it closes them: t first, then every tenant holding more than t would with n
// more, the biggest first (for t nil, what no tenant owns: every tenant, the biggest
// first).
func (e *Engine) relieveOrder(t *tenantMemory, n int64) []*tenantMemory {
	e.mu.Lock()
	defer e.mu.Unlock()
	var after int64
	if t != nil {
		after = t.used.Load() + n
	}
	var order []*tenantMemory
	for _, other := range e.tenants {
		if other != t && other.used.Load() > after {
			order = append(order, other)
		}
	}
	slices.SortFunc(order, func(a, b *tenantMemory) int { return cmp.Compare(b.used.Load(), a.used.Load()) })
	if t != nil {
		order = slices.Insert(order, 0, t)
	}
	return order
}

// takeLeastRecentlyUsed takes tenant t's idle instance that was used the longest ago out
// of its pool, or returns nil when t has none.
func (e *Engine) takeLeastRecentlyUsed(t *tenantMemory) (*packRuntime, *instance) {
	e.mu.Lock()
	var packs []*packRuntime
	for r := range e.revisions {
		if r.memory == t {
			packs = append(packs, r.packs...)
		}
	}
	e.mu.Unlock()
	for range 4 { // the oldest may be taken by an activity meanwhile: look again
		var oldest *packRuntime
		var at time.Time
		for _, p := range packs {
			p.mu.Lock()
			// A pool is a stack: its least recently used instance is at the bottom.
			if len(p.idle) > 0 && (oldest == nil || p.idle[0].lastUsed.Before(at)) {
				oldest, at = p, p.idle[0].lastUsed
			}
			p.mu.Unlock()
		}
		if oldest == nil {
			return nil, nil
		}
		oldest.mu.Lock()
		if len(oldest.idle) > 0 && oldest.idle[0].lastUsed.Equal(at) {
			inst := oldest.idle[0]
			oldest.idle = slices.Delete(oldest.idle, 0, 1)
			oldest.mu.Unlock()
			return oldest, inst
		}
		oldest.mu.Unlock()
	}
	return nil, nil
}
