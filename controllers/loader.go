package controllers

import (
	"context"
	"fmt"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/event"

	v1 "github.com/packhost/packhost/api/v1alpha1"
)

// Bounds of the background loader.
const (
	// loadWorkers is how many revisions are fetched and compiled at once on a replica.
	// Compiling is CPU-bound and fetching waits on the network; a handful keeps both
	// busy without starving the dispatcher of CPU.
	loadWorkers = 4
	// loadsPerOrigin is how many of those may fetch from one remote origin at once (a
	// url's host:port, a registry): a source that never answers holds at most this many
	// workers for its bounded tries, never all of them, so it delays no other origin.
	loadsPerOrigin = 2
	// loadsPerNamespace is how many loads of one namespace run at once: never every
	// worker, so one tenant's revisions, whatever origins they name, leave one for the
	// others.
	loadsPerNamespace = loadWorkers - 1
	// loadTimeout bounds one whole load: fetches (each try bounded by the source),
	// state, compile and the first instance.
	loadTimeout = 5 * time.Minute
)

// loadFunc loads a revision; it runs on a loader worker and must honour ctx. It fetches
// from a remote origin only while it holds a slot that fetching gave it.
type loadFunc func(ctx context.Context, fetching originSlot) (*Loaded, *failure)

// originSlot waits for a slot of a remote origin for one fetch and returns its release,
// or false when ctx ended first (see loadSlots.fetching).
type originSlot func(ctx context.Context, origin string) (release func(), ok bool)

// loader fetches and compiles revisions off the reconcile path, as Knative Serving's
// revision background resolver does: Reconcile asks for a load keyed by the revision
// and the runtime config it needs (loadKey), gets "not yet" while it runs, and is
// re-enqueued when it is done to pick up the result, which is kept until then. A
// worker pool bounds the work; a per-origin bound keeps one black-hole source, and a
// per-namespace bound one tenant, from holding every worker.
type loader struct {
	// events re-enqueue a revision whose load finished; the revision controller
	// watches them.
	events chan event.GenericEvent
	// retryAfter is how long a failure that may pass is kept before a new try.
	retryAfter time.Duration
	clock      func() time.Time
	// timeout bounds one whole load, its waits for slots included (loadTimeout).
	timeout time.Duration

	workers *slots

	mu    sync.Mutex
	base  context.Context
	stop  context.CancelFunc
	slots map[string]*slots // by origin, and by "namespace/" and a namespace
	jobs  map[types.NamespacedName]*loadJob
	// running counts the load goroutines, which Start waits for: a load writes the cache
	// directory, and must not outlive the manager.
	loads sync.WaitGroup
}

// loadJob is one load of a revision for one key, running or done.
type loadJob struct {
	key    string
	cancel context.CancelFunc
	done   bool
	at     time.Time // when it finished
	loaded *Loaded
	fail   *failure
}

func newLoader(retryAfter time.Duration, clock func() time.Time) *loader {
	base, stop := context.WithCancel(context.Background())
	return &loader{
		events: make(chan event.GenericEvent), retryAfter: retryAfter, clock: clock, timeout: loadTimeout,
		workers: &slots{key: "workers", ch: make(chan struct{}, loadWorkers)}, base: base, stop: stop,
		slots: map[string]*slots{}, jobs: map[types.NamespacedName]*loadJob{},
	}
}

// NeedLeaderElection is false: every replica loads the revisions it may serve.
func (l *loader) NeedLeaderElection() bool { return false }

// Start implements manager.Runnable: it runs until ctx ends, then cancels every load
// and waits for them to end.
func (l *loader) Start(ctx context.Context) error {
	<-ctx.Done()
	l.stop()
	l.loads.Wait()
	return nil
}

// load returns the result of loading name for key. While the load runs, or when a new
// one was started now, done is false and Reconcile hears again when it finishes. A
// load for another key is cancelled and replaced. A failure that may pass is kept for
// retryAfter, then tried again on the next call. A successful result is handed out
// once: the caller owns the runtime.
func (l *loader) load(name types.NamespacedName, key string, fn loadFunc) (done bool, loaded *Loaded, fail *failure) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if j := l.jobs[name]; j != nil && j.key == key {
		switch {
		case !j.done:
			return false, nil, nil
		case j.loaded != nil:
			delete(l.jobs, name)
			return true, j.loaded, nil
		case !j.fail.retry || l.clock().Sub(j.at) < l.retryAfter:
			return true, nil, j.fail
		}
	}
	l.forgetLocked(name)
	// A load that hangs (a compile, an API call) must give its worker and origin slot
	// back eventually: each fetch try is bounded, the whole load is too.
	ctx, cancel := context.WithTimeout(l.base, l.timeout)
	j := &loadJob{key: key, cancel: cancel}
	l.jobs[name] = j
	l.loads.Add(1)
	go l.run(ctx, name, j, fn)
	return false, nil, nil
}

// forget cancels a running load of name and drops a result nobody took, closing its
// runtime.
func (l *loader) forget(name types.NamespacedName) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.forgetLocked(name)
}

func (l *loader) forgetLocked(name types.NamespacedName) {
	j := l.jobs[name]
	if j == nil {
		return
	}
	delete(l.jobs, name)
	j.cancel()
	if j.loaded != nil {
		go j.loaded.Runtime.Close(context.Background())
	}
}

