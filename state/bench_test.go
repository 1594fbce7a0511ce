package state_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"

	"github.com/packhost/packhost/internal/testenv"
	"github.com/packhost/packhost/runtime"
	"github.com/packhost/packhost/state"
)

// BenchmarkCommit runs activities concurrently against the envtest API server, each
// reading and writing one key of its own in a one-shard namespace, and reports API
// updates and bytes per activity, throughput and latency.
func BenchmarkCommit(b *testing.B) {
	testenv.Require(b, env)
	for _, c := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("c%d", c), func(b *testing.B) {
			s := newStore(b, state.Options{})
			ns := ensure(b, s, state.Spec{Namespace: env.Namespace(b, "bench"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: 1})
			u0, bytes0 := s.Updates()
			lat := make([][]time.Duration, c)
			elapsed := runWorkers(b, c, func(w, _ int) bool {
				t0 := time.Now()
				if err := bumpOnce(context.Background(), ns, runtime.StateKey{Pack: "p", Name: "k" + strconv.Itoa(w)}); err != nil {
					b.Error(err)
					return false
				}
				lat[w] = append(lat[w], time.Since(t0))
				return true
			})
			u1, bytes1 := s.Updates()
			all := slices.Concat(lat...)
			slices.Sort(all)
			b.ReportMetric(float64(u1-u0)/float64(b.N), "updates/activity")
			b.ReportMetric(float64(bytes1-bytes0)/float64(b.N), "bytes/activity")
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "activities/s")
			if len(all) > 0 {
				b.ReportMetric(float64(all[len(all)/2].Microseconds())/1e3, "p50-ms")
				b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1e3, "p99-ms")
			}
		})
	}
}

// BenchmarkRawUpdate is the floor: a bare loop of ConfigMap updates from one writer, the
// ConfigMap the size of BenchmarkCommit/c64's shard (64 entries, about 5 KiB).
func BenchmarkRawUpdate(b *testing.B) {
	testenv.Require(b, env)
	ctx := context.Background()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "raw", Namespace: env.Namespace(b, "raw")}, BinaryData: map[string][]byte{}}
	for i := range 64 {
		cm.BinaryData[fmt.Sprintf("v.%040d", i)] = []byte(strings.Repeat("x", 20))
	}
	if err := env.Client.Create(ctx, cm); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		cm.BinaryData["v.0000000000000000000000000000000000000000"] = []byte(strconv.Itoa(i))
		if err := env.Client.Update(ctx, cm); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "updates/s")
}

// BenchmarkCommitFilled measures what a commit costs as its shard fills: one shard
// pre-filled with 0, 1,000 or 10,000 entries of about 100 bytes (key, pack, name and
// value), then activities at concurrency 1 and 16 each reading and writing a key of
// their own. It reports activities/s and the API server's CPU time per activity (read
// from /proc for the kube-apiserver this test process started; envtest runs it as a
// child), all cases in one run:
//
//	go test ./state -run '^$' -bench CommitFilled -benchtime 200x
func BenchmarkCommitFilled(b *testing.B) {
	testenv.Require(b, env)
	pid := apiServerPIDOf(b)
	// empty is what the empty shard measured at each concurrency, which the filled
	// cases are reported against (same run, same machine load).
	type figures struct{ rate, cpu float64 }
	empty := map[int]figures{}
	for _, entries := range []int{0, 1000, 10000} {
		for _, c := range []int{1, 16} {
			b.Run(fmt.Sprintf("entries=%d/c%d", entries, c), func(b *testing.B) {
				s := newStore(b, state.Options{ShardBudget: 1 << 20})
				ns := ensure(b, s, state.Spec{Namespace: env.Namespace(b, "filled"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: 1})
				fill(b, ns, entries)
				cpu0 := cpuTime(b, pid)
				elapsed := runWorkers(b, c, func(w, _ int) bool {
					key := runtime.StateKey{Pack: "p", Name: "worker-" + strconv.Itoa(w)}
					for attempt := 0; ; attempt++ {
						err := bumpOnce(runtime.WithAttempt(context.Background(), attempt), ns, key)
						if err == nil {
							return true
						}
						if !errors.Is(err, runtime.ErrConflict) || attempt > 100 {
							b.Error(err)
							return false
						}
					}
				})
				cpu := cpuTime(b, pid) - cpu0
				got := figures{rate: float64(b.N) / elapsed.Seconds(), cpu: float64(cpu.Microseconds()) / 1e3 / float64(b.N)}
				b.ReportMetric(got.rate, "activities/s")
				b.ReportMetric(got.cpu, "apiserver-cpu-ms/activity")
				if entries == 0 {
					empty[c] = got
				} else if e, ok := empty[c]; ok && e.rate > 0 && e.cpu > 0 {
					// The goal: at 1,000 entries, rate ≥ 0.6x and CPU ≤ 3x the empty shard's.
					b.ReportMetric(got.rate/e.rate, "rate-x-empty")
					b.ReportMetric(got.cpu/e.cpu, "cpu-x-empty")
				}
			})
		}
	}
}

// fill writes n entries of about 100 bytes into ns, 500 per commit.
func fill(b *testing.B, ns runtime.Store, n int) {
	b.Helper()
	value := []byte(strings.Repeat("x", 40))
	ctx := context.Background()
	for i := 0; i < n; {
		txn, _ := ns.Begin(ctx)
		for j := 0; j < 500 && i < n; j, i = j+1, i+1 {
			_ = txn.Put(runtime.StateKey{Pack: "p", Name: fmt.Sprintf("k%05d", i)}, value)
		}
		if err := txn.Commit(ctx); err != nil {
			b.Fatalf("fill to %d entries: %v", n, err)
		}
	}
}

// apiServerPIDOf finds the kube-apiserver this test process started.
func apiServerPIDOf(tb testing.TB) int {
	self := strconv.Itoa(os.Getpid())
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		s := string(b)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open || s[open+1:end] != "kube-apiserver" {
			continue
		}
		if fields := strings.Fields(s[end+1:]); len(fields) > 1 && fields[1] == self {
			pid, _ := strconv.Atoi(strings.Fields(s)[0])
			return pid
		}
	}
	tb.Skip("no kube-apiserver started by this process")
	return 0
}

