package controllers_test

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"

	v1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/internal/testenv"
)

// A clean start logs no errors: the writes that race on a fresh object (finalizers,
// status) conflict, and a conflict is a requeue, not a "Reconciler error" with a
// stack trace. (make run-local used to log two.)
func TestCleanStartLogsNoErrors(t *testing.T) {
	testenv.Require(t, env)
	var mu sync.Mutex
	var errs []string
	sink := funcr.NewJSON(func(obj string) {
		if strings.Contains(obj, `"error"`) || strings.Contains(obj, "Reconciler error") {
			mu.Lock()
			errs = append(errs, obj)
			mu.Unlock()
		}
	}, funcr.Options{})
	ns := env.Namespace(t, "quiet")
	startReplica(t, true, func(c *replicaConfig) { c.manager.Logger = logr.New(sink.GetSink()) })
	acme(t, ns, revision(ns, "a", "acme", "ok.wasm"), revision(ns, "b", "acme", "ok.wasm"),
		split(ns, "main", "acme", v1.Route{RevisionName: "a", Percent: 90}, v1.Route{RevisionName: "b", Percent: 10}))
	waitPhase(t, ns, "a", v1.RevisionReady, v1.ReasonRouted)
	waitPhase(t, ns, "b", v1.RevisionReady, v1.ReasonRouted)
	time.Sleep(2 * time.Second)
	mu.Lock()
	defer mu.Unlock()
	var mine []string
	for _, e := range errs {
		if strings.Contains(e, ns) {
			mine = append(mine, e)
		}
	}
	if len(mine) > 0 {
		t.Fatalf("a clean start logged %d errors, first: %s", len(mine), mine[0])
	}
}
