package runtime_test

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/packhost/packhost/internal/packs"
	"github.com/packhost/packhost/runtime"
)

// activity1KiB is a message activity whose encoded JSON is 1 KiB, with the routing hints
// a chat channel sends.
func activity1KiB() []byte {
	head := `{"kind":"message","user_id":"user-42","channel_id":"web","conversation_id":"c-1","payload":{"text":"`
	tail := `"}}`
	return []byte(head + strings.Repeat("x", 1024-len(head)-len(tail)) + tail)
}

func parsed(b testing.TB) *runtime.Activity {
	a, err := runtime.ParseActivity(activity1KiB())
	if err != nil {
		b.Fatal(err)
	}
	return a
}

// reportLatency reports the p50 and p99 of d in microseconds.
func reportLatency(b *testing.B, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	b.ReportMetric(float64(d[len(d)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(d[len(d)*99/100].Nanoseconds())/1e3, "p99-µs")
}

// BenchmarkFloor is the bare wazero call of a pack's handler export on an instantiated
// module with its input in memory: what Handle is measured against. The plain cases run
// the pack as built (an unguarded engine); the -guarded ones run it as every tenant's
// pack runs, rewritten by wasmguard, so their ratio is what the deadline guard costs a
// call.
func BenchmarkFloor(b *testing.B) {
	for _, bc := range []struct {
		name, pack string
		unguarded  bool
	}{
		{"echo-1KiB", "rawecho", true}, {"echo-1KiB-guarded", "rawecho", false},
		{"sdk-echo-1KiB", "echo", true}, {"sdk-echo-1KiB-guarded", "echo", false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e, err := runtime.NewEngine(context.Background(), runtime.EngineConfig{Unguarded: bc.unguarded, Logger: logr.Discard()})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close(context.Background())
			rev := load(b, e, nil, bc.pack)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			call, release, err := rev.Floor(ctx, parsed(b))
			if err != nil {
				b.Fatal(err)
			}
			defer release()
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				if err := call(); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			reportLatency(b, lat)
		})
	}
}

// BenchmarkHandle is the whole Handle path for an already-parsed activity: flow choice,
// session key, pool, deadline, input record, guest call, output checks, state commit.
func BenchmarkHandle(b *testing.B) {
	for _, bc := range []struct{ name, pack string }{{"echo-1KiB", "rawecho"}, {"sdk-echo-1KiB", "echo"}, {"counter", "counter"}} {
		b.Run(bc.name, func(b *testing.B) {
			rev := load(b, newEngine(b), nil, bc.pack)
			a := parsed(b)
			ctx := context.Background()
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				if _, err := rev.Handle(ctx, a); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			reportLatency(b, lat)
		})
	}
}

// BenchmarkParseActivity is what the dispatcher pays, once per request, before Handle.
func BenchmarkParseActivity(b *testing.B) {
	b.Run("1KiB", func(b *testing.B) {
		data := activity1KiB()
		b.SetBytes(int64(len(data)))
		for range b.N {
			if _, err := runtime.ParseActivity(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkHandleParallel drives one revision from every core and reports throughput.
func BenchmarkHandleParallel(b *testing.B) {
	for _, bc := range []struct{ name, pack string }{{"echo-1KiB", "rawecho"}, {"sdk-echo-1KiB", "echo"}} {
		b.Run(bc.name, func(b *testing.B) {
			rev := load(b, newEngine(b), nil, bc.pack)
			a := parsed(b)
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := rev.Handle(context.Background(), a); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "activities/s")
		})
	}
}

// BenchmarkGuard measures what the deadline guard (wasmguard's budget checks at function
// entries and loop headers) costs guest code, on a compute-heavy pack: a tight loop and
// recursive calls. guarded ÷ unguarded is the figure.
func BenchmarkGuard(b *testing.B) {
	for _, bc := range []struct {
		name      string
		unguarded bool
	}{{"guarded", false}, {"unguarded", true}} {
		b.Run(bc.name, func(b *testing.B) {
			e, err := runtime.NewEngine(context.Background(), runtime.EngineConfig{Unguarded: bc.unguarded, Logger: logr.Discard()})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close(context.Background())
			rev := load(b, e, nil, "compute")
			a := msg(`{}`)
			b.ResetTimer()
			for range b.N {
				if _, err := rev.Handle(context.Background(), a); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLoad compiles a pack without a compilation cache and from a warm disk cache
// (as after a restart): synthetic modules of 1 and 10 MiB (filler functions the compiler
// mostly optimises away: they measure decoding and validation), the SDK echo pack, and a
// realistic 10 MiB Go-built pack (examples/packs/bench/large). It reports the compiled
// code's size and how much the process keeps, per wasm byte.
func BenchmarkLoad(b *testing.B) {
	modules := []struct {
		name   string
		module []byte
	}{{"1MiB", packs.Synthetic(1 << 20)}, {"10MiB", packs.Synthetic(10 << 20)}, {"sdk-echo", pack(b, "echo")}, {"go-10MiB", pack(b, "bench/large")}}
	for _, m := range modules {
		module := m.module
		for _, mode := range []string{"nocache", "nocache-unguarded", "diskcache"} {
			b.Run(m.name+"/"+mode, func(b *testing.B) {
				dir := ""
				if mode == "diskcache" {
					dir = b.TempDir()
					warm(b, dir, module)
				}
				// nocache-unguarded compiles the module as it is: nocache over it is what
				// the guard's rewrite adds to a load.
				unguarded := mode == "nocache-unguarded"
				ctx := context.Background()
				growth := 0.0
				b.ResetTimer()
				for range b.N {
					// A fresh engine each time: nothing in memory, as after a restart.
					b.StopTimer()
					e, err := runtime.NewEngine(ctx, runtime.EngineConfig{CacheDir: dir, Unguarded: unguarded})
					if err != nil {
						b.Fatal(err)
					}
					debug.FreeOSMemory()
					rss0 := rss()
					b.StartTimer()
					p, err := e.Compile(ctx, module)
					if err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					debug.FreeOSMemory() // count what the compiled pack keeps, not compile garbage
					growth = max(growth, float64(rss()-rss0)/float64(len(module)))
					e.Release(ctx, p)
					_ = e.Close(ctx)
					b.StartTimer()
				}
				b.ReportMetric(growth, "rss-growth/wasm-bytes")
				if dir != "" {
					// The disk cache holds exactly the compiled code: its size over the
					// module's is what compiling costs, before wazero's own bookkeeping of
					// the decoded module (which rss-growth adds).
					b.ReportMetric(float64(dirSize(dir))/float64(len(module)), "compiled/wasm-bytes")
				}
				b.ReportMetric(float64(len(module))/(1<<20), "wasm-MiB")
			})
		}
	}
}

func warm(b *testing.B, dir string, module []byte) {
	ctx := context.Background()
	e, err := runtime.NewEngine(ctx, runtime.EngineConfig{CacheDir: dir})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close(ctx)
	p, err := e.Compile(ctx, module)
	if err != nil {
		b.Fatal(err)
	}
	e.Release(ctx, p)
}

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// rss is the process's resident set in bytes, from /proc/self/statm.
func rss() int64 {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// BenchmarkConcurrentLoad loads one digest from many goroutines: it compiles once.
func BenchmarkConcurrentLoad(b *testing.B) {
	module := packs.Synthetic(1 << 20)
	ctx := context.Background()
	for range b.N {
		e, err := runtime.NewEngine(ctx, runtime.EngineConfig{})
		if err != nil {
			b.Fatal(err)
		}
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p, err := e.Compile(ctx, module)
				if err != nil {
					b.Error(err)
				}
				_ = p
			}()
		}
		wg.Wait()
		if e.Packs() != 1 {
			b.Fatalf("8 concurrent loads of one digest left %d compiled packs", e.Packs())
		}
		_ = e.Close(ctx)
	}
}

// BenchmarkIdleRevisions loads 200 revisions of one digest (the SDK echo pack), lets them
// go idle, and reports what each idle revision keeps of the process's RSS (the compiled
// code is shared and counted before), and the p50 and p99 of the first activity to an
// idle revision: instantiate, _initialize and the handler.
func BenchmarkIdleRevisions(b *testing.B) {
	const n = 200
	ctx := context.Background()
	for range b.N {
		e, err := runtime.NewEngine(ctx, runtime.EngineConfig{Logger: logr.Discard()})
		if err != nil {
			b.Fatal(err)
		}
		wasm := pack(b, "echo")
		shared, err := e.Compile(ctx, wasm) // the compiled code, kept by this reference
		if err != nil {
			b.Fatal(err)
		}
		debug.FreeOSMemory()
		rss0 := rss()
		revs := make([]*runtime.Revision, n)
		for i := range revs {
			p, err := e.Compile(ctx, wasm)
			if err != nil {
				b.Fatal(err)
			}
			revs[i], err = e.NewRevision(ctx, runtime.RevisionConfig{Name: "ns/rev-" + strconv.Itoa(i), Env: "prod", Tenant: "acme",
				Packs: []*runtime.Pack{p}, Policy: allowAll, Logger: logr.Discard(), Limits: runtime.Limits{IdleTimeout: 500 * time.Millisecond}})
			if err != nil {
				b.Fatal(err)
			}
		}
		loaded := rss()
		for _, r := range revs {
			for r.Instances()["echo"] != 0 {
				time.Sleep(50 * time.Millisecond)
			}
		}
		debug.FreeOSMemory()
		idle := rss()
		lat := make([]time.Duration, 0, n)
		for _, r := range revs {
			start := time.Now()
			if _, err := r.Handle(ctx, msg(`{"n":1}`)); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(start))
		}
		slices.Sort(lat)
		b.ReportMetric(float64(loaded-rss0)/n/(1<<20), "loaded-MiB/revision")
		b.ReportMetric(float64(idle-rss0)/n/(1<<20), "idle-MiB/revision")
		b.ReportMetric(float64(lat[n/2].Microseconds())/1e3, "first-activity-p50-ms")
		b.ReportMetric(float64(lat[n*99/100].Microseconds())/1e3, "first-activity-p99-ms")
		for _, r := range revs {
			r.Close(ctx)
		}
		e.Release(ctx, shared)
		_ = e.Close(ctx)
	}
}
