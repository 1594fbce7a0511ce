package controllers

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/packhost/packhost/api/v1alpha1"
)

// A source that never answers holds at most loadsPerOrigin workers; a load from
// elsewhere finishes at once, and the revision is re-enqueued when it does.
func TestLoaderBoundsEachOrigin(t *testing.T) {
	l := newLoader(time.Minute, time.Now)
	defer l.stop()
	h := &hangingLoads{l: l}
	for i := range loadWorkers + 2 {
		h.start(types.NamespacedName{Name: fmt.Sprint("hole-", i)}, "hole:80")
	}
	fast := types.NamespacedName{Name: "fast"}
	fail := &failure{reason: v1.ReasonInvalidWasm}
	if done, _, _ := l.load(fast, "k", func(context.Context, originSlot) (*Loaded, *failure) { return nil, fail }); done {
		t.Fatal("a new load is done before it ran")
	}
	select {
	case e := <-l.events:
		if e.Object.GetName() != "fast" {
			t.Fatalf("re-enqueued %s", e.Object.GetName())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a load from another origin waited behind a black hole")
	}
	if done, _, f := l.load(fast, "k", nil); !done || f != fail {
		t.Fatalf("the result is not kept until taken: done %v, %v", done, f)
	}
	// The black-hole loads start on goroutines of their own; wait for them, then check
	// that no more than the origin's bound ever started.
	if n := h.settle(loadsPerOrigin); n != loadsPerOrigin {
		t.Fatalf("%d loads fetch from one origin, want %d", n, loadsPerOrigin)
	}
	// A load for another key replaces the one running.
	if done, _, _ := l.load(fast, "k2", func(context.Context, originSlot) (*Loaded, *failure) { return nil, nil }); done {
		t.Fatal("a load for a new key returned the old key's result")
	}
}

// hangingLoads starts loads that fetch from origins in turn, each in the origin's slot:
// a fetch from an origin named "hole…" (a black hole) hangs until the load is
// cancelled, any other returns at once. It counts the fetches from black holes that
// started.
type hangingLoads struct {
	l       *loader
	started atomic.Int32
}

func (h *hangingLoads) start(name types.NamespacedName, origins ...string) {
	h.l.load(name, "k", func(ctx context.Context, fetching originSlot) (*Loaded, *failure) {
		unreachable := &failure{reason: v1.ReasonSourceUnreachable, retry: true}
		for _, o := range origins {
			release, ok := fetching(ctx, o)
			if !ok {
				return nil, unreachable
			}
			if strings.HasPrefix(o, "hole") {
				h.started.Add(1)
				<-ctx.Done()
			}
			release()
		}
		return nil, unreachable
	})
}

// settle waits until n fetches from black holes started (at most 5 s), then a little
// more, and returns how many did.
func (h *hangingLoads) settle(n int32) int32 {
	for deadline := time.Now().Add(5 * time.Second); h.started.Load() < n && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	return h.started.Load()
}

// finishes reports whether a quick load of name from origins finishes within 5 s.
func finishes(t *testing.T, l *loader, name types.NamespacedName, origins ...string) bool {
	t.Helper()
	l.load(name, "k", func(ctx context.Context, fetching originSlot) (*Loaded, *failure) {
		for _, o := range origins {
			release, ok := fetching(ctx, o)
			if !ok {
				return nil, &failure{reason: v1.ReasonSourceUnreachable, retry: true}
			}
			release()
		}
		return nil, &failure{reason: v1.ReasonInvalidWasm}
	})
	deadline := time.After(5 * time.Second)
	for {
		select {
		case e := <-l.events:
			if e.Object.GetName() == name.Name && e.Object.GetNamespace() == name.Namespace {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

// One namespace's loads never hold every worker, whatever origins they name: a tenant
// with black-hole sources on two hosts leaves a worker for the other tenants.
func TestLoaderBoundsEachNamespace(t *testing.T) {
	l := newLoader(time.Minute, time.Now)
	defer l.stop()
	h := &hangingLoads{l: l}
	for i := range 3 {
		h.start(types.NamespacedName{Namespace: "evil", Name: fmt.Sprint("a-", i)}, "hole-a:80")
		h.start(types.NamespacedName{Namespace: "evil", Name: fmt.Sprint("b-", i)}, "hole-b:80")
	}
	if n := h.settle(loadsPerNamespace); n != loadsPerNamespace {
		t.Fatalf("%d loads of one namespace run at once, want %d", n, loadsPerNamespace)
	}
	if !finishes(t, l, types.NamespacedName{Namespace: "good", Name: "fast"}, "registry:443") {
		t.Fatal("another namespace's load waited behind one namespace's black holes")
	}
}

// Loads waiting for a full origin hold no slot of another: revisions that name a shared
// registry and a black hole cannot keep the registry from everyone else.
func TestLoaderWaitsHoldingNoOtherOrigin(t *testing.T) {
	l := newLoader(time.Minute, time.Now)
	defer l.stop()
	h := &hangingLoads{l: l}
	for i := range loadsPerOrigin {
		h.start(types.NamespacedName{Namespace: fmt.Sprint("hole-", i), Name: "r"}, "hole-z:80")
	}
	for i := range loadsPerOrigin {
		h.start(types.NamespacedName{Namespace: fmt.Sprint("both-", i), Name: "r"}, "a-registry:443", "hole-z:80")
	}
	if n := h.settle(loadsPerOrigin); n != loadsPerOrigin {
		t.Fatalf("%d loads started against a black hole, want %d", n, loadsPerOrigin)
	}
	if !finishes(t, l, types.NamespacedName{Namespace: "good", Name: "r"}, "a-registry:443") {
		t.Fatal("a load from a shared registry waited behind loads queued for a black hole")
	}
}

// A load holds an origin's slot only while it fetches from it: revisions that fetch from
// a shared registry and then from black holes (one each, so no hole's bound stops
// them) wait on the holes without keeping the registry from everyone else.
func TestLoaderHoldsAnOriginOnlyWhileFetching(t *testing.T) {
	l := newLoader(time.Minute, time.Now)
	defer l.stop()
	h := &hangingLoads{l: l}
	for i := range loadsPerOrigin {
		h.start(types.NamespacedName{Namespace: fmt.Sprint("both-", i), Name: "r"}, "a-registry:443", fmt.Sprintf("hole-%d:80", i))
	}
	if n := h.settle(loadsPerOrigin); n != loadsPerOrigin {
		t.Fatalf("%d loads wait on their black holes, want %d", n, loadsPerOrigin)
	}
	if !finishes(t, l, types.NamespacedName{Namespace: "good", Name: "r"}, "a-registry:443") {
		t.Fatal("a load from a shared registry waited behind loads that fetched from it and then from black holes")
	}
}

// A load that runs past its deadline, or waits that long for a slot behind black holes,
// fails with a failure that is tried again, and its revision hears of it: it is not left
// loading, unheard of, until the manager restarts.
func TestLoaderLoadPastItsDeadlineIsRetried(t *testing.T) {
	l := newLoader(time.Minute, time.Now)
	defer l.stop()
	l.timeout = 100 * time.Millisecond
	h := &hangingLoads{l: l}
	want := map[string]bool{}
	for i := range loadsPerNamespace + 1 { // the last waits for its namespace's slot
		name := fmt.Sprint("hole-", i)
		h.start(types.NamespacedName{Namespace: "busy", Name: name}, name+":80")
		want[name] = true
	}
	deadline := time.After(10 * time.Second)
	for len(want) > 0 {
		select {
		case e := <-l.events:
			delete(want, e.Object.GetName())
		case <-deadline:
			t.Fatalf("revisions %v never heard of their loads that ran past the deadline", want)
		}
	}
	for i := range loadsPerNamespace + 1 {
		done, _, f := l.load(types.NamespacedName{Namespace: "busy", Name: fmt.Sprint("hole-", i)}, "k", nil)
		if !done || f == nil || !f.retry {
			t.Errorf("hole-%d: done %v, %+v; want a failure tried again", i, done, f)
		}
	}
}
