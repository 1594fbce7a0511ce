package state_test

import (
	"context"
	"fmt"
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
			var next atomic.Int64
			lat := make([][]time.Duration, c)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for w := range c {
				wg.Add(1)
				go func() {
					defer wg.Done()
					key := runtime.StateKey{Pack: "p", Name: "k" + strconv.Itoa(w)}
					for next.Add(1) <= int64(b.N) {
						t0 := time.Now()
						ctx := context.Background()
						txn, _ := ns.Begin(ctx)
						v, _, err := txn.Get(key)
						if err != nil {
							b.Error(err)
							return
						}
						n, _ := strconv.Atoi(string(v))
						_ = txn.Put(key, []byte(strconv.Itoa(n+1)))
						if err := txn.Commit(ctx); err != nil {
							b.Error(err)
							return
						}
						lat[w] = append(lat[w], time.Since(t0))
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
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
