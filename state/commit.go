package state

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/packhost/packhost/runtime"
)

// Commit makes the transaction's writes durable. A transaction that wrote nothing
// commits nothing. One whose reads and writes all lie in one shard takes one group
// commit there; one that spans shards takes the cross-shard protocol of the package doc:
// every shard but the primary is locked with an intent, the primary's group commit
// decides, and the intents are rolled forward.
func (t *txn) Commit(ctx context.Context) (err error) {
	if len(t.writes) == 0 {
		return t.validate(ctx)
	}
	s := t.ns.store
	if f := s.onCommit; f != nil {
		start := time.Now()
		defer func() {
			if err == nil { // OnCommit times successful commits only (Options)
				f(time.Since(start))
			}
		}()
	}
	parts := map[int]*part{}
	partOf := func(shard int) *part {
		p := parts[shard]
		if p == nil {
			p = newPart(kindCommit, t.attempt)
			parts[shard] = p
		}
		return p
	}
	primary := -1
	for k, w := range t.writes {
		partOf(w.shard).writes[k] = w.blob
		if primary < 0 || w.shard < primary {
			primary = w.shard
		}
	}
	for k, r := range t.reads {
		partOf(r.shard).reads[k] = r
	}
	if len(parts) == 1 {
		err := t.submit(ctx, primary, parts[primary])
		return err
	}
	return t.commitAcross(ctx, primary, parts)
}

// validate checks the reads of a transaction that wrote nothing, so its answer is
// serializable too: reads within one shard against the newest known copy (one version
// of the shard must hold them all), reads across shards against each shard read from
// the API server (copies of different shards in the watch's view may show a cross-shard
// commit on one and not yet on another). An entry that an intent writes is compared as
// its transaction decided; one still pending conflicts.
func (t *txn) validate(ctx context.Context) error {
	byShard := map[int][]string{}
	for k, r := range t.reads {
		byShard[r.shard] = append(byShard[r.shard], k)
	}
	s := t.ns.store
	if len(byShard) > 1 {
		if err := s.breaker.allow(); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, s.commitTimeout)
	defer cancel()
	for i, keys := range byShard {
		key := t.ns.shards[i]
		var c *composition
		var err error
		if len(byShard) == 1 {
			c, err = s.latestComp(ctx, key)
		} else {
			c, err = s.fetchComp(ctx, key)
		}
		if err == nil {
			err = c.check(key)
		}
		if err != nil {
			if uncertain(err) {
				s.breaker.fail()
				return fmt.Errorf("%w: validate reads: %v; nothing was applied", runtime.ErrStateUnavailable, err)
			}
			return err
		}
		cm := c.logical
		var intents []*intent
		for k, v := range cm.BinaryData {
			if strings.HasPrefix(k, intentPrefix) {
				if in, err := decodeIntent(v); err == nil {
					intents = append(intents, in)
				}
			}
		}
		for _, k := range keys {
			r := t.reads[k]
			cur, ok := cm.BinaryData[k]
			for _, in := range intents {
				w, writes := in.writes[k]
				if !writes {
					continue
				}
				switch s.viewStatus(key, in) {
				case committed:
					cur, ok = w, w != nil
				case pending:
					return &runtime.ConflictError{Key: k + " (written by a pending cross-shard commit)"}
				}
			}
			if ok != r.exists || string(cur) != r.blob {
				return &runtime.ConflictError{Key: k}
			}
		}
	}
	return nil
}

// submit hands p to shard i's group commit; a part refused because a stale intent
// locks what it touches has that intent resolved before the conflict is answered, so
// the re-run finds it gone.
func (t *txn) submit(ctx context.Context, i int, p *part) error {
	err := t.ns.store.shard(t.ns.shards[i]).submit(ctx, p)
	var locked *lockedError
	if errors.As(err, &locked) {
		rctx, cancel := context.WithTimeout(context.Background(), t.ns.store.commitTimeout)
		defer cancel()
		_, _ = t.ns.store.resolve(rctx, t.ns.shards[i], locked.intent, false)
	}
	return err
}

