package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/packhost/packhost/controllers"
	"github.com/packhost/packhost/dispatcher"
	"github.com/packhost/packhost/runtime"
	"github.com/packhost/packhost/source"
	"github.com/packhost/packhost/state"
)

// wire builds packhost's parts and registers them with the manager: the wazero engine,
// the state store, the pack fetcher, the registry of loaded runtimes, the dispatcher's
// router and the three controllers.
func wire(ctx context.Context, mgr ctrl.Manager, o options, log logr.Logger) error {
	engine, err := runtime.NewEngine(ctx, runtime.EngineConfig{
		CacheDir: filepath.Join(o.cacheDir, "compiled"),
		Logger:   log.WithName("guest"),
	})
	if err != nil {
		return fmt.Errorf("start the wasm engine: %w", err)
	}
	store, err := state.New(mgr.GetConfig(), mgr.GetScheme(), state.Options{Logger: log.WithName("state")})
	if err != nil {
		return err
	}
	if err := mgr.Add(store); err != nil {
		return err
	}
	runtimes := controllers.NewRuntimes()
	router := dispatcher.NewRouter()
	isLeader := controllers.LeaderFunc(mgr)
	fetcher := &source.Fetcher{Reader: mgr.GetAPIReader(), CacheDir: o.cacheDir, Insecure: o.insecureRegistries}
	if err := controllers.Setup(mgr,
		&controllers.RevisionReconciler{
			Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("packhost-revision"),
			Engine: engine, State: store, Fetcher: fetcher, Runtimes: runtimes, IsLeader: isLeader, Clock: time.Now,
		},
		&controllers.TenantReconciler{
			Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("packhost-tenant"),
			Router: router, IsLeader: isLeader,
		},
		&controllers.TrafficSplitReconciler{
			Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("packhost-trafficsplit"),
			Router: router, Runtimes: runtimes, IsLeader: isLeader,
		},
	); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("revisions-loaded", controllers.RevisionsLoaded(router, runtimes)); err != nil {
		return err
	}
	parts = &wired{engine: engine, store: store, runtimes: runtimes, router: router}
	return nil
}

// wired keeps the parts for the dispatcher.
type wired struct {
	engine   *runtime.Engine
	store    *state.Store
	runtimes *controllers.Runtimes
	router   *dispatcher.Router
}

var parts *wired
