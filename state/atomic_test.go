package state_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/uuid"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/packhost/packhost/internal/testenv"
	"github.com/packhost/packhost/runtime"
	"github.com/packhost/packhost/runtime/storetest"
	"github.com/packhost/packhost/state"
)

// fault is what faultClient does to one API call.
type fault int

const (
	pass fault = iota
	// conflict answers the call with a 409 without sending it.
	conflict
	// unavailable answers with a 503 without sending it.
	unavailable
	// lostAnswer sends the call, and answers with a timeout as if the answer was lost.
	lostAnswer
	// crash: this call and every later one fail unsent, as if the process had died.
	crash
)

func (f fault) String() string {
	return [...]string{"pass", "conflict", "unavailable", "lost-answer", "crash"}[f]
}

// faultClient injects fault into the at-th Get or Update after it is armed.
type faultClient struct {
	client.Client
	mu      sync.Mutex
	armed   bool
	calls   int
	at      int
	fault   fault
	crashed bool
	hit     bool
}

func (c *faultClient) arm(at int, f fault) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.armed, c.calls, c.at, c.fault = true, 0, at, f
}

// next says what to do with the next call.
func (c *faultClient) next() fault {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crashed {
		return crash
	}
	if !c.armed {
		return pass
	}
	n := c.calls
	c.calls++
	if n != c.at {
		return pass
	}
	c.hit = true
	if c.fault == crash {
		c.crashed = true
	}
	return c.fault
}

// settle waits until no call has been made for 300 ms: the roll-forward after a
// commit's answer is done (or has failed).
func (c *faultClient) settle() {
	last := -1
	for range 50 {
		c.mu.Lock()
		n := c.calls
		c.mu.Unlock()
		if n == last {
			return
		}
		last = n
		time.Sleep(300 * time.Millisecond)
	}
}

var cmResource = schema.GroupResource{Resource: "configmaps"}

func (c *faultClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	switch c.next() {
	case conflict, unavailable, crash:
		return apierrors.NewServiceUnavailable("injected")
	case lostAnswer:
		_ = c.Client.Get(ctx, key, obj, opts...)
		return apierrors.NewTimeoutError("injected: answer lost", 1)
	}
	return c.Client.Get(ctx, key, obj, opts...)
}

func (c *faultClient) Update(ctx context.Context, obj client.Object, opts ...client.UpdateOption) error {
	switch c.next() {
	case conflict:
		return apierrors.NewConflict(cmResource, obj.GetName(), errors.New("injected"))
	case unavailable, crash:
		return apierrors.NewServiceUnavailable("injected")
	case lostAnswer:
		_ = c.Client.Update(ctx, obj.DeepCopyObject().(client.Object), opts...)
		return apierrors.NewTimeoutError("injected: answer lost", 1)
	}
	return c.Client.Update(ctx, obj, opts...)
}

