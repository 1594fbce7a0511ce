package state_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/packhost/packhost/internal/packs"
	"github.com/packhost/packhost/internal/testenv"
	"github.com/packhost/packhost/runtime"
	"github.com/packhost/packhost/state"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Run(m, &env)) }

// newStore starts a Store, as one manager replica would.
func newStore(t testing.TB, opts state.Options) *state.Store {
	t.Helper()
	s, err := state.New(env.Config, env.Scheme, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if !s.WaitForSync(ctx) {
		t.Fatal("state cache did not sync")
	}
	return s
}

func ensure(t testing.TB, s *state.Store, spec state.Spec) *state.Namespace {
	t.Helper()
	if _, err := s.Ensure(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	return s.Namespace(spec)
}

func put(t testing.TB, ns runtime.Store, kv map[runtime.StateKey]string) error {
	t.Helper()
	ctx := context.Background()
	txn, err := ns.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range kv {
		if err := txn.Put(k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	return txn.Commit(ctx)
}

func get(t testing.TB, ns runtime.Store, k runtime.StateKey) (string, bool) {
	t.Helper()
	txn, err := ns.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer txn.Discard()
	v, ok, err := txn.Get(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(v), ok
}

func TestLayoutAndIdempotentCreate(t *testing.T) {
	testenv.Require(t, env)
	ctx := context.Background()
	s := newStore(t, state.Options{})
	nsName := env.Namespace(t, "layout")
	spec := state.Spec{Namespace: nsName, Revision: "bot-v1", RevisionUID: types.UID("0b1c2d3e-0000-4000-8000-000000000001"), Tenant: "acme", Shards: 3}
	for range 2 {
		names, err := s.Ensure(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(names, ",") != "bot-v1-state-0,bot-v1-state-1,bot-v1-state-2" {
			t.Fatalf("names: %v", names)
		}
	}
	var list corev1.ConfigMapList
	if err := env.Client.List(ctx, &list, client.InNamespace(nsName)); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 3 {
		t.Fatalf("%d ConfigMaps after two Ensure calls, want 3", len(list.Items))
	}
	for _, cm := range list.Items {
		l := cm.Labels
		if l[state.LabelComponent] != "state" || l[state.LabelTenant] != "acme" || l[state.LabelRevision] != "bot-v1" || l[state.LabelShard] == "" {
			t.Errorf("%s labels: %v", cm.Name, l)
		}
		if len(cm.OwnerReferences) != 1 || cm.OwnerReferences[0].Kind != "Revision" || cm.OwnerReferences[0].UID != spec.RevisionUID {
			t.Errorf("%s owner: %v", cm.Name, cm.OwnerReferences)
		}
	}
}

// Any guest key up to 512 bytes round-trips exactly, and a restarted process (a new
// Store) reads everything committed before.
func TestKeysRoundTripAndSurviveRestart(t *testing.T) {
	testenv.Require(t, env)
	spec := state.Spec{Namespace: env.Namespace(t, "keys"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: 4}
	first := newStore(t, state.Options{})
	ns := ensure(t, first, spec)
	kv := map[runtime.StateKey]string{}
	for i := range 40 {
		key := make([]byte, 1+i*512/40)
		_, _ = rand.Read(key)
		if i == 0 {
			key = bytes.Repeat([]byte{0xff}, runtime.MaxKeyLen)
		}
		kv[runtime.StateKey{Pack: "p", Name: string(key)}] = "value-" + strconv.Itoa(i)
	}
	kv[runtime.StateKey{Pack: "p", Name: "../../etc/passwd"}] = "odd"
	kv[runtime.StateKey{Pack: "other", Name: "same"}] = "pack other"
	kv[runtime.StateKey{Pack: "p", Name: "same"}] = "pack p"
	if err := put(t, ns, kv); err != nil {
		t.Fatal(err)
	}
	restarted := newStore(t, state.Options{})
	ns2 := restarted.Namespace(spec)
	for k, want := range kv {
		if got, ok := get(t, ns2, k); !ok || got != want {
			t.Fatalf("key %q of pack %s: got %q %v, want %q", k.Name, k.Pack, got, ok, want)
		}
	}
}

func TestForeignAndCorruptContent(t *testing.T) {
	testenv.Require(t, env)
	ctx := context.Background()
	s := newStore(t, state.Options{})
	nsName := env.Namespace(t, "foreign")

	// A ConfigMap packhost did not create is never adopted.
	foreign := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "r-state-0", Namespace: nsName}, Data: map[string]string{"x": "y"}}
	if err := env.Client.Create(ctx, foreign); err != nil {
		t.Fatal(err)
	}
	_, err := s.Ensure(ctx, state.Spec{Namespace: nsName, Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: 1})
	if err == nil || !strings.Contains(err.Error(), "is not revision r's state") {
		t.Fatalf("foreign ConfigMap: %v", err)
	}

	// Corrupted entries are reported and not trusted.
	spec := state.Spec{Namespace: nsName, Revision: "q", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: 1}
	ns := ensure(t, s, spec)
	key := runtime.StateKey{Pack: "p", Name: "k"}
	if err := put(t, ns, map[runtime.StateKey]string{key: "good"}); err != nil {
		t.Fatal(err)
	}
	cm := &corev1.ConfigMap{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: nsName, Name: "q-state-0"}, cm); err != nil {
		t.Fatal(err)
	}
	for k := range cm.BinaryData {
		cm.BinaryData[k] = []byte("garbage")
	}
	cm.BinaryData["not-ours"] = []byte("x")
	if err := env.Client.Update(ctx, cm); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(s.Problems(nsName, "q", 1)) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	problems := strings.Join(s.Problems(nsName, "q", 1), "\n")
	if !strings.Contains(problems, "foreign key") || !strings.Contains(problems, "corrupt") {
		t.Fatalf("problems: %q", problems)
	}
	txn, _ := ns.Begin(ctx)
	if _, _, err := txn.Get(key); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("reading a corrupted entry: %v", err)
	}

	// A write to the corrupted page is refused, so nothing it held is dropped; a later,
	// healthy write elsewhere in the shard does not hide the corruption.
	if err := put(t, ns, map[runtime.StateKey]string{key: "overwrite"}); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("a write to a corrupted page: %v", err)
	}
	other := "other"
	for i := 0; state.PageOfValue("p", other) == state.PageOfValue("p", "k"); i++ {
		other = "other-" + strconv.Itoa(i)
	}
	if err := put(t, ns, map[runtime.StateKey]string{{Pack: "p", Name: other}: "fine"}); err != nil {
		t.Fatal(err)
	}
	if problems := strings.Join(s.Problems(nsName, "q", 1), "\n"); !strings.Contains(problems, "foreign key") || !strings.Contains(problems, "corrupt") {
		t.Fatalf("problems after an unrelated write: %q", problems)
	}
	// Removing the bad entries clears the report.
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: nsName, Name: "q-state-0"}, cm); err != nil {
		t.Fatal(err)
	}
	for k, v := range cm.BinaryData {
		if string(v) == "garbage" || k == "not-ours" {
			delete(cm.BinaryData, k)
		}
	}
	if err := env.Client.Update(ctx, cm); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for len(s.Problems(nsName, "q", 1)) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if p := s.Problems(nsName, "q", 1); len(p) > 0 {
		t.Fatalf("problems outlived the bad entries: %q", p)
	}
}

