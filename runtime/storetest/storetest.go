// Package storetest is the transaction contract every runtime.Store keeps, as a test
// suite: the in-memory store and the ConfigMap-backed one both run it.
package storetest

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/packhost/packhost/runtime"
)

// Run runs the suite; open returns an empty store, each call a new one.
func Run(t *testing.T, open func(t *testing.T) runtime.Store) {
	for _, tc := range []struct {
		name string
		test func(t *testing.T, s runtime.Store)
	}{
		{"ReadsOwnWrites", readsOwnWrites},
		{"CommitMakesVisibleDiscardDrops", commitMakesVisible},
		{"LostUpdateConflicts", lostUpdateConflicts},
		{"AllOrNothingOnConflict", allOrNothingOnConflict},
		{"WriteSkewConflicts", writeSkewConflicts},
		{"WaitConsumedOnce", waitConsumedOnce},
		{"WaitsPerFlowRoundTrip", waitsPerFlowRoundTrip},
		{"ParksOnTwoFlowsSerialize", parksOnTwoFlowsSerialize},
		{"ReadOnlyIsValidated", readOnlyIsValidated},
		{"BlindWritesInCommitOrder", blindWritesInCommitOrder},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.test(t, open(t)) })
	}
}

// keys are enough keys that a sharded store spreads them over every shard.
func keys(n int) []runtime.StateKey {
	out := make([]runtime.StateKey, n)
	for i := range out {
		out[i] = runtime.StateKey{Pack: "p", Name: "key-" + strconv.Itoa(i)}
	}
	return out
}

func begin(t *testing.T, s runtime.Store) runtime.Txn {
	t.Helper()
	txn, err := s.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return txn
}

func mustGet(t *testing.T, txn runtime.Txn, k runtime.StateKey) (string, bool) {
	t.Helper()
	v, ok, err := txn.Get(k)
	if err != nil {
		t.Fatalf("get %s: %v", k.Name, err)
	}
	return string(v), ok
}

func commit(t *testing.T, txn runtime.Txn) {
	t.Helper()
	if err := txn.Commit(context.Background()); err != nil {
		t.Fatalf("commit: %v", err)
	}
}

// committed reads k in a fresh transaction.
func committed(t *testing.T, s runtime.Store, k runtime.StateKey) (string, bool) {
	t.Helper()
	txn := begin(t, s)
	defer txn.Discard()
	return mustGet(t, txn, k)
}

func readsOwnWrites(t *testing.T, s runtime.Store) {
	txn := begin(t, s)
	k := keys(1)[0]
	_ = txn.Put(k, []byte("v"))
	if v, ok := mustGet(t, txn, k); !ok || v != "v" {
		t.Fatalf("own write: %q %v", v, ok)
	}
	_ = txn.Delete(k)
	if _, ok := mustGet(t, txn, k); ok {
		t.Fatal("own delete still reads the value")
	}
	ws := []runtime.Wait{
		{Pack: "p", Flow: "f", Data: []byte("d"), Expires: time.Now().Add(time.Hour)},
		{Pack: "p", Flow: "g", Data: []byte("e"), Expires: time.Now().Add(time.Hour)},
	}
	txn.SetWaits("s", ws)
	ws[0].Data = []byte("changed after SetWaits")
	if got, err := txn.Waits("s"); err != nil || len(got) != 2 || string(got[0].Data) != "d" || got[1].Flow != "g" {
		t.Fatalf("own waits: %+v %v", got, err)
	}
	txn.SetWaits("s", nil)
	if got, err := txn.Waits("s"); err != nil || len(got) != 0 {
		t.Fatalf("own cleared waits: %+v %v", got, err)
	}
	txn.Discard()
}

func commitMakesVisible(t *testing.T, s runtime.Store) {
	ks := keys(8)
	txn := begin(t, s)
	for i, k := range ks {
		_ = txn.Put(k, []byte(strconv.Itoa(i)))
	}
	commit(t, txn)
	for i, k := range ks {
		if v, ok := committed(t, s, k); !ok || v != strconv.Itoa(i) {
			t.Fatalf("%s after commit: %q %v", k.Name, v, ok)
		}
	}
	txn = begin(t, s)
	_ = txn.Put(ks[0], []byte("dropped"))
	txn.Discard()
	if err := txn.Commit(context.Background()); err != nil {
		t.Fatalf("commit after discard: %v", err)
	}
	if v, _ := committed(t, s, ks[0]); v != "0" {
		t.Fatalf("a discarded write is visible: %q", v)
	}
}

