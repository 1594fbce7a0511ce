package runtime

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	goruntime "runtime"
	"slices"
	"time"

	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/sys"
	"golang.org/x/time/rate"
)

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
	rev     *Revision
	pack    *packRuntime
	flow    string
	session string
	// parked are the session's waits in other flows, which a new wait shares the
	// session's bounds with (see hostSessionWait).
	parked   []Wait
	txn      Txn
	outputs  []Activity
	outBytes int
	wait     *Wait
	faultErr error
	storeErr error
	// hostBytes is what the activity's host calls hold on the host (see charge).
	hostBytes    int
	hostReserved int64
	// cpu is set while the call holds one of its tenant's processor tokens.
	cpu bool
	// start is set for a new instance's start functions: a guest call for the deadline
	// and the processor token, but no activity is in scope, so host calls are refused
	// (nothing would give back what they hold).
	start bool
	// started is when the guest call began, for longRunning.
	started  time.Time
	lastTick time.Time // when the call last rested
}

// longRunning is how long a guest call runs at full speed: past it, the call rests for
// as long as it ran at each budget check, holding its processor token, so it gets at
// most half a processor, and the tenant's long-running guests together at most half its
// share of the processors (a resting call's token is not another guest's turn). An
// activity of a few milliseconds never notices; guests spinning until their deadline
// leave most of the replica to the other tenants.
const longRunning = 10 * time.Millisecond

// yieldCPU gives the call's processor token to the tenant's next waiting guest and waits
// for one again, after resting first when the call has run past longRunning; false
// when ctx ended first (the call then holds none).
func (c *call) yieldCPU(ctx context.Context) bool {
	if !c.cpu {
		return true
	}
	if now := time.Now(); now.Sub(c.started) > longRunning {
		if c.lastTick.IsZero() {
			c.lastTick = now
		}
		rest := time.NewTimer(min(now.Sub(c.lastTick), time.Millisecond))
		select {
		case <-rest.C:
		case <-ctx.Done():
		}
		rest.Stop()
		c.lastTick = time.Now()
	}
	t := c.rev.memory
	t.releaseCPU()
	c.cpu = false
	goruntime.Gosched()
	if t.acquireCPU(ctx) != nil {
		return false
	}
	c.cpu = true
	return true
}

// charge counts n bytes the activity makes the host hold; past the revision's
// MaxHostBytes it ends the call with ErrResourceLimit, so a guest cannot grow the host's
// heap by writing or reading many distinct keys in one activity.
// The bytes count against the replica's memory budget too, until the activity ends
// (releaseHost), and against the tenant's pace (pace).
func (c *call) charge(ctx context.Context, n int) {
	c.pace(ctx, n)
	c.hostBytes += n
	if limit := c.rev.limits.MaxHostBytes; c.hostBytes > limit {
		panic(&hostStop{fmt.Errorf("%w: the activity's host calls held more than %d bytes (state values and keys, waits, secrets)", ErrResourceLimit, limit)})
	}
	if !c.rev.engine.reserve(c.rev.memory, memHost, int64(n)) {
		panic(&hostStop{fmt.Errorf("%w: %w", ErrOverloaded, c.rev.engine.budgetError(c.rev.memory, "an activity's host calls", int64(n)))})
	}
	c.hostReserved += int64(n)
}

// pace holds the call while its tenant's activities make the host hold bytes faster
// than the engine's HostBytesPerSecond: the call rests, its processor token given back,
// until its n bytes are due; when they would be due only past its deadline it ends at
// once as overloaded (try later), so a tenant flooding the host with state values
// slows itself down, not the replica.
func (c *call) pace(ctx context.Context, n int) {
	switch waitDue(ctx, c, c.rev.memory.hostBytes, n) {
	case dueBurst: // more than a burst at once: MaxHostBytes stops such a call first
		panic(&hostStop{fmt.Errorf("%w: one host call of %d bytes, more than the tenant's burst of %d", ErrResourceLimit, n, HostBytesBurst)})
	case dueLate:
		panic(&hostStop{fmt.Errorf("%w: the tenant's activities make the host hold more than %d MiB a second on this replica: try again later",
			ErrOverloaded, int(c.rev.engine.hostBytes)>>20)})
	case dueRested:
		checkDeadline(ctx)
	}
}

// What waitDue did.
const (
	dueNow    = iota // the n units were due at once
	dueRested        // the call rested until they were due (or ctx ended)
	dueBurst         // n is more than the limiter's burst: never due
	dueLate          // due only past ctx's deadline: nothing reserved, no rest
)

// waitDue reserves n units of lim and rests call c (see rest) until they are due: the
// shape shared by the host-bytes pace and the memory-growth pace.
func waitDue(ctx context.Context, c *call, lim *rate.Limiter, n int) int {
	now := time.Now()
	r := lim.ReserveN(now, n)
	if !r.OK() {
		return dueBurst
	}
	d := r.DelayFrom(now)
	if d <= 0 {
		return dueNow
	}
	if deadline, ok := ctx.Deadline(); ok && now.Add(d).After(deadline) {
		r.CancelAt(now)
		return dueLate
	}
	rest(ctx, c, d)
	return dueRested
}