// readAll reads keys and the session's wait's data in one validated transaction,
// running it again on conflict as the runtime would.
func readAll(t *testing.T, ns runtime.Store, keys []runtime.StateKey, session string) []string {
	t.Helper()
	var last error
	for attempt := range 200 {
		ctx := runtime.WithAttempt(context.Background(), attempt)
		txn, _ := ns.Begin(ctx)
		seen, err := func() ([]string, error) {
			var seen []string
			for _, k := range keys {
				v, _, err := txn.Get(k)
				if err != nil {
					return nil, err
				}
				seen = append(seen, string(v))
			}
			ws, err := txn.Waits(session)
			if err != nil {
				return nil, err
			}
			if len(ws) != 1 {
				return nil, fmt.Errorf("the session holds %d waits, want its one", len(ws))
			}
			return append(seen, string(ws[0].Data)), txn.Commit(ctx)
		}()
		if err == nil {
			return seen
		}
		if !errors.Is(err, runtime.ErrConflict) {
			t.Fatalf("read: %v", err)
		}
		last = err
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("reads kept conflicting: %v", last)
	return nil
}

// keysOn returns, for each of the first n shards, a key of pack "p" that lives there.
func keysOn(shards, n int) []runtime.StateKey {
	out := make([]runtime.StateKey, n)
	found := 0
	for i := 0; found < n; i++ {
		name := "k" + strconv.Itoa(i)
		if s := state.ShardOfValue("p", name, shards); s < n && out[s].Name == "" {
			out[s] = runtime.StateKey{Pack: "p", Name: name}
			found++
		}
	}
	return out
}

// sessionOn returns a session whose wait lives on shard.
func sessionOn(shard, shards int) string {
	for i := 0; ; i++ {
		s := "session-" + strconv.Itoa(i)
		if state.ShardOfWait(s, shards) == shard {
			return s
		}
	}
}

// leftovers lists intents and committed records still in a revision's shards, read
// straight from the API server.
func leftovers(t *testing.T, spec state.Spec) []string {
	t.Helper()
	var out []string
	for i := range spec.Shards {
		var cm corev1.ConfigMap
		if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: spec.Namespace, Name: state.ShardName(spec.Revision, i)}, &cm); err != nil {
			t.Fatal(err)
		}
		for k, v := range state.Entries(&cm) {
			// A record's status byte follows its id; 1 is committed.
			if strings.HasPrefix(k, "x.") || (strings.HasPrefix(k, "t.") && len(v) > 2 && v[2+int(v[1])] == 1) {
				out = append(out, cm.Name+"/"+k)
			}
		}
	}
	return out
}