func (l *loader) run(ctx context.Context, name types.NamespacedName, j *loadJob, fn loadFunc) {
	defer l.loads.Done()
	defer j.cancel()
	var loaded *Loaded
	var fail *failure
	if s, ok := l.acquire(ctx, name.Namespace); ok {
		loaded, fail = fn(ctx, s.fetching)
		s.release()
		if loaded == nil && fail == nil {
			fail = &failure{v1.RevisionLoaded, v1.ReasonInvalidWasm, "load returned no runtime", true}
		}
	}
	if loaded == nil && ctx.Err() != nil {
		// The load's own deadline (or its end, below), whatever the load made of it: a
		// wait behind other loads or a slow source may pass, so it is tried again.
		if fail == nil {
			fail = &failure{v1.RevisionPacksFetched, v1.ReasonSourceUnreachable, fmt.Sprintf("waited for a loader, behind other loads, until the load's deadline (%s)", l.timeout), true}
		}
		fail = &failure{fail.condition, fail.reason, fail.message, true}
	}
	l.mu.Lock()
	// Replaced, forgotten or shutting down: nobody wants the result. A load past its
	// deadline is still its revision's answer, which must hear of it.
	if l.jobs[name] != j || l.base.Err() != nil {
		l.mu.Unlock()
		if loaded != nil {
			loaded.Runtime.Close(context.Background())
		}
		return
	}
	j.done, j.at, j.loaded, j.fail = true, l.clock(), loaded, fail
	l.mu.Unlock()
	rev := &v1.Revision{ObjectMeta: metav1.ObjectMeta{Namespace: name.Namespace, Name: name.Name}}
	select {
	case l.events <- event.GenericEvent{Object: rev}:
	case <-l.base.Done():
	}
}

// acquire takes a slot of the load's namespace, then a worker. Origins are not taken
// here but around each fetch (loadSlots.fetching): a load that names a shared registry
// and a black hole must not hold the registry's slot while it waits on the hole.
func (l *loader) acquire(ctx context.Context, namespace string) (*loadSlots, bool) {
	s := &loadSlots{l: l, namespace: l.use("namespace/"+namespace, loadsPerNamespace)}
	s.inNamespace = take(ctx, s.namespace)
	if !s.inNamespace || !s.takeWorker(ctx) {
		s.release()
		return nil, false
	}
	return s, true
}

// loadSlots are the slots one load holds: its namespace's and a worker while it runs,
// and one origin's at a time, while it fetches from that origin.
type loadSlots struct {
	l           *loader
	namespace   *slots
	inNamespace bool // holds a slot of namespace
	worker      bool // holds a worker
}

// fetching takes a slot of origin (a url's host:port, an image's registry) for one
// fetch, and returns its release; false when ctx ended first. A load waits for a full
// origin holding nothing: not its worker, so loads queued behind a black hole hold no
// worker; not its namespace's slot, so they leave the tenant's other loads theirs; and
// no other origin's, since a load holds one at a time and only while it fetches, so
// loads waiting on a hole keep a shared registry from nobody. It takes the origin's
// and the namespace's slots all or none, then a worker (a load holding a worker never
// waits for a slot, so this cannot deadlock).
func (s *loadSlots) fetching(ctx context.Context, origin string) (release func(), ok bool) {
	o := s.l.use(origin, loadsPerOrigin)
	done := func() {
		<-o.ch
		s.l.unuse(o)
	}
	select {
	case o.ch <- struct{}{}:
		return done, true
	default:
	}
	s.giveWorker()
	if s.inNamespace {
		<-s.namespace.ch
	}
	s.inNamespace = takeAll(ctx, s.namespace, o)
	if !s.inNamespace {
		s.l.unuse(o)
		return nil, false
	}
	if !s.takeWorker(ctx) {
		done()
		return nil, false
	}
	return done, true
}

func (s *loadSlots) takeWorker(ctx context.Context) bool {
	s.worker = take(ctx, s.l.workers)
	return s.worker
}

func (s *loadSlots) giveWorker() {
	if s.worker {
		<-s.l.workers.ch
		s.worker = false
	}
}

// release gives back the load's worker and its namespace's slot, those it holds.
func (s *loadSlots) release() {
	s.giveWorker()
	if s.inNamespace {
		<-s.namespace.ch
		s.inNamespace = false
	}
	s.l.unuse(s.namespace)
}

// take waits for one of slots s, or for ctx to end.
func take(ctx context.Context, s *slots) bool {
	select {
	case s.ch <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// takeAll takes one slot of each of sets, all or none: it waits for a full one holding
// none of the others, then tries the others again.
func takeAll(ctx context.Context, sets ...*slots) bool {
	var held []*slots
	for wait := -1; ; {
		if wait >= 0 {
			if !take(ctx, sets[wait]) {
				return false
			}
			held = append(held, sets[wait])
		}
		full := -1
		for i, s := range sets {
			if i == wait {
				continue
			}
			select {
			case s.ch <- struct{}{}:
				held = append(held, s)
				continue
			default:
			}
			full = i
			break
		}
		if full < 0 {
			return true
		}
		for _, s := range held {
			<-s.ch
		}
		held, wait = held[:0], full
	}
}

// unuse ends a load's use of slots s taken with use. Slots nobody waits on or holds are
// forgotten: any user may name hosts.
func (l *loader) unuse(s *slots) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s.users--; s.users == 0 {
		delete(l.slots, s.key)
	}
}

// use counts a load as a user of the slots under key, made with n slots if none.
func (l *loader) use(key string, n int) *slots {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.slots[key]
	if s == nil {
		s = &slots{key: key, ch: make(chan struct{}, n)}
		l.slots[key] = s
	}
	s.users++
	return s
}

// slots bounds the loads of one origin or namespace; users counts the loads holding or
// waiting for one, so the entry goes when the last one is done.
type slots struct {
	key   string
	ch    chan struct{}
	users int
}
