package state

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	"github.com/packhost/packhost/runtime"
)

// Namespace is one revision's state namespace: the runtime.Store of its revision.
type Namespace struct {
	store  *Store
	spec   Spec
	shards []types.NamespacedName
}

// Namespace returns the runtime.Store for a revision's namespace. Ensure it first; the
// ConfigMaps spec's Revision owns are trusted from now on.
func (s *Store) Namespace(spec Spec) *Namespace {
	s.serve(spec)
	ns := &Namespace{store: s, spec: spec}
	for i := range spec.Shards {
		ns.shards = append(ns.shards, types.NamespacedName{Namespace: spec.Namespace, Name: ShardName(spec.Revision, i)})
	}
	return ns
}

var _ runtime.Store = (*Namespace)(nil)

// Begin implements runtime.Store.
func (n *Namespace) Begin(ctx context.Context) (runtime.Txn, error) {
	if len(n.shards) == 0 {
		return nil, errNoShards
	}
	return &txn{ns: n, attempt: runtime.Attempt(ctx)}, nil
}

// read is what a transaction saw of one entry.
type read struct {
	shard  int
	exists bool
	blob   string
}

// write is a buffered change of one entry; a nil blob deletes it.
type write struct {
	shard int
	blob  []byte
}

type txn struct {
	ns      *Namespace
	attempt int
	reads   map[string]read
	writes  map[string]write
}

// entry reads one entry from the newest known copy of its shard and records the read.
func (t *txn) entry(key string, shard int) ([]byte, bool, error) {
	if w, ok := t.writes[key]; ok {
		return w.blob, w.blob != nil, nil
	}
	cm, err := t.ns.store.latest(context.Background(), t.ns.shards[shard])
	if err != nil {
		return nil, false, err
	}
	blob, ok := cm.BinaryData[key]
	if t.reads == nil {
		t.reads = map[string]read{}
	}
	if _, seen := t.reads[key]; !seen {
		t.reads[key] = read{shard: shard, exists: ok, blob: string(blob)}
	}
	return blob, ok, nil
}

func (t *txn) put(key string, shard int, blob []byte) {
	if t.writes == nil {
		t.writes = map[string]write{}
	}
	t.writes[key] = write{shard: shard, blob: blob}
}

func (t *txn) Get(k runtime.StateKey) ([]byte, bool, error) {
	key, shard := valueKey(k.Pack, k.Name, len(t.ns.shards))
	blob, ok, err := t.entry(key, shard)
	if err != nil || !ok {
		return nil, false, err
	}
	v, err := decodeValue(blob, k.Pack, k.Name)
	if err != nil {
		return nil, false, fmt.Errorf("%s in %s: %w", key, t.ns.shards[shard], err)
	}
	return v, true, nil
}

func (t *txn) Put(k runtime.StateKey, value []byte) error {
	key, shard := valueKey(k.Pack, k.Name, len(t.ns.shards))
	t.put(key, shard, encodeValue(k.Pack, k.Name, value))
	return nil
}

func (t *txn) Delete(k runtime.StateKey) error {
	key, shard := valueKey(k.Pack, k.Name, len(t.ns.shards))
	t.put(key, shard, nil)
	return nil
}

func (t *txn) Wait(session string) (*runtime.Wait, error) {
	key, shard := waitKey(session, len(t.ns.shards))
	blob, ok, err := t.entry(key, shard)
	if err != nil || !ok {
		return nil, err
	}
	w, err := decodeWait(blob)
	if err != nil || w.session != session {
		return nil, fmt.Errorf("wait %s in %s: %w", key, t.ns.shards[shard], errCorrupt)
	}
	return &runtime.Wait{Pack: w.pack, Flow: w.flow, Data: w.data, Expires: w.expires}, nil
}

func (t *txn) SetWait(session string, w *runtime.Wait) {
	key, shard := waitKey(session, len(t.ns.shards))
	if w == nil {
		t.put(key, shard, nil)
		return
	}
	t.put(key, shard, encodeWait(wait{session: session, pack: w.Pack, flow: w.Flow, expires: w.Expires, data: w.Data}))
}

func (t *txn) Discard() { t.writes = nil }

