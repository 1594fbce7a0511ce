package controllers

import (
	"context"
	"fmt"
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
	var started atomic.Int32
	hang := func(ctx context.Context) (*Loaded, *failure) {
		started.Add(1)
		<-ctx.Done()
		return nil, &failure{reason: v1.ReasonSourceUnreachable, retry: true}
	}
	for i := range loadWorkers + 2 {
		l.load(types.NamespacedName{Name: fmt.Sprint("hole-", i)}, "k", []string{"hole:80"}, hang)
	}
	fast := types.NamespacedName{Name: "fast"}
	fail := &failure{reason: v1.ReasonInvalidWasm}
	if done, _, _ := l.load(fast, "k", nil, func(context.Context) (*Loaded, *failure) { return nil, fail }); done {
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
	if done, _, f := l.load(fast, "k", nil, nil); !done || f != fail {
		t.Fatalf("the result is not kept until taken: done %v, %v", done, f)
	}
	// The black-hole loads start on goroutines of their own; wait for them, then check
	// that no more than the origin's bound ever started.
	for deadline := time.Now().Add(5 * time.Second); started.Load() < loadsPerOrigin && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	if n := started.Load(); n != loadsPerOrigin {
		t.Fatalf("%d loads run against one origin, want %d", n, loadsPerOrigin)
	}
	// A load for another key replaces the one running.
	if done, _, _ := l.load(fast, "k2", nil, func(context.Context) (*Loaded, *failure) { return nil, nil }); done {
		t.Fatal("a load for a new key returned the old key's result")
	}
}