// Two read-modify-writes of one key: the second to commit conflicts.
func lostUpdateConflicts(t *testing.T, s runtime.Store) {
	k := keys(1)[0]
	a, b := begin(t, s), begin(t, s)
	mustGet(t, a, k)
	mustGet(t, b, k)
	_ = a.Put(k, []byte("a"))
	_ = b.Put(k, []byte("b"))
	commit(t, a)
	if err := b.Commit(context.Background()); !errors.Is(err, runtime.ErrConflict) {
		t.Fatalf("second read-modify-write: %v, want a conflict", err)
	}
	if v, _ := committed(t, s, k); v != "a" {
		t.Fatalf("value %q, want the first commit's", v)
	}
}

// A transaction writing many keys (every shard of a sharded store) whose one read
// changed applies none of them.
func allOrNothingOnConflict(t *testing.T, s runtime.Store) {
	ks := keys(16)
	read := runtime.StateKey{Pack: "p", Name: "read"}
	txn := begin(t, s)
	mustGet(t, txn, read)
	for _, k := range ks {
		_ = txn.Put(k, []byte("x"))
	}
	txn.SetWaits("s", []runtime.Wait{{Pack: "p", Flow: "f", Expires: time.Now().Add(time.Hour)}})
	other := begin(t, s)
	_ = other.Put(read, []byte("changed"))
	commit(t, other)
	if err := txn.Commit(context.Background()); !errors.Is(err, runtime.ErrConflict) {
		t.Fatalf("commit after a read changed: %v, want a conflict", err)
	}
	for _, k := range ks {
		if v, ok := committed(t, s, k); ok {
			t.Fatalf("%s = %q applied by a transaction that conflicted", k.Name, v)
		}
	}
	check := begin(t, s)
	defer check.Discard()
	if ws, err := check.Waits("s"); err != nil || len(ws) != 0 {
		t.Fatalf("wait of a transaction that conflicted: %+v %v", ws, err)
	}
}

// Each transaction reads the key the other writes (on different shards, where there
// are shards): one of them must conflict, or both could act on a state that never was.
func writeSkewConflicts(t *testing.T, s runtime.Store) {
	ks := keys(16)
	x, y := ks[0], ks[len(ks)-1]
	a, b := begin(t, s), begin(t, s)
	mustGet(t, a, x)
	mustGet(t, b, y)
	_ = a.Put(y, []byte("a"))
	_ = b.Put(x, []byte("b"))
	errA, errB := a.Commit(context.Background()), b.Commit(context.Background())
	if errA == nil && errB == nil {
		t.Fatal("write skew: both transactions committed")
	}
	for _, err := range []error{errA, errB} {
		if err != nil && !errors.Is(err, runtime.ErrConflict) {
			t.Fatalf("write skew: %v, want a conflict", err)
		}
	}
}

func waitConsumedOnce(t *testing.T, s runtime.Store) {
	txn := begin(t, s)
	txn.SetWaits("s", []runtime.Wait{{Pack: "p", Flow: "f", Data: []byte("d"), Expires: time.Now().Add(time.Hour)}})
	commit(t, txn)
	count := keys(3)[2]
	var txns []runtime.Txn
	for range 2 {
		txn := begin(t, s)
		ws, err := txn.Waits("s")
		if err != nil || len(ws) != 1 {
			t.Fatalf("waits: %+v %v", ws, err)
		}
		txn.SetWaits("s", nil)
		_ = txn.Put(count, []byte("resumed"))
		txns = append(txns, txn)
	}
	commit(t, txns[0])
	if err := txns[1].Commit(context.Background()); !errors.Is(err, runtime.ErrConflict) {
		t.Fatalf("second resume of one wait: %v, want a conflict", err)
	}
}