func TestStateFull(t *testing.T) {
	testenv.Require(t, env)
	s := newStore(t, state.Options{ShardBudget: 4 << 10})
	spec := state.Spec{Namespace: env.Namespace(t, "full"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: 1}
	ns := ensure(t, s, spec)
	stored := map[runtime.StateKey]string{}
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		k := runtime.StateKey{Pack: "p", Name: "k" + strconv.Itoa(i)}
		v := strings.Repeat(strconv.Itoa(i%10), 500)
		if err = put(t, ns, map[runtime.StateKey]string{k: v}); err == nil {
			stored[k] = v
		}
	}
	if !errors.Is(err, runtime.ErrStateFull) || !strings.Contains(err.Error(), "revision r") {
		t.Fatalf("filling a 4 KiB shard: %v", err)
	}
	if len(stored) < 5 {
		t.Fatalf("only %d values fit in 4 KiB", len(stored))
	}
	fresh := newStore(t, state.Options{}).Namespace(spec)
	for k, want := range stored {
		if got, ok := get(t, fresh, k); !ok || got != want {
			t.Fatalf("after state full, %s lost: %q %v", k.Name, got, ok)
		}
	}
	// Deleting makes room again.
	for k := range stored {
		txn, _ := ns.Begin(context.Background())
		_ = txn.Delete(k)
		if err := txn.Commit(context.Background()); err != nil {
			t.Fatalf("delete in a full shard: %v", err)
		}
		break
	}
	if err := put(t, ns, map[runtime.StateKey]string{{Pack: "p", Name: "after"}: "small"}); err != nil {
		t.Fatalf("write after freeing room: %v", err)
	}
}

