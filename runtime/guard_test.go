package runtime_test

import (
	"context"
	"errors"
	"fmt"
	goruntime "runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/packhost/packhost/runtime"
)

// TestGuardStopsRunaways: guests that would hold an instance and a core past their
// deadline are stopped within the deadline + 10 ms with a typed error, and their instance
// is discarded. The best of three tries is judged, so one descheduling on a busy machine
// does not decide.
func TestGuardStopsRunaways(t *testing.T) {
	const timeout, slack = 50 * time.Millisecond, 10 * time.Millisecond
	e := newEngine(t)
	for _, tc := range []struct {
		pack string
		want error
	}{
		{"hostile/recursion", runtime.ErrTimeout},            // loop-free: no loop header ever runs
		{"hostile/loop", runtime.ErrTimeout},                 // a Go-built tight loop
		{"hostile/fill-recursion", runtime.ErrTimeout},       // memory.fill of 16 MiB from recursion
		{"hostile/deep-recursion", runtime.ErrResourceLimit}, // the call depth, before the deadline
	} {
		t.Run(tc.pack, func(t *testing.T) {
			rev := load(t, e, []revOpt{func(c *runtime.RevisionConfig) {
				c.Limits = runtime.Limits{Timeout: timeout, MemoryPages: 1024}
			}}, tc.pack)
			id := strings.TrimPrefix(tc.pack, "hostile/")
			best := time.Hour
			for range 3 {
				start := time.Now()
				_, err := rev.Handle(context.Background(), msg(`{}`))
				took := time.Since(start)
				if !errors.Is(err, tc.want) {
					t.Fatalf("got %v, want %v", err, tc.want)
				}
				if n := rev.Instances()[id]; n != 0 {
					t.Fatalf("%d instances left after the failure, want the failed one discarded", n)
				}
				best = min(best, took)
			}
			if tc.want == runtime.ErrTimeout && best > timeout+slack {
				t.Fatalf("the best of three runs ended after %v, past the deadline %v + %v", best, timeout, slack)
			}
		})
	}
}