// commitAcross runs the cross-shard protocol: prewrite the secondaries in parallel,
// decide on the primary, roll forward (or back).
func (t *txn) commitAcross(ctx context.Context, primary int, parts map[int]*part) error {
	s := t.ns.store
	id := newID(12)
	var secondaries []int
	for i := range parts {
		if i != primary {
			secondaries = append(secondaries, i)
		}
	}
	slices.Sort(secondaries)
	now := time.Now()
	errs := make([]error, len(secondaries))
	var wg sync.WaitGroup
	for j, i := range secondaries {
		p := parts[i]
		p.kind, p.txn, p.primary, p.created = kindPrewrite, id, primary, now
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[j] = t.submit(ctx, i, p)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		// Nothing was decided, and without the primary's record nothing ever will be: the
		// transaction did not happen. Intents that may have landed are removed now, or
		// by whoever meets them after LockTTL.
		t.resolveAll(secondaries, id, false)
		for _, e := range errs {
			if e != nil && !errors.Is(e, runtime.ErrOutcomeUnknown) {
				return e
			}
		}
		return fmt.Errorf("%w: prewrite of a cross-shard commit: nothing was applied", runtime.ErrStateUnavailable)
	}
	if err := ctx.Err(); err != nil {
		t.resolveAll(secondaries, id, false)
		return fmt.Errorf("%w: state commit not decided before the deadline; nothing was applied", runtime.ErrTimeout)
	}
	p := parts[primary]
	p.txn, p.secondaries, p.created = id, secondaries, now
	err := t.submit(ctx, primary, p)
	switch {
	case err == nil:
		// Decided: the answer need not wait for the roll-forward, since whoever meets an
		// intent reads it as its primary's record says (this process has the record in
		// its view already). The record is dropped once every intent is gone.
		go func() {
			t.resolveAll(secondaries, id, true)
			if t.settled(secondaries, id) {
				fctx, cancel := context.WithTimeout(context.Background(), s.commitTimeout)
				defer cancel()
				_ = s.shard(t.ns.shards[primary]).submit(fctx, &part{kind: kindForget, txn: id, done: make(chan struct{})})
			}
		}()
		return nil
	case errors.Is(err, runtime.ErrOutcomeUnknown):
		// Whoever meets the intents learns the outcome from the primary.
		return err
	default:
		t.resolveAll(secondaries, id, false)
		return err
	}
}

// resolveAll rolls the transaction's intents on shards forward or back, in parallel,
// each under its own commit timeout: the request's deadline does not stop it.
func (t *txn) resolveAll(shards []int, id string, commit bool) {
	ctx, cancel := context.WithTimeout(context.Background(), t.ns.store.commitTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, i := range shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = t.ns.store.shard(t.ns.shards[i]).submit(ctx, &part{kind: kindResolve, txn: id, commit: commit, done: make(chan struct{})})
		}()
	}
	wg.Wait()
}

// settled reports whether no intent of transaction id is left on shards, as far as
// this process knows (its own commits are in its view).
func (t *txn) settled(shards []int, id string) bool {
	s := t.ns.store
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, i := range shards {
		cm := s.view[t.ns.shards[i]]
		if cm == nil {
			return false
		}
		if _, ok := cm.BinaryData[intentPrefix+id]; ok {
			return false
		}
	}
	return true
}

func newID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// lockedError refuses a part that touches what a pending cross-shard transaction
// locked.
type lockedError struct {
	runtime.ConflictError
	intent *intent
}

func (e *lockedError) Unwrap() error { return &e.ConflictError }

// read returns an entry as of the newest known copy of its shard, with cross-shard
// transactions that wrote it taken into account: a committed one's write is what is
// read; a pending one is waited for briefly, resolved when older than LockTTL, and
// otherwise answered with a conflict (the activity runs again).
func (s *Store) read(ctx context.Context, key types.NamespacedName, entry string) ([]byte, bool, error) {
	deadline := time.Now().Add(pendingWait)
	for {
		c, err := s.latestComp(ctx, key)
		if err == nil {
			err = c.check(key)
		}
		if err != nil {
			return nil, false, err
		}
		cm := c.logical
		blob, ok := cm.BinaryData[entry]
		if !ok {
			if _, bad := cm.BinaryData[pageOf(entry)]; bad {
				return nil, false, fmt.Errorf("%s in %s: %w: its page does not decode", entry, key, errCorrupt)
			}
		}
		in := s.writerOf(key, entry)
		if in == nil {
			return blob, ok, nil
		}
		switch st := s.viewStatus(key, in); st {
		case committed:
			w := in.writes[entry]
			return w, w != nil, nil
		case aborted:
			return blob, ok, nil
		}
		if time.Now().After(deadline) {
			if time.Since(in.created) < s.lockTTL {
				return nil, false, &runtime.ConflictError{Key: entry + " (locked by a pending cross-shard commit)"}
			}
			if _, err := s.resolve(ctx, key, in, false); err != nil {
				return nil, false, err
			}
			deadline = time.Now().Add(pendingWait)
			continue
		}
		select {
		case <-time.After(2 * time.Millisecond):
		case <-ctx.Done():
			return nil, false, fmt.Errorf("read %s in %s: %w", entry, key, ctx.Err())
		}
	}
}

// pendingWait is how long a read waits for a pending cross-shard transaction that wrote
// its entry before answering with a conflict: about two group commits.
const pendingWait = 50 * time.Millisecond

// writerOf returns the intent on shard key that writes entry, if any.
func (s *Store) writerOf(key types.NamespacedName, entry string) *intent {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, in := range s.intents[key] {
		if _, ok := in.writes[entry]; ok {
			return in
		}
	}
	return nil
}