// A cross-shard commit, with a conflict, an error, a lost answer or a crash injected
// before each of its API calls in turn: afterwards all of its writes (three values on
// three shards and a wait on a fourth, where it also read a key) are visible or none,
// a nil answer means all, an answer that does not say the outcome is unknown means
// none, and a recovery pass by another replica leaves no intent behind.
func TestCrossShardCommitIsAllOrNothingUnderFaults(t *testing.T) {
	testenv.Require(t, env)
	const shards = 4
	spec := state.Spec{Namespace: env.Namespace(t, "faults"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: shards}
	keys := keysOn(shards, 4)
	written, readOnly := keys[:3], keys[3]
	session := sessionOn(3, shards)
	recoverer := newStore(t, state.Options{LockTTL: -1})
	ensure(t, recoverer, spec)
	if err := put(t, recoverer.Namespace(spec), map[runtime.StateKey]string{readOnly: "r", written[0]: "v0", written[1]: "v0", written[2]: "v0"}); err != nil {
		t.Fatal(err)
	}
	txn, _ := recoverer.Namespace(spec).Begin(context.Background())
	txn.SetWaits(session, []runtime.Wait{{Pack: "p", Flow: "f", Data: []byte("v0"), Expires: time.Now().Add(time.Hour)}})
	if err := txn.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	prev := "v0"
	round := 0
	for _, f := range []fault{conflict, unavailable, lostAnswer, crash} {
		for at := 0; ; at++ {
			round++
			tag := "v" + strconv.Itoa(round)
			fc := &faultClient{}
			s := newStore(t, state.Options{CommitTimeout: 2 * time.Second, WrapClient: func(c client.Client) client.Client { fc.Client = c; return fc }})
			ns := s.Namespace(spec)
			ctx := context.Background()
			txn, err := ns.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if v, _, err := txn.Get(readOnly); err != nil || string(v) != "r" {
				t.Fatalf("read %q %v", v, err)
			}
			for _, k := range written {
				if _, _, err := txn.Get(k); err != nil {
					t.Fatal(err)
				}
				_ = txn.Put(k, []byte(tag))
			}
			txn.SetWaits(session, []runtime.Wait{{Pack: "p", Flow: "f", Data: []byte(tag), Expires: time.Now().Add(time.Hour)}})
			fc.arm(at, f)
			answer := txn.Commit(ctx)
			fc.settle()
			if !fc.hit {
				if answer != nil {
					t.Fatalf("%s: commit without a fault: %v", f, answer)
				}
				prev = tag
				break // every call of the commit has had its fault
			}
			name := fmt.Sprintf("%s before call %d", f, at)

			// Another replica reads everything in a transaction, which resolves what the
			// writer left and is validated like any other.
			seen := readAll(t, recoverer.Namespace(spec), written, session)
			all, none := true, true
			for _, v := range seen {
				all = all && v == tag
				none = none && v == prev
			}
			switch {
			case !all && !none:
				t.Fatalf("%s: partly applied: %v (answer %v)", name, seen, answer)
			case answer == nil && !all:
				t.Fatalf("%s: answered success, and the writes are not there: %v", name, seen)
			case answer != nil && all && !errors.Is(answer, runtime.ErrOutcomeUnknown):
				t.Fatalf("%s: answered %v, which says nothing was applied, and the writes are there", name, answer)
			}
			if all {
				prev = tag
			}
			if err := recoverer.Recover(ctx, spec); err != nil {
				t.Fatalf("%s: recover: %v", name, err)
			}
			if left := leftovers(t, spec); len(left) > 0 {
				t.Fatalf("%s: recovery left %v", name, left)
			}
		}
	}
	t.Logf("%d faults injected", round-4)
	if round < 12 {
		t.Fatalf("only %d rounds: the commit made fewer API calls than a cross-shard protocol needs", round)
	}
}

// Two replicas each move 200 units between two accounts on different shards and count
// the moves on a third: no transaction that saw the balances not sum to the total
// commits (serializable), and none is applied twice.
func TestCrossShardTransfersAreSerializable(t *testing.T) {
	testenv.Require(t, env)
	const shards = 4
	spec := state.Spec{Namespace: env.Namespace(t, "transfer"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: shards}
	keys := keysOn(shards, 3)
	a, b, c := keys[0], keys[2], keys[1]
	first := ensure(t, newStore(t, state.Options{}), spec)
	if err := put(t, first, map[runtime.StateKey]string{a: "1000", b: "0", c: "0"}); err != nil {
		t.Fatal(err)
	}
	replicas := []runtime.Store{first, ensure(t, newStore(t, state.Options{}), spec)}
	num := func(t runtime.Txn, k runtime.StateKey) int {
		v, _, err := t.Get(k)
		if err != nil {
			panic(err)
		}
		n, _ := strconv.Atoi(string(v))
		return n
	}
	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for _, ns := range replicas {
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 50 {
					var err error
					for attempt := 0; attempt < 1000; attempt++ {
						err = func() (err error) {
							defer func() {
								if r := recover(); r != nil {
									err = r.(error)
								}
							}()
							ctx := runtime.WithAttempt(context.Background(), attempt)
							txn, _ := ns.Begin(ctx)
							x, y, moved := num(txn, a), num(txn, b), num(txn, c)
							_ = txn.Put(a, []byte(strconv.Itoa(x-1)))
							_ = txn.Put(b, []byte(strconv.Itoa(y+1)))
							_ = txn.Put(c, []byte(strconv.Itoa(moved+1)))
							err = txn.Commit(ctx)
							// Reads come from each shard's newest known copy, so a transaction
							// may see shards at different times; it must then not commit.
							if x+y != 1000 && err == nil {
								return fmt.Errorf("committed after seeing balances %d + %d != 1000 after %d moves", x, y, moved)
							}
							return err
						}()
						if !errors.Is(err, runtime.ErrConflict) {
							break
						}
						time.Sleep(time.Duration(attempt%8) * time.Millisecond)
					}
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	fresh := newStore(t, state.Options{}).Namespace(spec)
	if x, _ := get(t, fresh, a); x != "600" {
		t.Errorf("account a: %s, want 600", x)
	}
	if y, _ := get(t, fresh, b); y != "400" {
		t.Errorf("account b: %s, want 400", y)
	}
	if n, _ := get(t, fresh, c); n != "400" {
		t.Errorf("moves: %s, want 400", n)
	}
	if left := leftovers(t, spec); len(left) > 0 {
		// Records are dropped by a later group commit; intents must all be gone.
		for _, l := range left {
			if strings.Contains(l, "/x.") {
				t.Errorf("intent left behind: %s", l)
			}
		}
	}
}

// A wait on one shard resumed by activities on two replicas that each count the resume
// on another shard: every wait is consumed once, so the count is the number of waits.
func TestCrossShardResumeOnce(t *testing.T) {
	testenv.Require(t, env)
	const shards = 4
	spec := state.Spec{Namespace: env.Namespace(t, "resume"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: shards}
	session := sessionOn(1, shards)
	count := keysOn(shards, 3)[2]
	replicas := []runtime.Store{ensure(t, newStore(t, state.Options{}), spec), ensure(t, newStore(t, state.Options{}), spec)}
	ctx := context.Background()
	const waits = 20
	for i := range waits {
		txn, _ := replicas[0].Begin(ctx)
		txn.SetWaits(session, []runtime.Wait{{Pack: "p", Flow: "f", Data: []byte(strconv.Itoa(i)), Expires: time.Now().Add(time.Hour)}})
		if err := txn.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		resumed := make([]bool, 2)
		for r, ns := range replicas {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for attempt := 0; attempt < 1000; attempt++ {
					actx := runtime.WithAttempt(ctx, attempt)
					txn, _ := ns.Begin(actx)
					ws, err := txn.Waits(session)
					if errors.Is(err, runtime.ErrConflict) {
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					if len(ws) == 0 {
						return // the other replica resumed it
					}
					v, _, err := txn.Get(count)
					if err != nil {
						continue
					}
					n, _ := strconv.Atoi(string(v))
					txn.SetWaits(session, nil)
					_ = txn.Put(count, []byte(strconv.Itoa(n+1)))
					err = txn.Commit(actx)
					if err == nil {
						resumed[r] = true
						return
					}
					if !errors.Is(err, runtime.ErrConflict) {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if resumed[0] == resumed[1] {
			t.Fatalf("wait %d resumed by %v", i, resumed)
		}
	}
	if n, _ := get(t, newStore(t, state.Options{}).Namespace(spec), count); n != strconv.Itoa(waits) {
		t.Fatalf("%d waits resumed %s times", waits, n)
	}
}

// The ConfigMap-backed store keeps the transaction contract the in-memory store keeps,
// with one shard and with four.
func TestNamespaceTransactions(t *testing.T) {
	testenv.Require(t, env)
	s := newStore(t, state.Options{})
	for _, shards := range []int{1, 4} {
		t.Run("shards="+strconv.Itoa(shards), func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) runtime.Store {
				return ensure(t, s, state.Spec{Namespace: env.Namespace(t, "txn"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: shards})
			})
		})
	}
}

// A transaction within one shard costs one update, as before cross-shard commits; one
// spanning two shards costs 2N = 4 (intent, decision, roll-forward, record dropped), as
// the package doc says.
func TestCommitCost(t *testing.T) {
	testenv.Require(t, env)
	const shards = 4
	s := newStore(t, state.Options{})
	ns := ensure(t, s, state.Spec{Namespace: env.Namespace(t, "cost"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: shards})
	keys := keysOn(shards, 2)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		keys []runtime.StateKey
		want int64
	}{
		{"one shard", keys[:1], 1},
		{"two shards", keys, 4},
	} {
		before, _ := s.Updates()
		txn, _ := ns.Begin(ctx)
		for _, k := range tc.keys {
			if _, _, err := txn.Get(k); err != nil {
				t.Fatal(err)
			}
			_ = txn.Put(k, []byte(tc.name))
		}
		if err := txn.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		// The record is dropped after the answer.
		deadline := time.Now().Add(5 * time.Second)
		var n int64
		for {
			after, _ := s.Updates()
			n = after - before
			if n >= tc.want || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(100 * time.Millisecond)
		after, _ := s.Updates()
		if n = after - before; n != tc.want {
			t.Errorf("%s: %d updates, want %d", tc.name, n, tc.want)
		}
	}
}
