package state_test

import (
	"bytes"
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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/packhost/packhost/internal/testenv"
	"github.com/packhost/packhost/runtime"
	"github.com/packhost/packhost/state"
)

// shardObjects reads a shard and its journal (nil when there is none) straight from
// the API server.
func shardObjects(t *testing.T, spec state.Spec, n int) (base, journal *corev1.ConfigMap) {
	t.Helper()
	ctx := context.Background()
	base = &corev1.ConfigMap{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: spec.Namespace, Name: state.ShardName(spec.Revision, n)}, base); err != nil {
		t.Fatal(err)
	}
	journal = &corev1.ConfigMap{}
	err := env.Client.Get(ctx, types.NamespacedName{Namespace: spec.Namespace, Name: state.JournalName(spec.Revision, n)}, journal)
	if apierrors.IsNotFound(err) {
		return base, nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return base, journal
}

// records counts the records a journal holds.
func records(journal *corev1.ConfigMap) int { return len(state.JournalRecords(journal)) }

// holds reports whether a shard's entries, as stored, hold a value ending in suffix.
func holds(cm *corev1.ConfigMap, suffix string) bool {
	for _, v := range state.Entries(cm) {
		if bytes.HasSuffix(v, []byte(suffix)) {
			return true
		}
	}
	return false
}

// fillShard writes n values of about 100 bytes into ns, 250 per commit.
func fillShard(t *testing.T, ns runtime.Store, n int) {
	t.Helper()
	for i := 0; i < n; {
		kv := map[runtime.StateKey]string{}
		for j := 0; j < 250 && i < n; j, i = j+1, i+1 {
			kv[runtime.StateKey{Pack: "p", Name: fmt.Sprintf("fill-%05d", i)}] = strings.Repeat("x", 40)
		}
		if err := put(t, ns, kv); err != nil {
			t.Fatalf("fill to %d entries: %v", n, err)
		}
	}
}

// increment adds one to key in a transaction, running it again on conflict as the
// runtime would, and writes tag to the key tagged in the same transaction when set.
func increment(ns runtime.Store, key runtime.StateKey, tagged *runtime.StateKey, tag string) error {
	var err error
	for attempt := range 500 {
		ctx := runtime.WithAttempt(context.Background(), attempt)
		txn, _ := ns.Begin(ctx)
		var v []byte
		if v, _, err = txn.Get(key); err == nil {
			n, _ := strconv.Atoi(string(v))
			_ = txn.Put(key, []byte(strconv.Itoa(n+1)))
			if tagged != nil {
				_ = txn.Put(*tagged, []byte(tag))
			}
			err = txn.Commit(ctx)
		}
		if !errors.Is(err, runtime.ErrConflict) {
			return err
		}
		time.Sleep(time.Duration(attempt%8) * time.Millisecond)
	}
	return err
}

