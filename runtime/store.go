package runtime

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Limits on what a guest may store.
const (
	// MaxKeyLen is the longest state key a guest may use, in bytes.
	MaxKeyLen = 512
	// MaxValueLen is the largest state value or parked wait, in bytes.
	MaxValueLen = 256 << 10
)

// StateKey names one state value. Pack comes from the host side of the call (the pack
// whose instance made it); Name is the guest's key.
type StateKey struct {
	Pack string
	Name string
}

// Wait is a flow parked by session wait, to be resumed by a later activity of the
// session for that flow. A session holds at most one wait per pack and flow, and at
// most MaxParkedFlows of them, holding at most MaxValueLen bytes of data together.
type Wait struct {
	// Pack and Flow are where the wait was parked.
	Pack string
	Flow string
	// Data is what the guest parked; the resuming activity receives it.
	Data []byte
	// Expires is when the wait stops being resumable.
	Expires time.Time
}

// MaxParkedFlows bounds the flows one session may have parked at once in one revision.
const MaxParkedFlows = 16

// Pin is a live wait as the dispatcher routes by it: the revision whose state holds it
// (namespace/name) and the pack and flow that parked it. A session's activities for
// that flow go to that revision while the wait lives.
type Pin struct {
	Revision string
	Pack     string
	Flow     string
	Expires  time.Time
}

type attemptKey struct{}

// WithAttempt marks ctx as the n-th run of an activity (0 for the first), so a Store
// may let activities that already lost a conflict commit first.
func WithAttempt(ctx context.Context, n int) context.Context {
	return context.WithValue(ctx, attemptKey{}, n)
}

// Attempt is how many times the activity of ctx has run before (see WithAttempt).
func Attempt(ctx context.Context) int {
	n, _ := ctx.Value(attemptKey{}).(int)
	return n
}

// Store is one revision's state namespace. The host scopes it: the runtime hands it
// only keys and session keys, never a tenant or revision taken from a guest.
type Store interface {
	// Begin opens the transaction of one activity.
	Begin(ctx context.Context) (Txn, error)
}

// Txn is the state transaction of one activity: reads are recorded, writes buffered, and
// nothing is visible to others until Commit.
type Txn interface {
	// Get returns a value and whether it exists, reading the transaction's own writes.
	Get(key StateKey) ([]byte, bool, error)
	// Put buffers a write.
	Put(key StateKey, value []byte) error
	// Delete buffers a delete.
	Delete(key StateKey) error
	// Waits returns the session's parked waits, one per pack and flow, in the order
	// they were parked (the newest last), or none. The read is of the session's whole
	// set and is recorded, so two activities cannot both consume one wait, nor both
	// change the set from the same starting point.
	Waits(session string) ([]Wait, error)
	// SetWaits replaces the session's parked waits at commit; none clears them.
	SetWaits(session string, ws []Wait)
	// Commit makes the writes durable and visible. It returns an error wrapping
	// ErrConflict when something the transaction read changed since; the caller may run
	// the activity again.
	Commit(ctx context.Context) error
	// Discard drops the buffered writes.
	Discard()
}

// MemStore is an in-memory Store with the same transaction semantics as the
// ConfigMap-backed one, which the suite in runtime/storetest checks on both:
// optimistic, per-key versions; a transaction's reads (values and waits, any key) are
// validated at commit and a changed one fails it with ErrConflict, applying none of its
// writes, also when it wrote nothing; a transaction reads its own writes; commits apply
// in the order they are made. Every commit is atomic, as a cross-shard
// commit of the ConfigMap-backed store is.
type MemStore struct {
	mu      sync.Mutex
	values  map[StateKey]memValue
	waits   map[string]memWaits
	version uint64
	// Commits counts successful commits that wrote something.
	Commits int
}

type memValue struct {
	data    []byte
	version uint64
}

type memWaits struct {
	waits   []Wait
	version uint64
}

// NewMemStore returns an empty in-memory store.
func NewMemStore() *MemStore {
	return &MemStore{values: map[StateKey]memValue{}, waits: map[string]memWaits{}}
}

// Begin implements Store.
func (s *MemStore) Begin(context.Context) (Txn, error) {
	return &memTxn{store: s}, nil
}

