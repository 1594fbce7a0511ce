package state_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/uuid"

	"github.com/packhost/packhost/internal/testenv"
	"github.com/packhost/packhost/runtime"
	"github.com/packhost/packhost/state"
)

// apiServerPID finds the kube-apiserver this test process started (envtest runs it as
// a child), so only that one is paused.
func apiServerPID(t *testing.T) int { return apiServerPIDOf(t) }

// outcome is one activity's answer.
type outcome struct {
	start, end time.Time
	err        error
}

// With the API server paused (SIGSTOP) for 4 s under load: stateless activities keep
// serving; stateful ones fail with state_unavailable after the short commit timeout,
// then at once while the breaker is open, never past their deadline plus the commit's
// grace; service resumes within a second of SIGCONT; and the counter holds exactly the
// increments answered 2xx, plus at most those answered with an unknown outcome.
func TestAPIServerPauseFailsFastAndTellsTheTruth(t *testing.T) {
	testenv.Require(t, env)
	if testing.Short() {
		t.Skip("pauses the API server")
	}
	const (
		commitTimeout = time.Second
		deadline      = 5 * time.Second
		pause         = 4 * time.Second
	)
	spec := state.Spec{Namespace: env.Namespace(t, "outage"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: 1}
	s := newStore(t, state.Options{CommitTimeout: commitTimeout})
	ns := ensure(t, s, spec)
	stateful := runtimeOnWith(t, ns, "counter", deadline)
	stateless := runtimeOnWith(t, runtime.NewMemStore(), "echo", deadline)
	pid := apiServerPID(t)

	var mu sync.Mutex
	var statefulOut, statelessOut []outcome
	stop := make(chan struct{})
	var wg sync.WaitGroup
	run := func(rev *runtime.Revision, into *[]outcome) {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			o := outcome{start: time.Now()}
			_, o.err = rev.Handle(context.Background(), &runtime.Activity{Kind: "message", Payload: []byte(`{}`)})
			o.end = time.Now()
			mu.Lock()
			*into = append(*into, o)
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}
	for range 4 {
		wg.Add(2)
		go run(stateful, &statefulOut)
		go run(stateless, &statelessOut)
	}
	time.Sleep(time.Second)
	paused := time.Now()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumedOnce := sync.OnceValue(func() time.Time {
		_ = syscall.Kill(pid, syscall.SIGCONT)
		return time.Now()
	})
	t.Cleanup(func() { resumedOnce() })
	time.Sleep(pause)
	resumed := resumedOnce()
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()

	for _, o := range statelessOut {
		if o.err != nil {
			t.Fatalf("a stateless activity failed during the pause: %v", o.err)
		}
	}
	successes, unknown, fastFails, slowFails := 0, 0, 0, 0
	var firstAfter time.Time
	for _, o := range statefulOut {
		took := o.end.Sub(o.start)
		if took > deadline+commitTimeout+500*time.Millisecond {
			t.Errorf("an activity started at +%v was answered after %v, past its deadline and the commit's grace (%v)", o.start.Sub(paused), took, o.err)
		}
		switch {
		case o.err == nil:
			successes++
			if o.start.After(resumed) && (firstAfter.IsZero() || o.end.Before(firstAfter)) {
				firstAfter = o.end
			}
		case errors.Is(o.err, runtime.ErrStateUnavailable):
			if errors.Is(o.err, runtime.ErrOutcomeUnknown) {
				unknown++
			}
			// Once the first commits have timed out, the breaker answers at once.
			if o.start.After(paused.Add(2*commitTimeout)) && o.end.Before(resumed) {
				if took < 100*time.Millisecond {
					fastFails++
				} else {
					slowFails++
				}
			}
		default:
			t.Errorf("a stateful activity during the pause: %v; want success or state_unavailable", o.err)
		}
	}
	if fastFails == 0 || slowFails > fastFails/10 {
		t.Errorf("while the API server was paused, %d stateful activities failed fast and %d slowly: the breaker should answer at once", fastFails, slowFails)
	}
	if firstAfter.IsZero() || firstAfter.Sub(resumed) > time.Second {
		t.Errorf("first stateful success %v after the API server came back, want within a second", firstAfter.Sub(resumed))
	}
	v, _ := get(t, newStore(t, state.Options{}).Namespace(spec), runtime.StateKey{Pack: "counter", Name: "count"})
	n, _ := strconv.Atoi(v)
	if n < successes || n > successes+unknown {
		t.Errorf("counter is %d after %d answers 2xx and %d of unknown outcome", n, successes, unknown)
	}
	t.Logf("stateful: %d ok, %d unknown, %d fast fails, %d slow; stateless: %d ok; resumed after %v",
		successes, unknown, fastFails, slowFails, len(statelessOut), firstAfter.Sub(resumed))
}

// A read that must ask the API server waits no longer than the activity may: with the
// API server paused, a transaction begun under a 200 ms deadline ends its read at that
// deadline, not after the store's commit timeout.
func TestReadsWaitNoLongerThanTheActivity(t *testing.T) {
	testenv.Require(t, env)
	if testing.Short() {
		t.Skip("pauses the API server")
	}
	spec := state.Spec{Namespace: env.Namespace(t, "readwait"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: 1}
	ensure(t, newStore(t, state.Options{}), spec)
	const commitTimeout = 10 * time.Second
	fresh := newStore(t, state.Options{CommitTimeout: commitTimeout}) // no copy of the shard yet
	// The fresh store's client finds the API first (discovery), on another namespace.
	ensure(t, fresh, state.Spec{Namespace: env.Namespace(t, "warm"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: 1})
	pid := apiServerPID(t)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resume := sync.OnceFunc(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	t.Cleanup(resume)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	txn, err := fresh.Namespace(spec).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	_, _, err = txn.Get(runtime.StateKey{Pack: "p", Name: "k"})
	took := time.Since(began)
	resume()
	if err == nil || took > commitTimeout/2 {
		t.Fatalf("a read under a 200 ms deadline with the API server paused: %v after %v, want an error at the deadline, not at the %v commit timeout", err, took, commitTimeout)
	}
}