// rest waits d or until ctx ends, with the processor token of call c (nil: none) given
// back meanwhile: a resting guest runs nothing.
func rest(ctx context.Context, c *call, d time.Duration) {
	offCPU(ctx, c, func() {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	})
}

// offCPU runs f, which runs no guest code (a rest, or a host call waiting on I/O), with
// the processor token of call c (nil: none) given back meanwhile, and takes it back
// after, unless ctx ended first (the call then holds none, and must end).
func offCPU(ctx context.Context, c *call, f func()) {
	held := c != nil && c.cpu
	if held {
		c.rev.memory.releaseCPU()
		c.cpu = false
	}
	f()
	if held && c.rev.memory.acquireCPU(ctx) == nil {
		c.cpu = true
	}
}

// releaseHost gives back to the replica's budget what the activity's host calls held.
func (c *call) releaseHost() {
	c.rev.engine.release(c.rev.memory, memHost, c.hostReserved)
	c.hostReserved = 0
}

// Handle runs one activity: it selects the flow and the session's parked wait it
// resumes, if any (see chooseFlow), runs the guest on a pooled instance under the deadline, and commits the
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
	var out []Activity
	err := r.runWithRetry(ctx, func(ctx context.Context) error {
		var err error
		out, err = r.handleOnce(ctx, a, session)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// runWithRetry runs once, a guest run and its state commit, again while it fails with
// ErrConflict, at most MaxReruns more times, under ctx's deadline. Each run is marked
// with its attempt (WithAttempt), so the store lets runs that already lost commit
// first; runs after a conflict wait a jittered, growing moment, so activities that
// conflicted on a hot key do not collide again in lockstep. It is the one retry path
// of activities and provider invokes.
func (r *Revision) runWithRetry(ctx context.Context, once func(ctx context.Context) error) error {
	for attempt := 0; ; attempt++ {
		err := once(WithAttempt(ctx, attempt))
		if !errors.Is(err, ErrConflict) || attempt >= r.limits.MaxReruns {
			return err
		}
		select {
		case <-time.After(time.Duration(mrand.Int64N(int64(time.Millisecond) << min(attempt, 5)))):
		case <-ctx.Done():
			return fmt.Errorf("%w: %s: re-running after conflicts until the deadline", ErrTimeout, r.name)
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

	// The session's live waits; expired ones, and any of a pack this revision does not
	// have, are dropped with this turn's commit.
	var parked []Wait
	stale := false
	if r.session && session != "" {
		ws, err := txn.Waits(session)
		if err != nil {
			return nil, fmt.Errorf("read session waits: %w", err)
		}
		for _, w := range ws {
			if r.now().Before(w.Expires) && r.byID[w.Pack] != nil {
				parked = append(parked, w)
			} else {
				stale = true
			}
		}
	}
	p, flow, resumed, err := r.chooseFlow(a, parked)
	if errors.Is(err, ErrAmbiguousFlow) {
		// A refusal read from state is answered only once the read is validated (the
		// commit writes nothing): a wait cleared meanwhile elsewhere re-runs the
		// activity rather than refuse it for a choice that is no longer there.
		committed = true
		if cerr := txn.Commit(ctx); cerr != nil {
			return nil, cerr
		}
	}
	if err != nil {
		return nil, err
	}
	// others are the session's waits this turn leaves as they are.
	others := slices.DeleteFunc(parked, func(w Wait) bool { return w.Pack == p.id && w.Flow == flow.ID })

	inst, err := p.get(ctx, r)
	if err != nil {
		return nil, err
	}
	c := &call{rev: r, pack: p, flow: flow.ID, session: session, parked: others, txn: txn}
	defer c.releaseHost() // after the commit: the transaction holds the values until then
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
	// The flow's wait is parked again, or cleared when its turn completed; the
	// session's other flows keep theirs.
	if c.wait != nil || resumed != nil || stale {
		if c.wait != nil {
			others = append(others, *c.wait)
		}
		txn.SetWaits(session, others)
	}
	committed = true
	if err := txn.Commit(ctx); err != nil {
		return nil, err
	}
	return c.outputs, nil
}

// invoke copies in into the instance's input buffer and calls fn with it, or calls fn
// without arguments when in is nil (an export without input). Any error means the
// instance must be discarded.
func (r *Revision) invoke(ctx context.Context, inst *instance, c *call, fn api.Function, in []byte) (int32, error) {
	if err := r.memory.acquireCPU(ctx); err != nil {
		return 0, err
	}
	c.cpu, c.started, c.lastTick = true, time.Now(), time.Time{}
	inst.sleeping, inst.call = ctx, c
	defer func() {
		inst.sleeping, inst.call = nil, nil
		if c.cpu {
			r.memory.releaseCPU()
			c.cpu = false
		}
	}()
	var args []uint64
	if in != nil {
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
		args = []uint64{uint64(inst.inPtr), uint64(len(in))}
	}
	ctx, span := startGuestCall(ctx, c, fn)
	ctx = context.WithValue(ctx, callKey{}, c)
	res, err := fn.Call(ctx, args...)
	if err != nil {
		err = classify(ctx, err, r.name)
		endSpan(span, err)
		return 0, err
	}
	endSpan(span, c.outcome(api.DecodeI32(res[0]), "the export"))
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