// TestGuardBoundsTables: a table grown by 2^24 entries per activity stays at the engine's
// limit (table.grow fails inside the guest), and a table declared past it is refused at
// load.
func TestGuardBoundsTables(t *testing.T) {
	e := newEngine(t)
	rev := load(t, e, nil, "hostile/table-bomb")
	heap := func() uint64 {
		goruntime.GC()
		debug.FreeOSMemory()
		var ms goruntime.MemStats
		goruntime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	for range 3 {
		if _, err := rev.Handle(context.Background(), msg(`{}`)); err != nil {
			t.Fatalf("an activity whose table.grow failed inside the guest: %v", err)
		}
	}
	// Unguarded, each activity kept 128 MiB more.
	if grew := int64(heap()) - int64(before); grew > 16<<20 {
		t.Fatalf("three table bombs grew the host heap by %d MiB", grew>>20)
	}
	if _, err := tryLoad(e, nil, "hostile/big-table"); !errors.Is(err, runtime.ErrInvalidPack) || !strings.Contains(err.Error(), "elements") {
		t.Fatalf("a table declared with 2^27 elements: %v, want ErrInvalidPack naming the limit", err)
	}
}

// TestContainment: a guest that sleeps in WASI, floods the host with state writes, or
// runs on while its revision unloads hurts only its own activity.
func TestContainment(t *testing.T) {
	ctx := context.Background()
	e := newEngine(t)
	t.Run("a WASI sleep wakes at the deadline", func(t *testing.T) {
		const timeout = 200 * time.Millisecond
		rev := load(t, e, []revOpt{func(c *runtime.RevisionConfig) { c.Limits = runtime.Limits{Timeout: timeout} }}, "hostile/sleep")
		start := time.Now()
		_, err := rev.Handle(ctx, msg(`{}`))
		if took := time.Since(start); !errors.Is(err, runtime.ErrTimeout) || took > timeout+100*time.Millisecond {
			t.Fatalf("an hour's sleep under a %v deadline: %v after %v", timeout, err, took)
		}
		out, err := rev.Handle(ctx, msg(`{"ok":true}`))
		if err != nil || len(out) != 1 {
			t.Fatalf("the next activity: %v %v", out, err)
		}
	})
	t.Run("state writes past the host budget", func(t *testing.T) {
		store := runtime.NewMemStore()
		rev := load(t, e, []revOpt{func(c *runtime.RevisionConfig) { c.Store = store }}, "hostile/flood")
		_, err := rev.Handle(ctx, msg(`{}`))
		if !errors.Is(err, runtime.ErrResourceLimit) {
			t.Fatalf("800 values of 256 KiB in one activity: %v, want ErrResourceLimit", err)
		}
		if store.Commits != 0 {
			t.Fatalf("the flooding activity committed")
		}
		if n := rev.Instances()["flood"]; n != 0 {
			t.Fatalf("%d instances after the flood, want it discarded", n)
		}
		if _, err := rev.Handle(ctx, msg(`{"ok":true}`)); err != nil {
			t.Fatalf("the next activity: %v", err)
		}
	})
	t.Run("unloading waits a bounded grace for a running guest", func(t *testing.T) {
		rev, err := tryLoad(e, []revOpt{func(c *runtime.RevisionConfig) { c.Limits = runtime.Limits{Timeout: time.Minute} }}, "hostile/loop")
		if err != nil {
			t.Fatal(err)
		}
		running := make(chan error, 1)
		go func() { _, err := rev.Handle(ctx, msg(`{}`)); running <- err }()
		waitForLoad(t, rev, 1, 0)
		start := time.Now()
		rev.Close(ctx)
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("Close waited %v for a guest with a minute's deadline", took)
		}
		select {
		case err := <-running:
			t.Fatalf("the looping guest ended before its deadline: %v", err)
		default: // abandoned: it ends at its deadline and closes its instance then
		}
	})
	t.Run("an idle revision keeps no instance", func(t *testing.T) {
		rev := load(t, e, []revOpt{func(c *runtime.RevisionConfig) { c.Limits = runtime.Limits{IdleTimeout: 100 * time.Millisecond} }}, "echo")
		if _, err := rev.Handle(ctx, msg(`{"n":1}`)); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for rev.Instances()["echo"] != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%d instances still open after 5 s idle with a 100 ms idle timeout", rev.Instances()["echo"])
			}
			time.Sleep(20 * time.Millisecond)
		}
		out, err := rev.Handle(ctx, msg(`{"n":2}`))
		if err != nil || string(out[0].Payload) != `{"n":2}` {
			t.Fatalf("the first activity after idling: %v %v", out, err)
		}
	})
}

// TestHostBytesArePacedPerTenant: a tenant whose activities make the host hold bytes
// faster than HostBytesPerSecond waits, and past its deadline is answered overloaded;
// another tenant's bytes are its own.
func TestHostBytesArePacedPerTenant(t *testing.T) {
	ctx := context.Background()
	e, err := runtime.NewEngine(ctx, runtime.EngineConfig{Logger: logr.Discard(), CacheDir: cacheDir, HostBytesPerSecond: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close(ctx) })
	tenant := func(name string) revOpt {
		return func(c *runtime.RevisionConfig) {
			c.Name, c.Tenant, c.Store = name+"/flood", name, runtime.NewMemStore()
			c.Limits = runtime.Limits{Timeout: 500 * time.Millisecond}
		}
	}
	attacker := load(t, e, []revOpt{tenant("evil")}, "hostile/flood")
	// Two floods of 8 MiB (each stopped by the activity's own limit) use up the burst.
	for i := range 2 {
		if _, err := attacker.Handle(ctx, msg(`{}`)); !errors.Is(err, runtime.ErrResourceLimit) {
			t.Fatalf("flood %d within the tenant's burst: %v, want ErrResourceLimit", i, err)
		}
	}
	// The third would take 8 s at 1 MiB/s: it rests while the deadline allows, then is
	// answered overloaded.
	if _, err := attacker.Handle(ctx, msg(`{}`)); !errors.Is(err, runtime.ErrOverloaded) {
		t.Fatalf("a flood past the tenant's pace: %v, want ErrOverloaded", err)
	}
	// Another tenant's 8 MiB come from its own burst: stopped by the activity's limit,
	// not by the attacker's pace.
	victim := load(t, e, []revOpt{tenant("good")}, "hostile/flood")
	if _, err := victim.Handle(ctx, msg(`{}`)); !errors.Is(err, runtime.ErrResourceLimit) {
		t.Fatalf("another tenant's 8 MiB while the attacker is paced: %v, want ErrResourceLimit", err)
	}
	if out, err := victim.Handle(ctx, msg(`{"ok":true}`)); err != nil || len(out) != 1 {
		t.Fatalf("another tenant's activity while the attacker is paced: %v %v", out, err)
	}
}