// A shard past the journal threshold takes its commits in its journal: a commit then
// sends about what it changed, not the shard, and the shard is rewritten once per
// fold, so bytes sent per commit stay far below the shard's size. A fresh replica
// reads every value, and after a fold the shard alone holds them.
func TestJournalKeepsTheCommitCostFlat(t *testing.T) {
	testenv.Require(t, env)
	const foldAfter = 16
	s := newStore(t, state.Options{FoldAfter: foldAfter})
	spec := state.Spec{Namespace: env.Namespace(t, "journal"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: 1}
	ns := ensure(t, s, spec)
	fillShard(t, ns, 1000)
	base, journal := shardObjects(t, spec, 0)
	if base.Annotations[state.AnnotationFoldedThrough] == "" || journal == nil {
		t.Fatalf("a shard of 1,000 entries is not journalled (annotations %v, journal %v)", base.Annotations, journal != nil)
	}
	// The fill's last commits, 250 entries each, are folded first: what is measured is
	// commits of one entry, against the shard's whole size.
	if err := s.Fold(context.Background(), spec.Namespace, spec.Revision, 0); err != nil {
		t.Fatal(err)
	}
	base, _ = shardObjects(t, spec, 0)
	shardBytes := 0
	for k, v := range base.BinaryData {
		shardBytes += len(k) + len(v)
	}
	counter := runtime.StateKey{Pack: "p", Name: "counter"}
	const commits = 64
	u0, b0 := s.Updates()
	for range commits {
		if err := increment(ns, counter, nil, ""); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond) // the last fold runs after its commit's answer
	u1, b1 := s.Updates()
	perCommit := float64(b1-b0) / commits
	t.Logf("shard of %d bytes: %.0f bytes and %.2f updates sent per commit", shardBytes, perCommit, float64(u1-u0)/commits)
	if perCommit > float64(shardBytes)/8 {
		t.Errorf("a commit sends %.0f bytes on average, a shard of %d bytes: the journal does not keep commits small", perCommit, shardBytes)
	}
	if maxUpdates := int64(commits + 2*(commits/foldAfter+1)); u1-u0 > maxUpdates {
		t.Errorf("%d commits took %d updates, want at most %d (one each, and two per fold)", commits, u1-u0, maxUpdates)
	}

	fresh := newStore(t, state.Options{}).Namespace(spec)
	if v, _ := get(t, fresh, counter); v != strconv.Itoa(commits) {
		t.Fatalf("a fresh replica reads the counter as %q, want %d", v, commits)
	}
	for _, i := range []int{0, 499, 999} {
		if v, ok := get(t, fresh, runtime.StateKey{Pack: "p", Name: fmt.Sprintf("fill-%05d", i)}); !ok || len(v) != 40 {
			t.Fatalf("fill-%05d: %q %v", i, v, ok)
		}
	}
	if err := s.Fold(context.Background(), spec.Namespace, spec.Revision, 0); err != nil {
		t.Fatal(err)
	}
	base, journal = shardObjects(t, spec, 0)
	if !holds(base, "counter"+strconv.Itoa(commits)) || records(journal) != 0 {
		t.Fatalf("after a fold the shard does not hold counter=%d alone (%d journal records left)", commits, records(journal))
	}
}

// A commit to a journalled shard that folds its journal at once, with a conflict, an
// error, a lost answer or a crash injected before each of its calls in turn (the
// journal write, which trims what the last fold folded, and the fold's rewrite of the
// shard, with the reads a conflict takes): the commit's two writes are visible
// together or not at all, as its answer says; every read meets a fold half done (the
// shard rewritten, the journal not trimmed yet) and reads it right; and a last fold
// leaves the shard holding everything and the journal empty.
func TestFoldIsAllOrNothingUnderFaults(t *testing.T) {
	testenv.Require(t, env)
	spec := state.Spec{Namespace: env.Namespace(t, "foldfaults"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: 1}
	counter, tagged := runtime.StateKey{Pack: "p", Name: "counter"}, runtime.StateKey{Pack: "p", Name: "tag"}
	reader := newStore(t, state.Options{JournalAbove: -1})
	ensure(t, reader, spec)
	if err := put(t, reader.Namespace(spec), map[runtime.StateKey]string{counter: "0", tagged: "v0"}); err != nil {
		t.Fatal(err)
	}
	count, prev, round := 0, "v0", 0
	for _, f := range []fault{conflict, unavailable, lostAnswer, crash} {
		for at := 0; ; at++ {
			round++
			tag := "v" + strconv.Itoa(round)
			fc := &faultClient{}
			s := newStore(t, state.Options{JournalAbove: -1, FoldAfter: 1, CommitTimeout: 2 * time.Second,
				WrapClient: func(c client.Client) client.Client { fc.Client = c; return fc }})
			fc.arm(at, f)
			answer := increment(s.Namespace(spec), counter, &tagged, tag)
			fc.settle()
			name := fmt.Sprintf("%s before call %d", f, at)

			var got []string
			for attempt := 0; ; attempt++ {
				txn, _ := reader.Namespace(spec).Begin(context.Background())
				c, _, err1 := txn.Get(counter)
				v, _, err2 := txn.Get(tagged)
				err := errors.Join(err1, err2)
				if err == nil {
					err = txn.Commit(context.Background())
				}
				if err == nil {
					got = []string{string(c), string(v)}
					break
				}
				if !errors.Is(err, runtime.ErrConflict) || attempt > 100 {
					t.Fatalf("%s: read: %v", name, err)
				}
			}
			applied := got[1] == tag
			switch {
			case applied && got[0] != strconv.Itoa(count+1), !applied && (got[1] != prev || got[0] != strconv.Itoa(count)):
				t.Fatalf("%s: partly applied or applied twice: counter %s, tag %s (before: %d, %s)", name, got[0], got[1], count, prev)
			case answer == nil && !applied:
				t.Fatalf("%s: answered success, and the writes are not there", name)
			case answer != nil && applied && !errors.Is(answer, runtime.ErrOutcomeUnknown):
				t.Fatalf("%s: answered %v, which says nothing was applied, and the writes are there", name, answer)
			}
			if applied {
				count, prev = count+1, tag
			}
			if !fc.hit {
				break // every call of the commit and its fold has had its fault
			}
		}
	}
	if round < 12 {
		t.Fatalf("only %d rounds: a commit and its fold made fewer calls than a journal write and a rewrite", round)
	}
	if err := reader.Fold(context.Background(), spec.Namespace, spec.Revision, 0); err != nil {
		t.Fatal(err)
	}
	base, journal := shardObjects(t, spec, 0)
	if !holds(base, "counter"+strconv.Itoa(count)) || !holds(base, "tag"+prev) || records(journal) != 0 {
		t.Fatalf("after the last fold the shard does not hold counter=%d and tag=%s alone (%d journal records left)", count, prev, records(journal))
	}
}

// Two replicas whose journals fold every two commits each run 100 increments of one
// counter: commits race folds (a commit lands between a fold's rewrite and its trim,
// a trim meets a newer journal) and nothing is lost or applied twice.
func TestCommitsRacingFoldsLoseNothing(t *testing.T) {
	testenv.Require(t, env)
	spec := state.Spec{Namespace: env.Namespace(t, "foldrace"), Revision: "r", RevisionUID: uuid.NewUUID(), Tenant: "acme", Shards: 1}
	counter := runtime.StateKey{Pack: "p", Name: "counter"}
	var replicas []*state.Store
	for range 2 {
		s := newStore(t, state.Options{JournalAbove: -1, FoldAfter: 2})
		ensure(t, s, spec)
		replicas = append(replicas, s)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for _, s := range replicas {
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 25 {
					if err := increment(s.Namespace(spec), counter, nil, ""); err != nil {
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
	if v, _ := get(t, newStore(t, state.Options{}).Namespace(spec), counter); v != "200" {
		t.Fatalf("2 replicas × 100 increments: counter is %s, want 200", v)
	}
	base, journal := shardObjects(t, spec, 0)
	folded, _ := strconv.Atoi(base.Annotations[state.AnnotationFoldedThrough])
	if folded < 50 {
		t.Errorf("the shard was folded through record %d after 200 commits folding every 2: the folds did not race the commits", folded)
	}
	t.Logf("folded through %d, %d journal records left", folded, records(journal))
}

// The journal is trusted as the shard is: a ConfigMap of its name that the Revision
// does not own is never read nor written. Created before the shard needs a journal, it
// keeps the shard unjournalled (commits write the shard whole) and is reported; put in
// place of a journalled shard's journal, its records are not read and commits are
// refused rather than written to it.
func TestJournalIsTrustedOnlyWhenOwned(t *testing.T) {
	testenv.Require(t, env)
	ctx := context.Background()
	nsName := env.Namespace(t, "journaltrust")
	key := runtime.StateKey{Pack: "p", Name: "k"}
	forge := func(spec state.Spec, value string) *corev1.ConfigMap {
		t.Helper()
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: nsName, Name: state.JournalName(spec.Revision, 0),
			Labels:          map[string]string{state.LabelComponent: state.ComponentState, state.LabelTenant: spec.Tenant, state.LabelRevision: spec.Revision, state.LabelShard: "0"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "packhost.io/v1alpha1", Kind: "Revision", Name: spec.Revision, UID: uuid.NewUUID(), Controller: ptr.To(true)}}},
		}
		state.SetJournalRecords(cm, map[uint64][]byte{1: state.ValueRecord("p", "k", []byte(value))})
		if err := env.Client.Create(ctx, cm); err != nil {
			t.Fatal(err)
		}
		return cm
	}
	unchanged := func(cm *corev1.ConfigMap) {
		t.Helper()
		got := &corev1.ConfigMap{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(cm), got); err != nil {
			t.Fatal(err)
		}
		if got.ResourceVersion != cm.ResourceVersion {
			t.Errorf("the forged journal %s was written to", cm.Name)
		}
	}

	t.Run("before the shard is journalled", func(t *testing.T) {
		s := newStore(t, state.Options{JournalAbove: -1})
		spec := stateSpec(nsName, "early", "acme", 1)
		forged := forge(spec, "evil")
		ns := ensure(t, s, spec)
		if err := put(t, ns, map[runtime.StateKey]string{key: "good"}); err != nil {
			t.Fatal(err)
		}
		base, _ := shardObjects(t, spec, 0)
		if _, journalled := base.Annotations[state.AnnotationFoldedThrough]; journalled || !holds(base, "kgood") {
			t.Fatalf("the shard was journalled onto a journal it does not own, or lost its write: %v", base.Annotations)
		}
		if v, _ := get(t, newStore(t, state.Options{}).Namespace(spec), key); v != "good" {
			t.Fatalf("read %q, want good", v)
		}
		if claims := strings.Join(s.Claims(nsName, spec.Revision), "\n"); !strings.Contains(claims, forged.Name) {
			t.Errorf("the forged journal is not reported: %q", claims)
		}
		unchanged(forged)
	})

	t.Run("in place of the journal", func(t *testing.T) {
		s := newStore(t, state.Options{JournalAbove: -1})
		spec := stateSpec(nsName, "late", "acme", 1)
		ns := ensure(t, s, spec)
		if err := put(t, ns, map[runtime.StateKey]string{key: "good"}); err != nil {
			t.Fatal(err)
		}
		_, journal := shardObjects(t, spec, 0)
		if journal == nil {
			t.Fatal("the shard has no journal")
		}
		if err := env.Client.Delete(ctx, journal); err != nil {
			t.Fatal(err)
		}
		forged := forge(spec, "evil")
		fresh := newStore(t, state.Options{})
		fns := fresh.Namespace(spec)
		if v, _ := get(t, fns, key); v != "good" {
			t.Fatalf("read %q through a forged journal, want good", v)
		}
		err := put(t, fns, map[runtime.StateKey]string{key: "next"})
		if err == nil || !strings.Contains(err.Error(), "not this shard's journal") {
			t.Fatalf("a commit onto a forged journal: %v", err)
		}
		unchanged(forged)
		if v, _ := get(t, newStore(t, state.Options{}).Namespace(spec), key); v != "good" {
			t.Fatalf("after the refused commit: read %q, want good", v)
		}
	})
}

// A journal record that does not decode is reported, and the shard is neither read
// nor written (nor folded, which would drop the record) until it is removed.
func TestCorruptJournalRecordIsReportedAndKept(t *testing.T) {
	testenv.Require(t, env)
	ctx := context.Background()
	s := newStore(t, state.Options{JournalAbove: -1})
	spec := stateSpec(env.Namespace(t, "journalcorrupt"), "r", "acme", 1)
	ns := ensure(t, s, spec)
	key := runtime.StateKey{Pack: "p", Name: "k"}
	for _, v := range []string{"one", "two"} { // the first journals the shard, the second writes the journal
		if err := put(t, ns, map[runtime.StateKey]string{key: v}); err != nil {
			t.Fatal(err)
		}
	}
	_, journal := shardObjects(t, spec, 0)
	if records(journal) == 0 {
		t.Fatal("the second commit wrote no journal record")
	}
	kept := state.JournalRecords(journal)
	withGarbage := state.JournalRecords(journal)
	withGarbage[255] = []byte("garbage")
	state.SetJournalRecords(journal, withGarbage)
	if err := env.Client.Update(ctx, journal); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(s.Problems(spec.Namespace, spec.Revision, 1)) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if p := strings.Join(s.Problems(spec.Namespace, spec.Revision, 1), "\n"); !strings.Contains(p, "journal record does not decode") {
		t.Fatalf("problems: %q", p)
	}
	txn, _ := ns.Begin(ctx)
	if _, _, err := txn.Get(key); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("reading a shard with a corrupt journal: %v", err)
	}
	if err := put(t, ns, map[runtime.StateKey]string{key: "three"}); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("a commit onto a corrupt journal: %v", err)
	}
	if err := s.Fold(ctx, spec.Namespace, spec.Revision, 0); err == nil {
		t.Fatal("a fold dropped a journal record it could not read")
	}
	_, journal = shardObjects(t, spec, 0)
	if string(state.JournalRecords(journal)[255]) != "garbage" {
		t.Fatal("the corrupt record is gone")
	}
	state.SetJournalRecords(journal, kept)
	if err := env.Client.Update(ctx, journal); err != nil {
		t.Fatal(err)
	}
	for len(s.Problems(spec.Namespace, spec.Revision, 1)) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := put(t, ns, map[runtime.StateKey]string{key: "three"}); err != nil {
		t.Fatalf("after the corrupt record was removed: %v", err)
	}
	if v, _ := get(t, newStore(t, state.Options{}).Namespace(spec), key); v != "three" {
		t.Fatalf("read %q, want three", v)
	}
}

// A shard written without a journal (as packhost wrote every shard before journals)
// reads as ever, and is journalled by the first commit that finds it past the
// threshold, without losing an entry.
func TestUnjournalledShardIsJournalledByItsNextCommit(t *testing.T) {
	testenv.Require(t, env)
	spec := stateSpec(env.Namespace(t, "journalupgrade"), "r", "acme", 1)
	old := ensure(t, newStore(t, state.Options{JournalAbove: 1 << 30}), spec)
	fillShard(t, old, 300)
	if base, journal := shardObjects(t, spec, 0); base.Annotations[state.AnnotationFoldedThrough] != "" || journal != nil {
		t.Fatal("the shard was journalled below its threshold")
	}
	s := newStore(t, state.Options{})
	ns := ensure(t, s, spec)
	key := runtime.StateKey{Pack: "p", Name: "k"}
	for _, v := range []string{"one", "two"} {
		if err := put(t, ns, map[runtime.StateKey]string{key: v}); err != nil {
			t.Fatal(err)
		}
	}
	base, journal := shardObjects(t, spec, 0)
	if base.Annotations[state.AnnotationFoldedThrough] == "" || journal == nil || records(journal) == 0 {
		t.Fatalf("the shard of 300 entries is not journalled by its next commits (annotations %v)", base.Annotations)
	}
	fresh := newStore(t, state.Options{}).Namespace(spec)
	if v, _ := get(t, fresh, key); v != "two" {
		t.Fatalf("read %q, want two", v)
	}
	for i := range 300 {
		if _, ok := get(t, fresh, runtime.StateKey{Pack: "p", Name: fmt.Sprintf("fill-%05d", i)}); !ok {
			t.Fatalf("fill-%05d is lost", i)
		}
	}
}