// cpuTime is the user and system CPU time process pid has used.
func cpuTime(tb testing.TB, pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	// After the command: state(0) ppid(1) ... utime(11) stime(12), in clock ticks.
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const ticksPerSecond = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticksPerSecond
}

// BenchmarkCommitShards is BenchmarkCommit's c16 load on a namespace of 1, 8 and 64
// shards (each activity one key of its own; keys spread over the shards, so an activity
// touches one shard): what more shards cost to make (ensure-ms, once per Revision) and
// per activity.
func BenchmarkCommitShards(b *testing.B) {
	testenv.Require(b, env)
	const c = 16
	for _, shards := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("shards=%d/c%d", shards, c), func(b *testing.B) {
			s := newStore(b, state.Options{})
			began := time.Now()
			ns := ensure(b, s, state.Spec{Namespace: env.Namespace(b, "shards"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: shards})
			ensured := time.Since(began)
			u0, _ := s.Updates()
			elapsed := runWorkers(b, c, func(w, i int) bool {
				key := runtime.StateKey{Pack: "p", Name: fmt.Sprintf("k%d-%d", w, i%32)}
				if err := bumpOnce(context.Background(), ns, key); err != nil && !errors.Is(err, runtime.ErrConflict) {
					b.Error(err)
					return false
				}
				return true
			})
			u1, _ := s.Updates()
			b.ReportMetric(float64(ensured.Milliseconds()), "ensure-ms")
			b.ReportMetric(float64(u1-u0)/float64(b.N), "updates/activity")
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "activities/s")
		})
	}
}

// runWorkers runs c workers sharing b.N activities, timed: worker w's i-th activity is
// act(w, i), which answers false to stop that worker. It returns the wall time.
func runWorkers(b *testing.B, c int, act func(w, i int) bool) time.Duration {
	var next atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; next.Add(1) <= int64(b.N); i++ {
				if !act(w, i) {
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	return elapsed
}

// bumpOnce is one benchmark activity: it reads key and commits it plus one, once (increment,
// in journal_test.go, runs it again on conflict with a pause, which would skew a rate). A failed
// read is returned without %w, so a caller that tolerates or retries a conflicting
// commit still fails on any read error.
func bumpOnce(ctx context.Context, ns runtime.Store, key runtime.StateKey) error {
	txn, _ := ns.Begin(ctx)
	v, _, err := txn.Get(key)
	if err != nil {
		return fmt.Errorf("get %v: %v", key, err)
	}
	n, _ := strconv.Atoi(string(v))
	_ = txn.Put(key, []byte(strconv.Itoa(n+1)))
	return txn.Commit(ctx)
}
