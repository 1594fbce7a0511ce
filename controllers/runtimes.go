package controllers

import (
	"context"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"

	packhostv1alpha1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/runtime"
)

// Loaded is a revision runtime loaded on this replica.
type Loaded struct {
	UID types.UID
	// Key is the loadKey the runtime was built for: a runtime whose key is not the one
	// its revision and tenant now give is loaded again.
	Key             string
	Tenant          string
	Runtime         *runtime.Revision
	Packs           []packhostv1alpha1.PackStatus
	StateConfigMaps []string
	Shards          int
	// MaxBodyBytes is the largest activity the revision takes: its
	// spec.limits.maxRequestBodyBytes, else its tenant's.
	MaxBodyBytes int64
}

// Runtimes is this replica's registry of loaded revision runtimes. Every replica loads
// the revisions it may have to serve; the dispatcher looks them up here.
type Runtimes struct {
	// OnUnload, when set, is called after a revision is unloaded (to drop its metrics).
	OnUnload func(types.NamespacedName)

	mu     sync.RWMutex
	loaded map[types.NamespacedName]*Loaded
}

// NewRuntimes returns an empty registry.
func NewRuntimes() *Runtimes { return &Runtimes{loaded: map[types.NamespacedName]*Loaded{}} }

// Get returns the loaded revision, or nil.
func (r *Runtimes) Get(key types.NamespacedName) *Loaded {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.loaded[key]
}

// Revision returns the runtime of a loaded revision of tenant, for the dispatcher; a
// revision of another tenant is not found.
func (r *Runtimes) Revision(namespace, tenant, name string) *runtime.Revision {
	if l := r.Get(types.NamespacedName{Namespace: namespace, Name: name}); l != nil && l.Tenant == tenant {
		return l.Runtime
	}
	return nil
}

func (r *Runtimes) put(key types.NamespacedName, l *Loaded) {
	r.mu.Lock()
	old := r.loaded[key]
	r.loaded[key] = l
	r.mu.Unlock()
	if old != nil && old.Runtime != l.Runtime {
		// New activities go to l from now on; the old runtime finishes the ones it
		// runs (Close waits its grace for them) without holding the caller.
		go old.Runtime.Close(context.Background())
	}
}

// Unload closes and forgets a revision's runtime; it reports whether one was loaded.
func (r *Runtimes) Unload(ctx context.Context, key types.NamespacedName) bool {
	r.mu.Lock()
	l := r.loaded[key]
	delete(r.loaded, key)
	r.mu.Unlock()
	if l != nil {
		l.Runtime.Close(ctx)
		if r.OnUnload != nil {
			r.OnUnload(key)
		}
	}
	return l != nil
}

// MaxBodyBytes returns the largest activity a loaded revision of tenant takes, for the
// dispatcher to answer 413 past it once it has picked the revision; false when the
// revision is not loaded.
func (r *Runtimes) MaxBodyBytes(namespace, tenant, name string) (int64, bool) {
	if l := r.Get(types.NamespacedName{Namespace: namespace, Name: name}); l != nil && l.Tenant == tenant {
		return l.MaxBodyBytes, true
	}
	return 0, false
}

// UsesDigest reports whether a loaded revision runs the pack with digest (sha256:<hex>).
func (r *Runtimes) UsesDigest(digest string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, l := range r.loaded {
		for _, p := range l.Packs {
			if p.Digest == digest {
				return true
			}
		}
	}
	return false
}

// Keys lists the loaded revisions.
func (r *Runtimes) Keys() []types.NamespacedName {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]types.NamespacedName, 0, len(r.loaded))
	for k := range r.loaded {
		out = append(out, k)
	}
	return out
}

// PoolCollector exports each loaded revision's pool saturation. It reads the registry
// when scraped, so an unloaded revision's series disappear with it.
type PoolCollector struct {
	runtimes  *Runtimes
	running   *prometheus.Desc
	waiting   *prometheus.Desc
	instances *prometheus.Desc
}

// NewPoolCollector returns a collector over runtimes.
func NewPoolCollector(runtimes *Runtimes) *PoolCollector {
	labels := []string{"namespace", "revision"}
	return &PoolCollector{
		runtimes: runtimes,
		running:  prometheus.NewDesc("packhost_revision_activities_running", "Activities running on the revision's instances.", labels, nil),
		waiting:  prometheus.NewDesc("packhost_revision_activities_waiting", "Activities waiting for an instance of the revision.", labels, nil),
		instances: prometheus.NewDesc("packhost_revision_instances", "Live wasm instances of each of the revision's packs; each holds its own linear memory.",
			append(labels, "pack"), nil),
	}
}

// Describe implements prometheus.Collector.
func (c *PoolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.running
	ch <- c.waiting
	ch <- c.instances
}

// Collect implements prometheus.Collector.
func (c *PoolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, key := range c.runtimes.Keys() {
		l := c.runtimes.Get(key)
		if l == nil {
			continue
		}
		running, waiting := l.Runtime.Load()
		ch <- prometheus.MustNewConstMetric(c.running, prometheus.GaugeValue, float64(running), key.Namespace, key.Name)
		ch <- prometheus.MustNewConstMetric(c.waiting, prometheus.GaugeValue, float64(waiting), key.Namespace, key.Name)
		for pack, n := range l.Runtime.Instances() {
			ch <- prometheus.MustNewConstMetric(c.instances, prometheus.GaugeValue, float64(n), key.Namespace, key.Name, pack)
		}
	}
}