// Commit group-commits the transaction's writes, shard by shard in shard order. A
// transaction that wrote nothing commits nothing.
func (t *txn) Commit(ctx context.Context) error {
	if len(t.writes) == 0 {
		return nil
	}
	parts := map[int]*part{}
	for k, w := range t.writes {
		p := parts[w.shard]
		if p == nil {
			p = &part{attempt: t.attempt, reads: map[string]read{}, writes: map[string][]byte{}, done: make(chan struct{})}
			parts[w.shard] = p
		}
		p.writes[k] = w.blob
	}
	for k, r := range t.reads {
		if p := parts[r.shard]; p != nil {
			p.reads[k] = r
		}
	}
	order := make([]int, 0, len(parts))
	for i := range parts {
		order = append(order, i)
	}
	slices.Sort(order)
	if f := t.ns.store.onCommit; f != nil {
		start := time.Now()
		defer func() { f(time.Since(start)) }()
	}
	for _, i := range order {
		if err := t.ns.store.shard(t.ns.shards[i]).submit(ctx, parts[i]); err != nil {
			return err
		}
	}
	return nil
}

// part is one transaction's share of a group commit on one shard.
type part struct {
	// attempt is how often the activity already ran; parts that lost before go first.
	attempt int
	reads   map[string]read
	writes  map[string][]byte
	done    chan struct{}
	err     error
}

// shard serialises the group commits of one ConfigMap in this process.
type shard struct {
	store *Store
	key   types.NamespacedName

	queueMu  sync.Mutex
	queue    []*part
	flushing bool
}

func (sh *shard) lockQueue()   { sh.queueMu.Lock() }
func (sh *shard) unlockQueue() { sh.queueMu.Unlock() }

// submit queues p and waits until a group commit has taken it. The first submitter with
// no flush running becomes the flusher; it flushes batches until its own part is done,
// then hands the rest of the queue to a goroutine.
func (sh *shard) submit(ctx context.Context, p *part) error {
	sh.lockQueue()
	sh.queue = append(sh.queue, p)
	if sh.flushing {
		sh.unlockQueue()
		select {
		case <-p.done:
			return p.err
		case <-ctx.Done():
			// The commit may still happen; the caller only stops waiting for it.
			return fmt.Errorf("wait for state commit: %w", ctx.Err())
		}
	}
	sh.flushing = true
	sh.unlockQueue()
	sh.drain(p)
	<-p.done
	return p.err
}

// drain flushes queued batches until the queue is empty, or, when own is set, until
// own is done, handing what remains to a new goroutine.
func (sh *shard) drain(own *part) {
	for {
		sh.lockQueue()
		batch := sh.queue
		sh.queue = nil
		if len(batch) == 0 {
			sh.flushing = false
			sh.unlockQueue()
			return
		}
		sh.unlockQueue()
		sh.flush(batch)
		if own != nil && isDone(own) {
			sh.lockQueue()
			if len(sh.queue) == 0 {
				sh.flushing = false
				sh.unlockQueue()
				return
			}
			sh.unlockQueue()
			go sh.drain(nil)
			return
		}
	}
}

