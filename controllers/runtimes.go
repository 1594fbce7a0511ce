package controllers

import (
	"context"
	"sync"

	"k8s.io/apimachinery/pkg/types"

	packhostv1alpha1 "github.com/packhost/packhost/api/v1alpha1"
	"github.com/packhost/packhost/runtime"
)

// Loaded is a revision runtime loaded on this replica.
type Loaded struct {
	UID             types.UID
	Tenant          string
	Runtime         *runtime.Revision
	Packs           []packhostv1alpha1.PackStatus
	StateConfigMaps []string
	Shards          int
}

// Runtimes is this replica's registry of loaded revision runtimes. Every replica loads
// the revisions it may have to serve; the dispatcher looks them up here.
type Runtimes struct {
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

// Revision returns the runtime of a loaded revision, for the dispatcher.
func (r *Runtimes) Revision(namespace, name string) *runtime.Revision {
	if l := r.Get(types.NamespacedName{Namespace: namespace, Name: name}); l != nil {
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
		old.Runtime.Close(context.Background())
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
	}
	return l != nil
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
