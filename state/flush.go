package state

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	"github.com/packhost/packhost/runtime"
)

// AnnotationCommits lists the ids of the last group commits written to a state
// ConfigMap (newest last), so a writer whose update went unanswered learns from the
// shard whether it landed.
const AnnotationCommits = "packhost.io/commits"

// commitRing is how many group-commit ids a shard remembers: far more than a shard
// takes within one commit timeout.
const commitRing = 64

type partKind uint8

const (
	// kindCommit validates and applies writes: a single-shard transaction, or the
	// primary's deciding write of a cross-shard one (txn set), which adds its record.
	kindCommit partKind = iota
	// kindPrewrite validates a cross-shard transaction's reads on a secondary and locks
	// them and its writes there with an intent.
	kindPrewrite
	// kindResolve rolls the intent of txn forward (commit) or back.
	kindResolve
	// kindAbort decides txn aborted on its primary unless a record already decides it;
	// status says what the record says afterwards.
	kindAbort
	// kindForget drops the record of txn once no intent of it is left.
	kindForget
)

// part is one transaction's share of a group commit on one shard.
type part struct {
	kind partKind
	// attempt is how often the activity already ran; parts that lost before go first.
	attempt int
	reads   map[string]read
	writes  map[string][]byte
	// txn is the cross-shard transaction's id ("" for a single-shard one).
	txn         string
	primary     int
	secondaries []int
	created     time.Time
	commit      bool
	status      txnStatus

	done  chan struct{}
	err   error
	taken bool // a flush holds it (under the shard's queue lock)
}

func newPart(kind partKind, attempt int) *part {
	return &part{kind: kind, attempt: attempt, reads: map[string]read{}, writes: map[string][]byte{}, done: make(chan struct{})}
}

// shard serialises the group commits of one ConfigMap in this process.
type shard struct {
	store *Store
	key   types.NamespacedName

	queueMu  sync.Mutex
	queue    []*part
	flushing bool
	// folding is set while a fold of the shard's journal runs in the background.
	folding atomic.Bool
}

// submit queues p and waits until a group commit has taken it. The first submitter with
// no flush running becomes the flusher; it flushes batches until its own part is done,
// then hands the rest of the queue to a goroutine. When ctx ends before a flush took p,
// p is withdrawn (nothing of it was sent); once taken, its outcome is waited for, which
// the commit timeout bounds.
func (sh *shard) submit(ctx context.Context, p *part) error {
	if err := sh.store.breaker.allow(); err != nil {
		return err
	}
	sh.queueMu.Lock()
	sh.queue = append(sh.queue, p)
	if sh.flushing {
		sh.queueMu.Unlock()
		select {
		case <-p.done:
			return p.err
		case <-ctx.Done():
		}
		sh.queueMu.Lock()
		if !p.taken {
			sh.queue = slices.DeleteFunc(sh.queue, func(q *part) bool { return q == p })
			sh.queueMu.Unlock()
			return fmt.Errorf("%w: state commit to %s not started before the deadline; nothing was applied", runtime.ErrTimeout, sh.key)
		}
		sh.queueMu.Unlock()
		<-p.done
		return p.err
	}
	sh.flushing = true
	sh.queueMu.Unlock()
	sh.drain(p)
	<-p.done
	return p.err
}