// Value returns a committed value, for tests and inspection.
func (s *MemStore) Value(key StateKey) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.values[key]
	return v.data, ok
}

// Waits returns the number of parked waits, over every session.
func (s *MemStore) Waits() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, w := range s.waits {
		n += len(w.waits)
	}
	return n
}

// Parked returns a session's committed waits, for tests and inspection.
func (s *MemStore) Parked(session string) []Wait {
	s.mu.Lock()
	defer s.mu.Unlock()
	return copyWaits(s.waits[session].waits)
}

// copyWaits copies the list, not the data, which nobody changes in place.
func copyWaits(ws []Wait) []Wait {
	if len(ws) == 0 {
		return nil
	}
	return append([]Wait(nil), ws...)
}

type memTxn struct {
	store      *MemStore
	reads      map[StateKey]uint64
	waitReads  map[string]uint64
	writes     map[StateKey][]byte // nil value: delete
	waitWrites map[string][]Wait   // nil: cleared
}

func (t *memTxn) Get(key StateKey) ([]byte, bool, error) {
	if v, ok := t.writes[key]; ok {
		return v, v != nil, nil
	}
	t.store.mu.Lock()
	v, ok := t.store.values[key]
	t.store.mu.Unlock()
	if t.reads == nil {
		t.reads = map[StateKey]uint64{}
	}
	if _, seen := t.reads[key]; !seen {
		t.reads[key] = v.version
	}
	return v.data, ok, nil
}

func (t *memTxn) Put(key StateKey, value []byte) error {
	if t.writes == nil {
		t.writes = map[StateKey][]byte{}
	}
	t.writes[key] = append([]byte{}, value...)
	return nil
}

func (t *memTxn) Delete(key StateKey) error {
	if t.writes == nil {
		t.writes = map[StateKey][]byte{}
	}
	t.writes[key] = nil
	return nil
}

func (t *memTxn) Waits(session string) ([]Wait, error) {
	if ws, ok := t.waitWrites[session]; ok {
		return copyWaits(ws), nil
	}
	t.store.mu.Lock()
	w := t.store.waits[session]
	t.store.mu.Unlock()
	if t.waitReads == nil {
		t.waitReads = map[string]uint64{}
	}
	if _, seen := t.waitReads[session]; !seen {
		t.waitReads[session] = w.version
	}
	return copyWaits(w.waits), nil
}

func (t *memTxn) SetWaits(session string, ws []Wait) {
	if t.waitWrites == nil {
		t.waitWrites = map[string][]Wait{}
	}
	t.waitWrites[session] = copyWaits(ws)
}

func (t *memTxn) Commit(context.Context) error {
	// As in the ConfigMap-backed store, every read is validated, whatever key or
	// session, also of a transaction that wrote nothing (its answer must be
	// serializable too); then the writes apply at once.
	s := t.store
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, ver := range t.reads {
		if s.values[k].version != ver {
			return &ConflictError{Key: k.Name}
		}
	}
	for k, ver := range t.waitReads {
		if s.waits[k].version != ver {
			return &ConflictError{Key: "session " + k}
		}
	}
	if len(t.writes) == 0 && len(t.waitWrites) == 0 {
		return nil
	}
	s.version++
	for k, v := range t.writes {
		if v == nil {
			delete(s.values, k)
			continue
		}
		s.values[k] = memValue{data: v, version: s.version}
	}
	for k, ws := range t.waitWrites {
		if len(ws) == 0 {
			delete(s.waits, k)
			continue
		}
		s.waits[k] = memWaits{waits: ws, version: s.version}
	}
	s.Commits++
	return nil
}

func (t *memTxn) Discard() { t.writes, t.waitWrites = nil, nil }

// ConflictError says which key another writer changed under a transaction.
type ConflictError struct{ Key string }

func (e *ConflictError) Error() string { return "state key " + e.Key + " changed by another writer" }
func (e *ConflictError) Unwrap() error { return ErrConflict }

// ErrOutcomeUnknown marks a commit error after which the transaction's writes may or may
// not have been applied, all of them or none: the store lost contact while the decisive
// write was on its way. It always comes with ErrStateUnavailable. A commit error without
// it means nothing of the transaction was applied.
var ErrOutcomeUnknown = errors.New("commit outcome unknown")