// Two revisions of one tenant never see each other's keys or waits.
func TestRevisionsAreIsolated(t *testing.T) {
	testenv.Require(t, env)
	s := newStore(t, state.Options{})
	nsName := env.Namespace(t, "isolation")
	a := ensure(t, s, state.Spec{Namespace: nsName, Revision: "bot-a", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: 2})
	b := ensure(t, s, state.Spec{Namespace: nsName, Revision: "bot-b", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: 2})
	key := runtime.StateKey{Pack: "bot", Name: "count"}
	if err := put(t, a, map[runtime.StateKey]string{key: "41"}); err != nil {
		t.Fatal(err)
	}
	if v, ok := get(t, b, key); ok {
		t.Fatalf("revision b sees revision a's key: %q", v)
	}
	ctx := context.Background()
	txn, _ := a.Begin(ctx)
	txn.SetWaits("sess-1", []runtime.Wait{{Pack: "bot", Flow: "survey", Data: []byte("q1"), Expires: time.Now().Add(time.Hour)}})
	if err := txn.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	tb, _ := b.Begin(ctx)
	if ws, err := tb.Waits("sess-1"); err != nil || len(ws) != 0 {
		t.Fatalf("revision b sees revision a's wait: %+v %v", ws, err)
	}
	tb.Discard()
	// The same session parks another flow on b: each flow is pinned to its revision.
	tb, _ = b.Begin(ctx)
	tb.SetWaits("sess-1", []runtime.Wait{{Pack: "bot", Flow: "echo", Expires: time.Now().Add(3 * time.Hour)}})
	if err := tb.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	pins := s.Pins(nsName, "acme", "sess-1", time.Now())
	if len(pins) != 2 || pins[0].Revision != nsName+"/bot-a" || pins[0].Flow != "survey" || pins[1].Revision != nsName+"/bot-b" || pins[1].Flow != "echo" {
		t.Fatalf("session index: %+v, want survey on bot-a and echo on bot-b", pins)
	}
	if pins := s.Pins(nsName, "acme", "sess-1", time.Now().Add(2*time.Hour)); len(pins) != 1 || pins[0].Flow != "echo" {
		t.Fatalf("an expired wait still pins its flow: %+v", pins)
	}
	for _, rev := range []string{"bot-a", "bot-b"} {
		if n := s.OpenSessions(nsName, rev, time.Now()); n != 1 {
			t.Fatalf("open sessions of %s: %d", rev, n)
		}
	}
}

// runtimeOn loads the counter pack into a fresh engine (one per replica) on ns.
func runtimeOn(t testing.TB, ns runtime.Store, pack string) *runtime.Revision {
	t.Helper()
	return runtimeOnWith(t, ns, pack, 30*time.Second)
}