// drain flushes queued batches until the queue is empty, or, when own is set, until
// own is done, handing what remains to a new goroutine.
func (sh *shard) drain(own *part) {
	for {
		sh.queueMu.Lock()
		batch := sh.queue
		sh.queue = nil
		if len(batch) == 0 {
			sh.flushing = false
			sh.queueMu.Unlock()
			return
		}
		for _, p := range batch {
			p.taken = true
		}
		sh.queueMu.Unlock()
		sh.flush(batch)
		if own != nil && isDone(own) {
			sh.queueMu.Lock()
			if len(sh.queue) == 0 {
				sh.flushing = false
				sh.queueMu.Unlock()
				return
			}
			sh.queueMu.Unlock()
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

// merged is one attempt of a group commit: the object to write and what it means for
// each part.
type merged struct {
	id       string
	obj      *corev1.ConfigMap
	changed  bool
	accepted []*part
	refused  []*part
	errs     []error
}

func (m *merged) finish() {
	for _, p := range m.accepted {
		p.err = nil
		close(p.done)
	}
	for i, p := range m.refused {
		p.err = m.errs[i]
		close(p.done)
	}
}

// flush merges a batch of parts onto the newest copy of the shard and writes it in one
// update, merging again on conflict. An update that went unanswered is looked for in
// the shard's AnnotationCommits before anything is merged again, so a part is never
// applied twice and never answered as failed when it landed. Each part ends done with
// its own outcome, within the commit timeout.
func (sh *shard) flush(batch []*part) {
	s := sh.store
	ctx, cancel := context.WithTimeout(context.Background(), s.commitTimeout)
	defer cancel()
	// Activities that already lost conflicts are merged first, so a hot key cannot
	// starve one of them.
	slices.SortStableFunc(batch, func(a, b *part) int { return b.attempt - a.attempt })
	var unanswered []*merged
	c, err := s.latestComp(ctx, sh.key)
	for attempt := 0; err == nil && attempt < maxFlushAttempts; attempt++ {
		if err = c.check(sh.key); err != nil {
			break
		}
		m := sh.merge(c, batch)
		if len(m.accepted) == 0 || !m.changed {
			m.finish()
			s.breaker.succeed()
			return
		}
		err = sh.write(ctx, c, m)
		if err == nil {
			s.updates.Add(1)
			s.breaker.succeed()
			m.finish()
			sh.foldIfDue()
			return
		}
		if !apierrors.IsConflict(err) && !errors.Is(err, errRefetch) {
			if !uncertain(err) {
				break
			}
			unanswered = append(unanswered, m)
		}
		c, err = sh.refetch(ctx)
		if err != nil {
			break
		}
		if landed := landedOf(c.logical, unanswered); landed != nil {
			s.updates.Add(1)
			s.breaker.succeed()
			landed.finish()
			return
		}
	}
	switch {
	case len(unanswered) > 0:
		err = fmt.Errorf("%w: %w: commit to %s went unanswered (%v); its writes may or may not have been applied", runtime.ErrStateUnavailable, runtime.ErrOutcomeUnknown, sh.key, err)
		s.breaker.fail()
	case err == nil:
		err = fmt.Errorf("%w: shard %s kept changing over %d merges", runtime.ErrConflict, sh.key, maxFlushAttempts)
	case uncertain(err):
		err = fmt.Errorf("%w: commit to %s: %v; nothing was applied", runtime.ErrStateUnavailable, sh.key, err)
		s.breaker.fail()
	default:
		err = fmt.Errorf("commit state to %s: %w", sh.key, err)
	}
	for _, p := range batch {
		if !isDone(p) {
			p.err = err
			close(p.done)
		}
	}
}

// write sends one group commit: to the journal of a journalled shard, else the shard
// whole (which becomes journalled with it once it is large enough), conditioned on
// the resourceVersion of what it was merged onto.
func (sh *shard) write(ctx context.Context, c *composition, m *merged) error {
	if c.journalled() {
		return sh.writeJournal(ctx, c, m)
	}
	s := sh.store
	sh.startJournal(ctx, c, m)
	wire := pack(m.obj)
	if err := s.client.Update(ctx, wire); err != nil {
		return err
	}
	s.bytesSent.Add(int64(objectBytes(wire)))
	m.obj.ResourceVersion = wire.ResourceVersion
	s.observe(m.obj)
	return nil
}

// errRefetch: the shard must be read again before the group commit is merged again;
// nothing was applied. errRefused marks a commit refused before anything was sent.
var (
	errRefetch = errors.New("read the shard again")
	errRefused = errors.New("refused")
)

// refetch reads the shard from the API server, trying again while it does not answer,
// until ctx ends.
func (sh *shard) refetch(ctx context.Context) (*composition, error) {
	for {
		cm, err := sh.store.fetchComp(ctx, sh.key)
		if err == nil || !uncertain(err) || ctx.Err() != nil {
			return cm, err
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return nil, err
		}
	}
}

// uncertain reports whether a failed call may have been applied or may succeed when
// tried again: anything but a definite refusal.
func uncertain(err error) bool {
	return !(apierrors.IsConflict(err) || apierrors.IsInvalid(err) || apierrors.IsNotFound(err) ||
		apierrors.IsForbidden(err) || apierrors.IsRequestEntityTooLargeError(err) || apierrors.IsBadRequest(err) ||
		apierrors.IsUnauthorized(err) || apierrors.IsAlreadyExists(err) || errors.Is(err, errNotState) || errors.Is(err, errRefused))
}

// landedOf returns the attempt among unanswered whose id cm's AnnotationCommits lists.
func landedOf(cm *corev1.ConfigMap, unanswered []*merged) *merged {
	ids := strings.Fields(cm.Annotations[AnnotationCommits])
	for _, m := range unanswered {
		if slices.Contains(ids, m.id) {
			return m
		}
	}
	return nil
}

// merge applies what it can of batch onto a copy of base: decided cross-shard
// transactions of others are rolled forward or back first (for free, with this
// update), expired waits are swept, and each part is accepted or refused.
func (sh *shard) merge(c *composition, batch []*part) *merged {
	s := sh.store
	m := &merged{id: newID(6), obj: clone(c.logical)}
	obj := m.obj
	if obj.BinaryData == nil {
		obj.BinaryData = map[string][]byte{}
	}
	locks, settled := s.settle(sh.key, obj, batch)
	m.changed = settled
	if sweepWaits(obj, batch, locks, time.Now().Add(-waitSweepGrace)) {
		m.changed = true
	}
	size := c.size
	if m.changed { // settled or swept: counted again
		size = entryBytes(obj)
	}
	refuse := func(p *part, err error) {
		m.refused, m.errs = append(m.refused, p), append(m.errs, err)
	}
	for _, p := range batch {
		switch p.kind {
		case kindResolve:
			key := intentPrefix + p.txn
			if blob, ok := obj.BinaryData[key]; ok {
				if in, err := decodeIntent(blob); err == nil && p.commit {
					apply(obj, in.writes)
				}
				delete(obj.BinaryData, key)
				m.changed = true
			}
			m.accepted = append(m.accepted, p)
			continue
		case kindAbort:
			p.status = recordStatus(obj, p.txn)
			if p.status == pending {
				obj.BinaryData[recordPrefix+p.txn] = encodeRecord(record{id: p.txn, status: aborted, created: time.Now()})
				p.status, m.changed = aborted, true
			}
			m.accepted = append(m.accepted, p)
			continue
		case kindForget:
			if _, ok := obj.BinaryData[recordPrefix+p.txn]; ok {
				delete(obj.BinaryData, recordPrefix+p.txn)
				m.changed = true
			}
			m.accepted = append(m.accepted, p)
			continue
		}
		if k, ok := conflict(p, obj); !ok {
			refuse(p, &runtime.ConflictError{Key: k})
			continue
		}
		if page := corruptPage(p, obj); page != "" {
			refuse(p, fmt.Errorf("write to %s: page %s: %w (see the revision's state problems)", sh.key, page, errCorrupt))
			continue
		}
		if err := lockedBy(p, locks); err != nil {
			refuse(p, err)
			continue
		}
		add := p.writes
		if p.kind == kindPrewrite {
			reads := map[string]bool{}
			for k := range p.reads {
				reads[k] = true
			}
			add = map[string][]byte{intentPrefix + p.txn: encodeIntent(&intent{id: p.txn, primary: p.primary, created: p.created, reads: reads, writes: p.writes})}
		} else if p.txn != "" {
			if recordStatus(obj, p.txn) != pending {
				refuse(p, &runtime.ConflictError{Key: "cross-shard commit " + p.txn + " (aborted by a resolver)"})
				continue
			}
			add = withEntry(p.writes, recordPrefix+p.txn, encodeRecord(record{id: p.txn, status: committed, created: p.created, secondaries: p.secondaries}))
		}
		grown := size
		for k, v := range add {
			grown += entryDelta(obj.BinaryData[k], v, k)
		}
		if grown > s.budget && grown > size {
			refuse(p, fmt.Errorf("%w: shard %s would hold %d bytes, past its %d-byte budget: give revision %s more state.shards or store less",
				runtime.ErrStateFull, sh.key, grown, s.budget, obj.Labels[LabelRevision]))
			continue
		}
		apply(obj, add)
		size = grown
		m.changed = true
		m.accepted = append(m.accepted, p)
	}
	if m.changed {
		remember(obj, m.id)
	}
	return m
}

// clone copies a shard's ConfigMap for a commit to change: its maps are copied, the
// entries' bytes shared (nothing changes them in place), so copying costs a map copy,
// not an allocation per entry, and diff tells unchanged entries by their address.
func clone(cm *corev1.ConfigMap) *corev1.ConfigMap {
	out := &corev1.ConfigMap{TypeMeta: cm.TypeMeta, Immutable: cm.Immutable}
	cm.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	out.Data = maps.Clone(cm.Data)
	out.BinaryData = maps.Clone(cm.BinaryData)
	return out
}

// withEntry returns a copy of w with k set to v.
func withEntry(w map[string][]byte, k string, v []byte) map[string][]byte {
	out := make(map[string][]byte, len(w)+1)
	for wk, wv := range w {
		out[wk] = wv
	}
	out[k] = v
	return out
}

func apply(obj *corev1.ConfigMap, writes map[string][]byte) {
	for k, v := range writes {
		if v == nil {
			delete(obj.BinaryData, k)
		} else {
			obj.BinaryData[k] = v
		}
	}
}

// settle rolls forward, in obj, the intents of other transactions that their primary
// (as this process last saw it) records committed, drops those it records aborted,
// and drops aborted records older than recordTTL. It returns the intents still
// pending, which lock what they name, and whether it changed obj.
func (s *Store) settle(key types.NamespacedName, obj *corev1.ConfigMap, batch []*part) ([]*intent, bool) {
	var locks []*intent
	changed := false
	for k, v := range obj.BinaryData {
		switch {
		case strings.HasPrefix(k, intentPrefix):
			in, err := decodeIntent(v)
			if err != nil {
				continue
			}
			own := slices.ContainsFunc(batch, func(p *part) bool { return p.txn == in.id })
			switch st := s.viewStatus(key, in); {
			case own || st == pending:
				locks = append(locks, in)
			case st == committed:
				apply(obj, in.writes)
				delete(obj.BinaryData, k)
				changed = true
			default:
				delete(obj.BinaryData, k)
				changed = true
			}
		case strings.HasPrefix(k, recordPrefix):
			if r, err := decodeRecord(v); err == nil && r.status == aborted && time.Since(r.created) > recordTTL {
				delete(obj.BinaryData, k)
				changed = true
			}
		}
	}
	return locks, changed
}

// recordTTL is how long the record of an aborted cross-shard transaction is kept: far
// longer than any of its writer's updates can be on their way, so a late prewrite
// still finds the transaction decided.
const recordTTL = time.Hour

// lockedBy refuses p when a pending intent of another transaction wrote what p reads
// or writes, or read what p writes.
func lockedBy(p *part, locks []*intent) error {
	for _, in := range locks {
		if in.id == p.txn {
			continue
		}
		for k := range p.reads {
			if _, ok := in.writes[k]; ok {
				return &lockedError{ConflictError: runtime.ConflictError{Key: k + " (locked by a pending cross-shard commit)"}, intent: in}
			}
		}
		for k := range p.writes {
			_, w := in.writes[k]
			if w || in.reads[k] {
				return &lockedError{ConflictError: runtime.ConflictError{Key: k + " (locked by a pending cross-shard commit)"}, intent: in}
			}
		}
	}
	return nil
}

// waitSweepGrace is how long past its expiry a wait is kept before a commit drops it,
// so that replicas whose clocks differ a little agree it has expired.
const waitSweepGrace = time.Minute

// sweepWaits drops from obj the sessions' waits entries whose every wait expired before
// cutoff and that no part of batch and no pending intent read or wrote, and reports
// whether it dropped any (an entry with a live wait keeps its expired ones until the
// session comes back). An activity clears its session's waits only when the session
// comes back, so without this every session that never does would keep its waits until
// the shard is full. Waits are only swept along with a write to their shard, which is
// when a shard can grow.
// Entries that are not well-formed waits of their key are left for the problem report.
func sweepWaits(obj *corev1.ConfigMap, batch []*part, locks []*intent, cutoff time.Time) bool {
	swept := false
	for k, v := range obj.BinaryData {
		if !strings.HasPrefix(k, waitPrefix) {
			continue
		}
		session, ws, ok := splitWaits(v)
		if !ok || !expiredBefore(ws, cutoff) || touched(batch, locks, k) {
			continue
		}
		if own, _ := waitKey(string(session), 1); own == k {
			delete(obj.BinaryData, k)
			swept = true
		}
	}
	return swept
}

// expiredBefore reports whether every wait of ws expired before cutoff.
func expiredBefore(ws []waitFields, cutoff time.Time) bool {
	for _, w := range ws {
		if !w.expires.Before(cutoff) {
			return false
		}
	}
	return true
}

// touched reports whether a part of batch or a pending intent read or wrote entry k.
func touched(batch []*part, locks []*intent, k string) bool {
	for _, p := range batch {
		_, read := p.reads[k]
		_, wrote := p.writes[k]
		if read || wrote {
			return true
		}
	}
	for _, in := range locks {
		_, wrote := in.writes[k]
		if wrote || in.reads[k] {
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

// objectBytes estimates the bytes of the object sent to the API server: binaryData
// travels as bytes in protobuf.
func objectBytes(cm *corev1.ConfigMap) int {
	n := 512 // metadata
	for k, v := range cm.BinaryData {
		n += len(k) + len(v) + 6
	}
	return n
}

// corruptPage returns the page, kept as it was because it does not decode, that one of
// p's writes would go to: writing there would drop what it held.
func corruptPage(p *part, obj *corev1.ConfigMap) string {
	for k := range p.writes {
		if page := pageOf(k); page != "" {
			if _, ok := obj.BinaryData[page]; ok {
				return page
			}
		}
	}
	return ""
}

// breaker holds new commits back while the API server does not answer, so they fail
// at once with runtime.ErrStateUnavailable instead of piling up behind it: after a
// commit fails for want of an answer, one commit every probeInterval is let through to
// find out whether it is back, and the first that succeeds closes the breaker.
type breaker struct {
	mu        sync.Mutex
	open      bool
	lastProbe time.Time
}

// probeInterval is how often an open breaker lets a commit through: service resumes
// within about this long of the API server's return.
const probeInterval = 250 * time.Millisecond

func (b *breaker) allow() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open {
		return nil
	}
	if now := time.Now(); now.Sub(b.lastProbe) >= probeInterval {
		b.lastProbe = now
		return nil
	}
	return errBreakerOpen
}

func (b *breaker) fail() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open {
		b.open, b.lastProbe = true, time.Now()
	}
}

func (b *breaker) succeed() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.open = false
}

var errBreakerOpen = fmt.Errorf("%w: the API server did not answer recent commits; nothing was applied, try again in a second", runtime.ErrStateUnavailable)
