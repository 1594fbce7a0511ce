package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/packhost/packhost/controllers"
	"github.com/packhost/packhost/dispatcher"
	"github.com/packhost/packhost/internal/diskcache"
	"github.com/packhost/packhost/runtime"
	"github.com/packhost/packhost/source"
	"github.com/packhost/packhost/state"
)

// wire builds packhost's parts and registers them with the manager: the wazero engine,
// the state store, the pack fetcher, the registry of loaded runtimes, the dispatcher's
// router and the three controllers. traces, when not nil, records their spans.
func wire(ctx context.Context, mgr ctrl.Manager, o options, log logr.Logger, traces trace.TracerProvider) error {
	engine, err := runtime.NewEngine(ctx, runtime.EngineConfig{
		CacheDir:     filepath.Join(o.cacheDir, "compiled"),
		MemoryBudget: o.memoryBudget,
		Logger:       log.WithName("guest"),
		Tracing:      traces,
	})
	if err != nil {
		return fmt.Errorf("start the wasm engine: %w", err)
	}
	if err := registerMemoryMetrics(crmetrics.Registry, engine); err != nil {
		return fmt.Errorf("register memory metrics: %w", err)
	}
	commitLatency := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "packhost_state_commit_duration_seconds", Help: "Time from an activity's commit to its state being on the API server.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	})
	if err := registerOrReplace(crmetrics.Registry, commitLatency); err != nil {
		return fmt.Errorf("register state metrics: %w", err)
	}
	store, err := state.New(mgr.GetConfig(), mgr.GetScheme(), state.Options{
		Logger: log.WithName("state"), OnCommit: func(d time.Duration) { commitLatency.Observe(d.Seconds()) },
		Namespaces: o.watchNamespaces,
	})
	if err != nil {
		return err
	}
	if err := mgr.Add(store); err != nil {
		return err
	}
	runtimes := controllers.NewRuntimes()
	router := dispatcher.NewRouter()
	isLeader := controllers.LeaderFunc(mgr)
	egress, err := source.NewEgressPolicy(o.sourceAllow, o.sourceDeny)
	if err != nil {
		return fmt.Errorf("pack source egress policy: %w", err)
	}
	fetcher := &source.Fetcher{Reader: mgr.GetAPIReader(), CacheDir: o.cacheDir, Insecure: o.insecureRegistries, Egress: egress}
	if err := mgr.Add(&diskcache.Pruner{
		Dir: o.cacheDir, Limit: o.cacheLimit.Value(), Log: log.WithName("cache"),
		Keep: func(path string) bool {
			digest, ok := fetcher.CachedDigest(path)
			return ok && runtimes.UsesDigest(digest)
		},
	}); err != nil {
		return err
	}
	// Each replica publishes its dispatcher's counts of the splits under rollout for the
	// leader's analysis, named by --replica-name or else its pod (the hostname Kubernetes
	// gives it).
	replica := o.replicaName
	if replica == "" {
		var err error
		if replica, err = os.Hostname(); err != nil {
			return fmt.Errorf("name this replica for its analysis counts: %w", err)
		}
	}
	counts := &controllers.CountsPublisher{Client: mgr.GetClient(), Router: router, Replica: replica, Clock: time.Now, Log: log.WithName("counts")}
	if err := mgr.Add(counts); err != nil {
		return err
	}
	if err := controllers.Setup(mgr,
		&controllers.RevisionReconciler{
			Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("packhost-revision"),
			Engine: engine, State: store, Fetcher: fetcher, Runtimes: runtimes, IsLeader: isLeader, Clock: time.Now,
			Tracing: traces,
		},
		&controllers.TenantReconciler{
			Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("packhost-tenant"),
			Router: router, IsLeader: isLeader,
		},
		&controllers.TrafficSplitReconciler{
			Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("packhost-trafficsplit"),
			Router: router, Runtimes: runtimes, IsLeader: isLeader,
			APIReader: mgr.GetAPIReader(), Counts: counts, Clock: time.Now,
		},
	); err != nil {
		return err
	}
	// Ready once synced and warmed up, and then for good: no tenant's revision makes a
	// replica NotReady (dispatcher.Readiness).
	ready := &dispatcher.Readiness{
		Synced: func(ctx context.Context) bool { return mgr.GetCache().WaitForCacheSync(ctx) },
		Pending: func(ctx context.Context) (int, error) {
			return pendingRevisions(ctx, mgr.GetClient(), func(ns, tenant, name string) bool {
				return runtimes.Revision(ns, tenant, name) != nil
			})
		},
	}
	ready.Start(time.Now())
	if err := mgr.AddReadyzCheck("revisions-warm", ready.Check); err != nil {
		return fmt.Errorf("add readiness check: %w", err)
	}
	if o.dispatcherAddr == "0" {
		return nil
	}
	// The dispatcher's series are served on the manager's metrics port, behind its
	// authentication and authorization, not on the dispatcher's public port.
	metrics := dispatcher.NewMetrics(crmetrics.Registry)
	runtimes.OnUnload = func(key types.NamespacedName) { metrics.ForgetRevision(key.Namespace, key.Name) }
	router.OnRemove = metrics.ForgetTenant
	if err := registerOrReplace(crmetrics.Registry, controllers.NewPoolCollector(runtimes)); err != nil {
		return fmt.Errorf("register pool metrics: %w", err)
	}
	return mgr.Add(&dispatcher.Server{
		Addr: o.dispatcherAddr, Router: router, Revisions: runtimes, Pins: store,
		MaxInFlight: o.maxInFlight, Ready: ready.Check, Metrics: metrics,
		Log: log.WithName("dispatcher"), ShutdownTimeout: o.gracefulShutdown, Tracing: traces,
	})
}