// TestGrowthIsPacedPerTenant: a tenant's instances grow their memory no faster than
// GrowthPerSecond (after a burst of two seconds' worth): a guest growing without end
// gets past the burst only at the pace until its deadline, and traps there; another
// tenant's instances grow from their own burst.
func TestGrowthIsPacedPerTenant(t *testing.T) {
	ctx := context.Background()
	const pace = 8 << 20
	e, err := runtime.NewEngine(ctx, runtime.EngineConfig{Logger: logr.Discard(), CacheDir: cacheDir, GrowthPerSecond: pace})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close(ctx) })
	const timeout = time.Second
	attacker := load(t, e, []revOpt{func(c *runtime.RevisionConfig) {
		c.Name, c.Tenant = "evil/grow", "evil"
		c.Limits = runtime.Limits{MemoryPages: 4096, Timeout: timeout} // up to 256 MiB
	}}, "hostile/grow")
	started := e.MemoryStats().Instances // the warm instance, grown by its start unpaced
	done := make(chan error, 1)
	go func() { _, err := attacker.Handle(ctx, msg(`{}`)); done <- err }()
	var peak int64
	for finished := false; !finished; {
		select {
		case err := <-done:
			if !errors.Is(err, runtime.ErrTrap) {
				t.Fatalf("an instance growing without end past its pace: %v, want a trap", err)
			}
			finished = true
		case <-time.After(time.Millisecond):
			peak = max(peak, e.MemoryStats().Instances)
		}
	}
	// The burst (16 MiB), and the pace over the deadline (8 MiB), beyond the start.
	if grown, most := peak-started, int64(2*pace+pace*timeout/time.Second); grown > most {
		t.Fatalf("the attacker's instance grew by %d MiB during its activity, want at most %d MiB at its pace", grown>>20, most>>20)
	}
	victim := load(t, e, []revOpt{func(c *runtime.RevisionConfig) { c.Name, c.Tenant = "good/echo", "good" }}, "echo")
	if out, err := victim.Handle(ctx, msg(`{"n":1}`)); err != nil || len(out) != 1 {
		t.Fatalf("another tenant's activity after the attacker was paced: %v %v", out, err)
	}
}