// A session's waits in several flows come back as committed: order, packs, flows,
// data and expiry, to the nanosecond; other sessions' sets are their own.
func waitsPerFlowRoundTrip(t *testing.T, s runtime.Store) {
	at := time.Unix(1_800_000_000, 123456789)
	want := []runtime.Wait{
		{Pack: "survey", Flow: "survey", Data: []byte("q1"), Expires: at},
		{Pack: "survey", Flow: "feedback", Data: nil, Expires: at.Add(time.Second)},
		{Pack: "quiz", Flow: "survey", Data: []byte{0, 0xff, '\n'}, Expires: at.Add(time.Hour)},
	}
	txn := begin(t, s)
	txn.SetWaits("s1", want)
	txn.SetWaits("s2", want[:1])
	commit(t, txn)
	check := begin(t, s)
	defer check.Discard()
	got, err := check.Waits("s1")
	if err != nil || len(got) != len(want) {
		t.Fatalf("waits of s1: %+v %v", got, err)
	}
	for i := range want {
		if got[i].Pack != want[i].Pack || got[i].Flow != want[i].Flow || string(got[i].Data) != string(want[i].Data) || !got[i].Expires.Equal(want[i].Expires) {
			t.Fatalf("wait %d came back as %+v, want %+v", i, got[i], want[i])
		}
	}
	if got, err := check.Waits("s2"); err != nil || len(got) != 1 || got[0].Flow != "survey" {
		t.Fatalf("waits of s2: %+v %v", got, err)
	}
	if got, err := check.Waits("s3"); err != nil || len(got) != 0 {
		t.Fatalf("waits of a session that parked none: %+v %v", got, err)
	}
}

// Two activities of one session that each park another flow, from the same read of
// the session's waits: the second to commit conflicts (it would drop the first's
// wait), and run again on what the first committed, both waits are kept.
func parksOnTwoFlowsSerialize(t *testing.T, s runtime.Store) {
	park := func(txn runtime.Txn, flow string) {
		t.Helper()
		ws, err := txn.Waits("s")
		if err != nil {
			t.Fatal(err)
		}
		txn.SetWaits("s", append(ws, runtime.Wait{Pack: "p", Flow: flow, Expires: time.Now().Add(time.Hour)}))
	}
	a, b := begin(t, s), begin(t, s)
	park(a, "x")
	park(b, "y")
	commit(t, a)
	if err := b.Commit(context.Background()); !errors.Is(err, runtime.ErrConflict) {
		t.Fatalf("a park from a stale set of waits: %v, want a conflict", err)
	}
	again := begin(t, s)
	park(again, "y")
	commit(t, again)
	check := begin(t, s)
	defer check.Discard()
	if ws, err := check.Waits("s"); err != nil || len(ws) != 2 || ws[0].Flow != "x" || ws[1].Flow != "y" {
		t.Fatalf("waits after both parks: %+v %v", ws, err)
	}
}

// A transaction that wrote nothing commits when what it read (on every shard, where
// there are shards) is still as it read it, and conflicts otherwise: its answer is
// serializable too.
func readOnlyIsValidated(t *testing.T, s runtime.Store) {
	ks := keys(16)
	setup := begin(t, s)
	for _, k := range ks {
		_ = setup.Put(k, []byte("0"))
	}
	commit(t, setup)
	txn := begin(t, s)
	for _, k := range ks {
		mustGet(t, txn, k)
	}
	if err := txn.Commit(context.Background()); err != nil {
		t.Fatalf("read-only commit, nothing changed: %v", err)
	}
	txn = begin(t, s)
	for _, k := range ks {
		mustGet(t, txn, k)
	}
	other := begin(t, s)
	_ = other.Put(ks[len(ks)-1], []byte("1"))
	commit(t, other)
	if err := txn.Commit(context.Background()); !errors.Is(err, runtime.ErrConflict) {
		t.Fatalf("read-only commit after a read changed: %v, want a conflict", err)
	}
}

// Blind writes of one key by two transactions: the later commit's value stays.
func blindWritesInCommitOrder(t *testing.T, s runtime.Store) {
	ks := keys(16)
	a, b := begin(t, s), begin(t, s)
	for _, k := range ks {
		_ = a.Put(k, []byte("a"))
		_ = b.Put(k, []byte("b"))
	}
	commit(t, a)
	commit(t, b)
	for _, k := range ks {
		if v, _ := committed(t, s, k); v != "b" {
			t.Fatalf("%s = %q after two blind commits, want the later one's", k.Name, v)
		}
	}
}