// primaryOf is the key of the shard holding the record of an intent found on shard
// key: the same revision's shard in.primary.
func primaryOf(key types.NamespacedName, in *intent) types.NamespacedName {
	revision := key.Name
	if i := strings.LastIndex(revision, "-state-"); i >= 0 {
		revision = revision[:i]
	}
	return types.NamespacedName{Namespace: key.Namespace, Name: ShardName(revision, in.primary)}
}

// viewStatus is what the newest known copy of the primary says of an intent's
// transaction, without asking the API server.
func (s *Store) viewStatus(key types.NamespacedName, in *intent) txnStatus {
	pk := primaryOf(key, in)
	s.mu.RLock()
	defer s.mu.RUnlock()
	return recordStatus(s.view[pk], in.id)
}

func recordStatus(cm *corev1.ConfigMap, id string) txnStatus {
	if cm == nil {
		return pending
	}
	blob, ok := cm.BinaryData[recordPrefix+id]
	if !ok {
		return pending
	}
	r, err := decodeRecord(blob)
	if err != nil {
		return pending
	}
	return r.status
}

// resolve settles an intent found on shard key: it learns the transaction's outcome
// from the primary and, when the intent is older than LockTTL (or force is set) and no
// outcome is recorded, decides it aborted there with one resourceVersion-guarded write
// (which a late commit of the writer then loses); the intent is then rolled forward or
// back. It returns the outcome, pending when the intent is left alone.
func (s *Store) resolve(ctx context.Context, key types.NamespacedName, in *intent, force bool) (txnStatus, error) {
	st := s.viewStatus(key, in)
	if st == pending {
		if !force && time.Since(in.created) < s.lockTTL {
			return pending, nil
		}
		p := &part{kind: kindAbort, txn: in.id, done: make(chan struct{})}
		if err := s.shard(primaryOf(key, in)).submit(ctx, p); err != nil {
			return pending, fmt.Errorf("decide cross-shard commit %s: %w", in.id, err)
		}
		st = p.status
	}
	p := &part{kind: kindResolve, txn: in.id, commit: st == committed, done: make(chan struct{})}
	if err := s.shard(key).submit(ctx, p); err != nil {
		return st, fmt.Errorf("resolve cross-shard commit %s on %s: %w", in.id, key, err)
	}
	return st, nil
}

// Recover settles every cross-shard transaction left in a revision's state by a
// writer that stopped mid-commit (a crash, a lost API server): intents older than
// LockTTL are rolled forward or back as their primary decides, and records of
// committed transactions whose intents are all gone are dropped. It reads the shards
// from the API server, and writes only when something is left over. It returns an
// error when something could not be settled; intents younger than LockTTL belong to
// live commits and are left to them.
func (s *Store) Recover(ctx context.Context, spec Spec) error {
	s.serve(spec)
	var errs []error
	for i := range spec.Shards {
		key := types.NamespacedName{Namespace: spec.Namespace, Name: ShardName(spec.Revision, i)}
		cm, err := s.fetch(ctx, key)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for k, v := range cm.BinaryData {
			if !strings.HasPrefix(k, intentPrefix) {
				continue
			}
			in, err := decodeIntent(v)
			if err != nil {
				continue // reported by Problems
			}
			if _, err := s.resolve(ctx, key, in, false); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for i := range spec.Shards {
		key := types.NamespacedName{Namespace: spec.Namespace, Name: ShardName(spec.Revision, i)}
		cm, err := s.fetch(ctx, key)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for k, v := range cm.BinaryData {
			if !strings.HasPrefix(k, recordPrefix) {
				continue
			}
			r, err := decodeRecord(v)
			if err != nil || r.status != committed {
				continue
			}
			left := false
			for _, j := range r.secondaries {
				sk := types.NamespacedName{Namespace: spec.Namespace, Name: ShardName(spec.Revision, j)}
				scm, err := s.fetch(ctx, sk)
				if err != nil {
					errs = append(errs, err)
					left = true
					continue
				}
				if blob, ok := scm.BinaryData[intentPrefix+r.id]; ok {
					in, err := decodeIntent(blob)
					if err != nil {
						left = true
						continue
					}
					// Only an intent rolled forward lets the record go: one still pending
					// needs the record, or a later resolver would abort an acknowledged
					// commit and lose its writes.
					st, err := s.resolve(ctx, sk, in, false)
					if err != nil {
						errs = append(errs, err)
					}
					if err != nil || st != committed {
						left = true
					}
				}
			}
			if left {
				continue
			}
			if err := s.shard(key).submit(ctx, &part{kind: kindForget, txn: r.id, done: make(chan struct{})}); err != nil {
				errs = append(errs, fmt.Errorf("drop record of cross-shard commit %s: %w", r.id, err))
			}
		}
	}
	return errors.Join(errs...)
}