// TestStartIsAGuestCall: a pack's start function is the tenant's code, run each time an
// instance is made. It runs as a guest call does: it ends at the caller's deadline (not
// after the whole activity timeout, holding the caller), and it holds one of the
// tenant's processor tokens, so a tenant's cold starts cannot take every core.
func TestStartIsAGuestCall(t *testing.T) {
	e := newEngine(t)
	loadStarted := time.Now()
	rev := load(t, e, []revOpt{func(c *runtime.RevisionConfig) {
		c.Limits = runtime.Limits{Timeout: 30 * time.Second, IdleTimeout: 100 * time.Millisecond, MemoryPages: 1024}
	}}, "hostile/slow-start")
	startTook := time.Since(loadStarted) // mostly the warm instance's start: fib(36)
	empty := func() {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); rev.Instances()["slow-start"] > 0; {
			if time.Now().After(deadline) {
				t.Fatal("the idle instance was not closed")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	t.Run("it ends at the caller's deadline", func(t *testing.T) {
		empty()
		const deadline = 20 * time.Millisecond
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		began := time.Now()
		_, err := rev.Handle(ctx, msg(`{}`))
		took := time.Since(began)
		if !errors.Is(err, runtime.ErrTimeout) || errors.Is(err, runtime.ErrInvalidPack) {
			t.Fatalf("an activity whose deadline passed in the start function: %v, want ErrTimeout, not an invalid pack", err)
		}
		if took > startTook/2 {
			t.Fatalf("an activity with a %s deadline waited %s for a start function that takes %s", deadline, took, startTook)
		}
	})
	t.Run("a revision whose tenant's processors stay busy is not called invalid", func(t *testing.T) {
		release := e.HoldTenantCPU("busy/acme")
		defer release()
		_, err := tryLoad(e, []revOpt{func(c *runtime.RevisionConfig) {
			c.Name, c.Limits = "busy/rev", runtime.Limits{Timeout: 100 * time.Millisecond}
		}}, "echo")
		if !errors.Is(err, runtime.ErrOverloaded) || errors.Is(err, runtime.ErrInvalidPack) {
			t.Fatalf("a first instance that waited for the tenant's busy processors: %v, want overload (tried again), not an invalid pack", err)
		}
	})
	t.Run("it holds a processor token of the tenant", func(t *testing.T) {
		empty()
		done := make(chan error, 1)
		go func() { _, err := rev.Handle(context.Background(), msg(`{}`)); done <- err }()
		seen := false
		for !seen {
			select {
			case err := <-done:
				t.Fatalf("the activity (%v) ended before a token was seen held during the start", err)
			default:
			}
			// A token held, then still no instance: it was held while the start ran.
			seen = rev.CPUTokensHeld() > 0 && rev.Instances()["slow-start"] == 0
		}
		if err := <-done; err != nil {
			t.Fatalf("the activity after a slow start: %v", err)
		}
	})
}

// TestMemoryBudget: the replica's budget refuses what does not fit with the figures, as
// a load failure or as overload, never as a crash; idle instances make room first; and
// everything is given back.
func TestMemoryBudget(t *testing.T) {
	ctx := context.Background()
	budgeted := func(t *testing.T, budget int64) *runtime.Engine {
		e, err := runtime.NewEngine(ctx, runtime.EngineConfig{Logger: logr.Discard(), CacheDir: cacheDir, MemoryBudget: budget})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = e.Close(ctx) })
		return e
	}
	t.Run("a pack that cannot fit fails to load", func(t *testing.T) {
		e := budgeted(t, 8<<20)
		_, err := e.Compile(ctx, pack(t, "echo"))
		if !errors.Is(err, runtime.ErrMemoryBudget) || !errors.Is(err, runtime.ErrInvalidPack) || !strings.Contains(err.Error(), "MiB") {
			t.Fatalf("compiling a 3 MiB pack under an 8 MiB budget: %v, want ErrMemoryBudget with the figures", err)
		}
		if s := e.MemoryStats(); s.Compiled != 0 {
			t.Fatalf("a refused pack left %d bytes accounted", s.Compiled)
		}
	})
	t.Run("an instance that cannot fit is overload", func(t *testing.T) {
		e := budgeted(t, 20<<20) // the compiled echo pack's 19 MiB estimate fits, an instance not
		_, err := tryLoad(e, nil, "echo")
		if !errors.Is(err, runtime.ErrOverloaded) || !errors.Is(err, runtime.ErrMemoryBudget) {
			t.Fatalf("a revision whose first instance does not fit: %v, want ErrOverloaded and ErrMemoryBudget", err)
		}
	})
	t.Run("idle instances make room, and all is given back", func(t *testing.T) {
		// What both revisions need with an instance each, measured without a budget;
		// the budget is a little less, so the second fits only once the first's idle
		// instance is gone.
		probe := budgeted(t, 0)
		pa := load(t, probe, nil, "echo")
		if _, err := pa.Handle(ctx, msg(`{"n":1}`)); err != nil {
			t.Fatal(err)
		}
		echo := probe.MemoryStats()
		load(t, probe, nil, "rawecho")
		// Both compiled packs and the echo instance fit, with 64 KiB to spare: less than
		// any instance needs (512 KiB and a page at least).
		e := budgeted(t, probe.MemoryStats().Compiled+echo.Instances+64<<10)
		a := load(t, e, nil, "echo")
		if _, err := a.Handle(ctx, msg(`{"n":1}`)); err != nil {
			t.Fatal(err)
		}
		before := e.MemoryStats()
		if before.Instances == 0 || before.Compiled == 0 {
			t.Fatalf("nothing accounted: %+v", before)
		}
		b, err := tryLoad(e, nil, "rawecho") // needs room: the idle echo instances go
		if err != nil {
			t.Fatalf("a second revision under pressure: %v (accounted %+v)", err, e.MemoryStats())
		}
		if n := a.Instances()["echo"]; n != 0 {
			t.Fatalf("%d idle instances of the first revision kept under pressure", n)
		}
		// Both revisions are one tenant's: the first revision's next instance makes room
		// by closing the second's idle one.
		if _, err := a.Handle(ctx, msg(`{"n":2}`)); err != nil {
			t.Fatalf("the first revision after giving its instances up: %v", err)
		}
		a.Close(ctx)
		b.Close(ctx)
		if s := e.MemoryStats(); s.Instances != 0 || s.Host != 0 {
			t.Fatalf("after both revisions unloaded: %+v, want no instance or host bytes accounted", s)
		}
	})
	tenant := func(name string) revOpt {
		return func(c *runtime.RevisionConfig) { c.Name, c.Tenant = name+"/"+name, name }
	}
	t.Run("room comes from the least recently used idle instances of bigger tenants only", func(t *testing.T) {
		// The same steps on an engine without a budget measure what they hold.
		steps := func(e *runtime.Engine) (big []*runtime.Revision) {
			for i := range 3 {
				r := load(t, e, []revOpt{tenant("big"), func(c *runtime.RevisionConfig) { c.Name = fmt.Sprintf("big/r%d", i) }}, "echo")
				big = append(big, r)
			}
			for _, i := range []int{1, 2, 0} { // r1 is now the least recently used
				if _, err := big[i].Handle(ctx, msg(`{"n":1}`)); err != nil {
					t.Fatal(err)
				}
			}
			return big
		}
		probe := budgeted(t, 0)
		steps(probe)
		full := probe.MemoryStats()
		single := budgeted(t, 0)
		load(t, single, nil, "echo")
		warm := single.MemoryStats().Instances
		// Room for the big tenant's three instances and half of another one.
		e := budgeted(t, full.Compiled+full.Instances+warm/2)
		big := steps(e)
		small, err := tryLoad(e, []revOpt{tenant("small")}, "echo")
		if err != nil {
			t.Fatalf("a small tenant's first instance, with a bigger tenant's idle instances to close: %v", err)
		}
		t.Cleanup(func() { small.Close(ctx) })
		for i, want := range []int{1, 0, 1} {
			if n := big[i].Instances()["echo"]; n != want {
				t.Fatalf("the big tenant's revision r%d keeps %d instances, want %d: only its least recently used one makes room", i, n, want)
			}
		}
		// The big tenant wants r1's instance back: its own idle instances go first, the
		// least recently used (r2's), before any other tenant's.
		if _, err := big[1].Handle(ctx, msg(`{"n":2}`)); err != nil {
			t.Fatalf("the big tenant, with its own idle instances to close: %v", err)
		}
		for i, want := range []int{1, 1, 0} {
			if n := big[i].Instances()["echo"]; n != want {
				t.Fatalf("after the big tenant made room for itself, r%d keeps %d instances, want %d", i, n, want)
			}
		}
		if n := small.Instances()["echo"]; n != 1 {
			t.Fatalf("the small tenant's idle instance was closed for a bigger tenant: %d left", n)
		}
	})
	t.Run("a tenant growing into a full replica closes no smaller tenant's instance", func(t *testing.T) {
		growing := []revOpt{tenant("evil"), func(c *runtime.RevisionConfig) {
			c.Limits = runtime.Limits{MemoryPages: 16384, Timeout: 20 * time.Second}
		}}
		probe := budgeted(t, 0)
		load(t, probe, []revOpt{tenant("good")}, "echo")
		load(t, probe, growing, "hostile/grow")
		loaded := probe.MemoryStats().Compiled + probe.MemoryStats().Instances
		// With both loaded, a third of the budget is left: less than the attacker's share
		// (half of it), so the attacker grows until the replica is full, and traps there.
		e := budgeted(t, loaded*3/2)
		victim := load(t, e, []revOpt{tenant("good")}, "echo")
		attacker := load(t, e, growing, "hostile/grow")
		if _, err := attacker.Handle(ctx, msg(`{}`)); !errors.Is(err, runtime.ErrTrap) {
			t.Fatalf("an instance growing into a full replica: %v, want a trap", err)
		}
		if n := victim.Instances()["echo"]; n != 1 {
			t.Fatalf("the victim's idle instance was closed to make room for a bigger tenant: %d left", n)
		}
		if out, err := victim.Handle(ctx, msg(`{"n":1}`)); err != nil || len(out) != 1 {
			t.Fatalf("the victim's activity after the attack: %v %v", out, err)
		}
	})
	t.Run("one tenant holds at most its share", func(t *testing.T) {
		e := budgeted(t, 256<<20)
		attacker := load(t, e, []revOpt{func(c *runtime.RevisionConfig) {
			c.Name, c.Tenant = "evil/grow", "evil"
			c.Limits = runtime.Limits{MemoryPages: 16384, Timeout: 20 * time.Second, MaxConcurrency: 4}
		}}, "hostile/grow")
		// Four instances growing without end at once: together they stop at the
		// tenant's half of the budget, each with a trap inside its guest.
		done := make(chan error, 4)
		for range 4 {
			go func() { _, err := attacker.Handle(ctx, msg(`{}`)); done <- err }()
		}
		var peak int64
		for finished := 0; finished < 4; {
			select {
			case err := <-done:
				if !errors.Is(err, runtime.ErrTrap) {
					t.Fatalf("an attacker's instance growing past the tenant's share: %v, want a trap", err)
				}
				finished++
			case <-time.After(time.Millisecond):
				peak = max(peak, e.MemoryStats().Instances)
			}
		}
		if peak > 128<<20 || peak < 64<<20 {
			t.Fatalf("the attacker's instances peaked at %d MiB, want up to its share of 128 MiB", peak>>20)
		}
		victim := load(t, e, []revOpt{func(c *runtime.RevisionConfig) { c.Name, c.Tenant = "good/echo", "good" }}, "echo")
		if out, err := victim.Handle(ctx, msg(`{"n":1}`)); err != nil || len(out) != 1 {
			t.Fatalf("another tenant's activity after the attack: %v %v", out, err)
		}
	})
}