// runtimeOnWith is runtimeOn with an activity deadline.
func runtimeOnWith(t testing.TB, ns runtime.Store, pack string, timeout time.Duration) *runtime.Revision {
	t.Helper()
	b, err := packs.Build(pack)
	if err != nil {
		t.Fatal(err)
	}
	return runtimeOfPack(t, ns, b, timeout)
}

// runtimeOfPack is runtimeOnWith for a pack given as bytes.
func runtimeOfPack(t testing.TB, ns runtime.Store, pack []byte, timeout time.Duration) *runtime.Revision {
	t.Helper()
	ctx := context.Background()
	e, err := runtime.NewEngine(ctx, runtime.EngineConfig{CacheDir: packCache})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close(ctx) })
	p, err := e.Compile(ctx, pack)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := e.NewRevision(ctx, runtime.RevisionConfig{
		Name: "r", Env: "prod", Tenant: "acme", Store: ns, Logger: logr.Discard(), Packs: []*runtime.Pack{p},
		Policy: runtime.Policy{StateRead: true, StateWrite: true},
		Limits: runtime.Limits{MaxConcurrency: 64, Timeout: timeout, MaxReruns: 1000},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rev.Close(ctx) })
	return rev
}

var packCache = os.TempDir() + "/packhost-state-test-cache"

// An activity's write is on the API server when Handle returns.
func TestDurableBeforeAnswered(t *testing.T) {
	testenv.Require(t, env)
	spec := state.Spec{Namespace: env.Namespace(t, "durable"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: 1}
	ns := ensure(t, newStore(t, state.Options{}), spec)
	rev := runtimeOn(t, ns, "counter")
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if _, err := rev.Handle(ctx, &runtime.Activity{Kind: "message"}); err != nil {
			t.Fatal(err)
		}
		// Read straight from the API server, not through any cache.
		cm := &corev1.ConfigMap{}
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: spec.Namespace, Name: "r-state-0"}, cm); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, v := range state.Entries(cm) {
			found = found || bytes.HasSuffix(v, []byte("count"+strconv.Itoa(i)))
		}
		if !found {
			t.Fatalf("after activity %d returned, the API server does not hold count=%d", i, i)
		}
	}
}

// Two replicas (independent stores and engines) each run 200 increments of one counter
// through the runtime: the final value is exactly 400.
// It runs with two and with four shards.
func TestReplicasNeverLoseAWrite(t *testing.T) {
	testenv.Require(t, env)
	for _, shards := range []int{2, 4} {
		t.Run("shards="+strconv.Itoa(shards), func(t *testing.T) { replicasNeverLoseAWrite(t, shards) })
	}
}

