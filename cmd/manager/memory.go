package main

import (
	"errors"
	"os"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/packhost/packhost/runtime"
)

// budgetShare is the share of the container's memory limit that guests get by default:
// the rest is the manager's own (informer caches, the state store, HTTP, the Go heap's
// headroom).
const budgetShare = 0.7

// cgroupMemoryFiles hold the container's memory limit: cgroup v2, then v1.
var cgroupMemoryFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// defaultMemoryBudget is budgetShare of the container's memory limit, or 0 (no budget)
// when the container has none.
func defaultMemoryBudget(files []string) int64 {
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		// "max" (v2) and a huge page-rounded number (v1) both mean no limit.
		if err != nil || v <= 0 || v >= 1<<60 {
			return 0
		}
		return int64(float64(v) * budgetShare)
	}
	return 0
}

// registerMemoryMetrics exposes the engine's memory accounting.
func registerMemoryMetrics(reg prometheus.Registerer, e *runtime.Engine) error {
	budget := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "packhost_runtime_memory_budget_bytes", Help: "The replica's memory budget for guests (--memory-budget); 0 means none.",
	}, func() float64 { return float64(e.MemoryStats().Budget) })
	if err := registerOrReplace(reg, budget); err != nil {
		return err
	}
	for _, kind := range []struct {
		name string
		get  func(runtime.MemoryStats) int64
	}{
		{"compiled", func(s runtime.MemoryStats) int64 { return s.Compiled }},
		{"instances", func(s runtime.MemoryStats) int64 { return s.Instances }},
		{"host", func(s runtime.MemoryStats) int64 { return s.Host }},
	} {
		g := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "packhost_runtime_memory_used_bytes", Help: "Guest memory accounted against the budget: compiled packs, instances, and the host's for guests (kind host: running activities' host buffers, packs' identify hints).",
			ConstLabels: prometheus.Labels{"kind": kind.name},
		}, func() float64 { return float64(kind.get(e.MemoryStats())) })
		if err := registerOrReplace(reg, g); err != nil {
			return err
		}
	}
	return nil
}

// registerOrReplace registers c, replacing a collector of the same metric that an
// earlier run of the manager in this process registered (tests run several).
func registerOrReplace(reg prometheus.Registerer, c prometheus.Collector) error {
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		reg.Unregister(are.ExistingCollector)
		err = reg.Register(c)
	}
	return err
}