// TestStartFunctionHasNothingInScope: a start function runs as a guest call (the caller's
// deadline, a processor token), but no activity is in scope: host calls made from it are
// refused, as before it was one. A pack whose init reads a secret 64 times gets nothing,
// and the host keeps nothing for it: each read would be charged to the tenant's account
// and the replica's budget with no activity to give it back, at every instance started,
// so the account would never be empty (nor forgotten) and the budget would fill.
func TestStartFunctionHasNothingInScope(t *testing.T) {
	e := newEngine(t)
	ctx := context.Background()
	rev, err := tryLoad(e, []revOpt{func(c *runtime.RevisionConfig) {
		c.Policy.Secrets = []string{"signing-key"}
		c.Secrets = secrets{"signing-key": strings.Repeat("k", 4096)}
	}}, "hostile/init-host")
	if err != nil {
		t.Fatal(err)
	}
	out, err := rev.Handle(ctx, msg(`1`))
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || !strings.Contains(string(out[0].Payload), `"secret_reads":0`) {
		t.Errorf("a start function read a secret: %.80s…", out[0].Payload)
	}
	if h := e.MemoryStats().Host; h != 0 {
		t.Errorf("with no activity running the budget counts %d bytes of activities' host calls", h)
	}
	rev.Close(ctx)
	if n := e.TenantAccounts(); n != 0 {
		t.Errorf("%d tenant accounts kept after the tenant's only revision was closed", n)
	}
}