func replicasNeverLoseAWrite(t *testing.T, shards int) {
	spec := state.Spec{Namespace: env.Namespace(t, "replicas"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: shards}
	replicas := []*runtime.Revision{
		runtimeOn(t, ensure(t, newStore(t, state.Options{}), spec), "counter"),
		runtimeOn(t, ensure(t, newStore(t, state.Options{}), spec), "counter"),
	}
	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for _, rev := range replicas {
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 25 {
					if _, err := rev.Handle(context.Background(), &runtime.Activity{Kind: "message"}); err != nil {
						errs <- err
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("increment failed: %v", err)
	}
	fresh := newStore(t, state.Options{}).Namespace(spec)
	if v, _ := get(t, fresh, runtime.StateKey{Pack: "counter", Name: "count"}); v != "400" {
		t.Fatalf("two replicas × 200 increments ended at %q, want 400", v)
	}
}

// Two replicas racing to resume one wait: exactly one resumes it, with one shard and
// with four.
func TestWaitResumedOnceAcrossReplicas(t *testing.T) {
	testenv.Require(t, env)
	for _, shards := range []int{1, 4} {
		t.Run("shards="+strconv.Itoa(shards), func(t *testing.T) { waitResumedOnce(t, shards) })
	}
}

func waitResumedOnce(t *testing.T, shards int) {
	spec := state.Spec{Namespace: env.Namespace(t, "race"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: shards}
	s1, s2 := newStore(t, state.Options{}), newStore(t, state.Options{})
	r1 := runtimeOn(t, ensure(t, s1, spec), "survey")
	r2 := runtimeOn(t, s2.Namespace(spec), "survey")
	ctx := context.Background()
	a := &runtime.Activity{Kind: "message", UserID: "ann", Payload: []byte(`{}`)}
	if _, err := r1.Handle(ctx, a); err != nil {
		t.Fatal(err)
	}
	ans := &runtime.Activity{Kind: "message", UserID: "ann", Payload: []byte(`"Ann"`)}
	out := make([]string, 2)
	var wg sync.WaitGroup
	for i, r := range []*runtime.Revision{r1, r2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := r.Handle(ctx, ans)
			if err != nil {
				out[i] = err.Error()
				return
			}
			out[i] = string(res[0].Payload)
		}()
	}
	wg.Wait()
	step2 := 0
	for _, o := range out {
		if strings.Contains(o, `"step":2`) {
			step2++
		}
	}
	// One resumes the wait (step 2); the other, re-run after the conflict, resumes the
	// wait the winner parked (step 3): the first wait was consumed once.
	if step2 != 1 || !strings.Contains(out[0]+out[1], `"step":3`) {
		t.Fatalf("racing resumes: %v", out)
	}
}

// Two flows of one session driven at once from two replicas, with the session's waits
// and the flows' keys on one shard and on four: each replica's turn parks or resumes
// its own flow's wait exactly once (the loser of a conflict re-runs on the winner's
// commit), so each flow collects exactly its own three answers.
func TestTwoFlowsOfOneSessionAcrossReplicas(t *testing.T) {
	testenv.Require(t, env)
	survey, err := packs.Build("survey")
	if err != nil {
		t.Fatal(err)
	}
	twoFlows := packs.WithManifest(survey, `{"abi":1,"pack_id":"survey","version":"1","flows":[{"id":"a","entry":true},{"id":"b","entry":true}],"capabilities":{"session":true}}`)
	for _, shards := range []int{1, 4} {
		t.Run("shards="+strconv.Itoa(shards), func(t *testing.T) {
			spec := state.Spec{Namespace: env.Namespace(t, "flows"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: shards}
			s1, s2 := newStore(t, state.Options{}), newStore(t, state.Options{})
			replicas := map[string]*runtime.Revision{
				"a": runtimeOfPack(t, ensure(t, s1, spec), twoFlows, 30*time.Second),
				"b": runtimeOfPack(t, s2.Namespace(spec), twoFlows, 30*time.Second),
			}
			ctx := context.Background()
			for round, want := range []string{`"step":1`, `"step":2`, `"step":3`, `"done":true`} {
				var wg sync.WaitGroup
				var mu sync.Mutex
				got := map[string]string{}
				for flow, rev := range replicas {
					wg.Add(1)
					go func() {
						defer wg.Done()
						a := &runtime.Activity{Kind: "message", UserID: "ann", FlowID: flow, Payload: []byte(`"` + flow + strconv.Itoa(round) + `"`)}
						res, err := rev.Handle(ctx, a)
						mu.Lock()
						defer mu.Unlock()
						if err != nil {
							got[flow] = err.Error()
							return
						}
						got[flow] = string(res[0].Payload)
					}()
				}
				wg.Wait()
				for flow := range replicas {
					if !strings.Contains(got[flow], want) {
						t.Fatalf("round %d, flow %s: %s, want %s (all: %v)", round, flow, got[flow], want, got)
					}
					if done := `{"done":true,"answers":["` + flow + `1","` + flow + `2","` + flow + `3"]}`; round == 3 && got[flow] != done {
						t.Fatalf("flow %s collected %s, want %s", flow, got[flow], done)
					}
				}
			}
			// s1 reads its watch's copy, which learns of s2's last commit a moment later.
			session := runtime.SessionKey("prod", "acme", &runtime.Activity{UserID: "ann"})
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				txn, _ := s1.Namespace(spec).Begin(ctx)
				ws, err := txn.Waits(session)
				txn.Discard()
				if err == nil && len(ws) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("waits left after both flows completed: %+v %v", ws, err)
				}
			}
		})
	}
}

// A wait stored in the one-wait form of before sessions could park several flows is
// still found: the session's next activity resumes it, and the turn stores the
// session's waits in the new form.
func TestLegacyWaitIsResumed(t *testing.T) {
	testenv.Require(t, env)
	ctx := context.Background()
	s := newStore(t, state.Options{})
	spec := state.Spec{Namespace: env.Namespace(t, "legacy"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: 1}
	rev := runtimeOn(t, ensure(t, s, spec), "survey")
	a := &runtime.Activity{Kind: "message", UserID: "ann", Payload: []byte(`"operators"`)}
	session := runtime.SessionKey("prod", "acme", a)
	key, blob := state.LegacyWaitEntry(session, runtime.Wait{Pack: "survey", Flow: "survey", Data: []byte(`"Ann"`), Expires: time.Now().Add(time.Hour)})
	cm := &corev1.ConfigMap{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: spec.Namespace, Name: state.ShardName("r", 0)}, cm); err != nil {
		t.Fatal(err)
	}
	if cm.BinaryData == nil {
		cm.BinaryData = map[string][]byte{}
	}
	cm.BinaryData[key] = blob
	if err := env.Client.Update(ctx, cm); err != nil {
		t.Fatal(err)
	}
	out, err := rev.Handle(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(out[0].Payload); !strings.Contains(got, `"step":3`) {
		t.Fatalf("the legacy wait (one answer parked) was not resumed: %s", got)
	}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: spec.Namespace, Name: state.ShardName("r", 0)}, cm); err != nil {
		t.Fatal(err)
	}
	if entry := state.Entries(cm)[key]; string(entry) == string(blob) || len(entry) == 0 {
		t.Fatalf("the turn left the session's waits as they were: %q", entry)
	}
	out, err = rev.Handle(ctx, &runtime.Activity{Kind: "message", UserID: "ann", Payload: []byte(`"ann@example.com"`)})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(out[0].Payload); got != `{"done":true,"answers":["Ann","operators","ann@example.com"]}` {
		t.Fatalf("the migrated wait's last turn: %s", got)
	}
}

// Concurrent activities share updates: 64 activities writing their own keys take far
// fewer than 64 updates.
func TestGroupCommit(t *testing.T) {
	testenv.Require(t, env)
	s := newStore(t, state.Options{})
	ns := ensure(t, s, state.Spec{Namespace: env.Namespace(t, "group"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: 1})
	before, _ := s.Updates()
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := put(t, ns, map[runtime.StateKey]string{{Pack: "p", Name: strconv.Itoa(i)}: "v"}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	after, _ := s.Updates()
	if n := after - before; n > 32 {
		t.Fatalf("64 concurrent commits took %d updates; group commit should take far fewer", n)
	}
	for i := range 64 {
		if _, ok := get(t, ns, runtime.StateKey{Pack: "p", Name: strconv.Itoa(i)}); !ok {
			t.Fatalf("key %d lost", i)
		}
	}
}

func TestRetention(t *testing.T) {
	testenv.Require(t, env)
	ctx := context.Background()
	s := newStore(t, state.Options{})
	nsName := env.Namespace(t, "retention")
	uid := types.UID("0b1c2d3e-0000-4000-8000-000000000002")
	for _, tc := range []struct {
		rev    string
		retain bool
	}{{"gone", false}, {"kept", true}} {
		spec := state.Spec{Namespace: nsName, Revision: tc.rev, RevisionUID: uid, Tenant: "acme", Shards: 2}
		ensure(t, s, spec)
		if err := s.Remove(ctx, spec, tc.retain); err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			cm := &corev1.ConfigMap{}
			err := env.Client.Get(ctx, types.NamespacedName{Namespace: nsName, Name: state.ShardName(tc.rev, i)}, cm)
			switch {
			case !tc.retain && !apierrors.IsNotFound(err):
				t.Errorf("retention Delete left %s: %v", cm.Name, err)
			case tc.retain && err != nil:
				t.Errorf("retention Retain lost shard %d: %v", i, err)
			case tc.retain && len(cm.OwnerReferences) != 0:
				t.Errorf("retained %s still owned: %v", cm.Name, cm.OwnerReferences)
			}
		}
	}
}

// A session that parks a wait and never comes back must not hold its shard's room
// forever: commits sweep waits well past their expiry, and leave live waits, waits an
// activity of the same commit reads, and entries they cannot vouch for alone.
func TestAbandonedWaitsAreSwept(t *testing.T) {
	testenv.Require(t, env)
	s := newStore(t, state.Options{ShardBudget: 4 << 10})
	spec := state.Spec{Namespace: env.Namespace(t, "sweep"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: 1}
	ns := ensure(t, s, spec)
	ctx := context.Background()
	park := func(session string, expires time.Time) error {
		txn, err := ns.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		txn.SetWaits(session, []runtime.Wait{{Pack: "survey", Flow: "ask", Data: bytes.Repeat([]byte("d"), 300), Expires: expires}})
		return txn.Commit(ctx)
	}
	if err := park("live", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	// A session with one flow's wait expired and another's live keeps both.
	txn, err := ns.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	txn.SetWaits("mixed", []runtime.Wait{{Pack: "survey", Flow: "ask", Expires: time.Now().Add(-time.Hour)}, {Pack: "survey", Flow: "feedback", Expires: time.Now().Add(time.Hour)}})
	if err := txn.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// Sixty abandoned sessions of 300 bytes each are four times the 4 KiB budget.
	for i := range 60 {
		if err := park("gone-"+strconv.Itoa(i), time.Now().Add(-time.Hour)); err != nil {
			t.Fatalf("parking abandoned wait %d: %v", i, err)
		}
	}
	// The last abandoned session comes back: its activity reads its expired wait and
	// clears it in the same commit that would sweep it, without a conflict.
	txn, err = ns.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ws, err := txn.Waits("gone-59"); err != nil || len(ws) != 1 {
		t.Fatalf("the expired wait of gone-59 before the sweep: %v %v", ws, err)
	}
	txn.SetWaits("gone-59", nil)
	if err := txn.Put(runtime.StateKey{Pack: "survey", Name: "k"}, []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := txn.Commit(ctx); err != nil {
		t.Fatalf("resuming an expired session: %v", err)
	}
	var cm corev1.ConfigMap
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: spec.Namespace, Name: state.ShardName("r", 0)}, &cm); err != nil {
		t.Fatal(err)
	}
	waits := 0
	for k := range state.Entries(&cm) {
		if strings.HasPrefix(k, "w.") {
			waits++
		}
	}
	if waits != 2 {
		t.Errorf("the shard holds %d sessions' waits, want only the live and the mixed one", waits)
	}
	fresh := newStore(t, state.Options{}).Namespace(spec)
	txn, err = fresh.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer txn.Discard()
	if ws, err := txn.Waits("live"); err != nil || len(ws) != 1 {
		t.Fatalf("the live wait after the sweep: %v %v", ws, err)
	}
	if ws, err := txn.Waits("mixed"); err != nil || len(ws) != 2 {
		t.Fatalf("the mixed session's waits after the sweep: %v %v", ws, err)
	}
}