func isDone(p *part) bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// flush merges a batch of parts onto the newest copy of the shard and writes it in one
// update, merging again on conflict. Each part ends done with its own outcome.
func (sh *shard) flush(batch []*part) {
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	finish := func(p *part, err error) {
		p.err = err
		close(p.done)
	}
	// Activities that already lost conflicts are merged first, so a hot key cannot
	// starve one of them.
	slices.SortStableFunc(batch, func(a, b *part) int { return b.attempt - a.attempt })
	base, err := sh.store.latest(ctx, sh.key)
	for attempt := 0; err == nil && attempt < maxFlushAttempts; attempt++ {
		obj := base.DeepCopy()
		if obj.BinaryData == nil {
			obj.BinaryData = map[string][]byte{}
		}
		sweepWaits(obj, batch, time.Now().Add(-waitSweepGrace))
		size := entryBytes(obj)
		var accepted, refused []*part
		var refusals []error
		for _, p := range batch {
			if k, ok := conflict(p, obj); !ok {
				refused, refusals = append(refused, p), append(refusals, &runtime.ConflictError{Key: k})
				continue
			}
			grown := size
			for k, v := range p.writes {
				grown += entryDelta(obj.BinaryData[k], v, k)
			}
			if grown > sh.store.budget && grown > size {
				refused, refusals = append(refused, p), append(refusals, fmt.Errorf("%w: shard %s would hold %d bytes, past its %d-byte budget: give revision %s more state.shards or store less",
					runtime.ErrStateFull, sh.key, grown, sh.store.budget, obj.Labels[LabelRevision]))
				continue
			}
			for k, v := range p.writes {
				if v == nil {
					delete(obj.BinaryData, k)
				} else {
					obj.BinaryData[k] = v
				}
			}
			size = grown
			accepted = append(accepted, p)
		}
		if len(accepted) == 0 {
			for i, p := range refused {
				finish(p, refusals[i])
			}
			return
		}
		err = sh.store.client.Update(ctx, obj)
		if err == nil {
			sh.store.updates.Add(1)
			sh.store.bytesSent.Add(int64(objectBytes(obj)))
			sh.store.observe(obj)
			for _, p := range accepted {
				finish(p, nil)
			}
			for i, p := range refused {
				finish(p, refusals[i])
			}
			return
		}
		if !apierrors.IsConflict(err) {
			break
		}
		// Someone else wrote the shard: merge every part again onto the newest copy.
		base, err = sh.store.fetch(ctx, sh.key)
	}
	if err == nil {
		err = fmt.Errorf("%w: shard %s kept changing over %d merges", runtime.ErrConflict, sh.key, maxFlushAttempts)
	} else {
		err = fmt.Errorf("commit state to %s: %w", sh.key, err)
	}
	for _, p := range batch {
		if !isDone(p) {
			finish(p, err)
		}
	}
}

// waitSweepGrace is how long past its expiry a wait is kept before a commit drops it,
// so that replicas whose clocks differ a little agree it has expired.
const waitSweepGrace = time.Minute

// sweepWaits drops from obj the waits that expired before cutoff and that no part of
// batch read or wrote. An activity clears its session's wait only when the session comes
// back, so without this every session that never does would keep its wait until the
// shard is full. Waits are only swept along with a write to their shard, which is when
// a shard can grow. Entries that are not well-formed waits of their key are left for
// the problem report.
func sweepWaits(obj *corev1.ConfigMap, batch []*part, cutoff time.Time) {
	for k, v := range obj.BinaryData {
		if !strings.HasPrefix(k, waitPrefix) {
			continue
		}
		f, ok := splitWait(v)
		if !ok || !f.expires.Before(cutoff) || touched(batch, k) {
			continue
		}
		if own, _ := waitKey(string(f.session), 1); own == k {
			delete(obj.BinaryData, k)
		}
	}
}

// touched reports whether a part of batch read or wrote entry k.
func touched(batch []*part, k string) bool {
	for _, p := range batch {
		_, read := p.reads[k]
		_, wrote := p.writes[k]
		if read || wrote {
			return true
		}
	}
	return false
}

// conflict reports whether every entry p read is as it was, and the first that is not.
func conflict(p *part, obj *corev1.ConfigMap) (string, bool) {
	for k, r := range p.reads {
		cur, ok := obj.BinaryData[k]
		if ok != r.exists || string(cur) != r.blob {
			return k, false
		}
	}
	return "", true
}

func entryBytes(cm *corev1.ConfigMap) int {
	n := 0
	for k, v := range cm.BinaryData {
		n += len(k) + len(v)
	}
	return n
}

func entryDelta(old, new []byte, key string) int {
	switch {
	case old == nil && new == nil:
		return 0
	case old == nil:
		return len(key) + len(new)
	case new == nil:
		return -len(key) - len(old)
	}
	return len(new) - len(old)
}

// objectBytes estimates the bytes of the object sent to the API server: binaryData is
// base64 in JSON.
func objectBytes(cm *corev1.ConfigMap) int {
	n := 512 // metadata
	for k, v := range cm.BinaryData {
		n += len(k) + base64.StdEncoding.EncodedLen(len(v)) + 6
	}
	return n
}
