package state

import (
	"context"
	"fmt"

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
	return &txn{ns: n, ctx: ctx, attempt: runtime.Attempt(ctx)}, nil
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
	ns *Namespace
	// ctx is the activity's: a read that must wait (for a pending commit, or for the API
	// server) waits no longer than the activity may.
	ctx     context.Context
	attempt int
	reads   map[string]read
	writes  map[string]write
}

// entry reads one entry from the newest known copy of its shard and records the read.
func (t *txn) entry(key string, shard int) ([]byte, bool, error) {
	if w, ok := t.writes[key]; ok {
		return w.blob, w.blob != nil, nil
	}
	ctx, cancel := context.WithTimeout(t.ctx, t.ns.store.commitTimeout)
	defer cancel()
	blob, ok, err := t.ns.store.read(ctx, t.ns.shards[shard], key)
	if err != nil {
		return nil, false, err
	}
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

func (t *txn) Waits(session string) ([]runtime.Wait, error) {
	key, shard := waitKey(session, len(t.ns.shards))
	blob, ok, err := t.entry(key, shard)
	if err != nil || !ok {
		return nil, err
	}
	owner, ws, err := decodeWaits(blob)
	if err != nil || owner != session {
		return nil, fmt.Errorf("waits %s in %s: %w", key, t.ns.shards[shard], errCorrupt)
	}
	return ws, nil
}

func (t *txn) SetWaits(session string, ws []runtime.Wait) {
	key, shard := waitKey(session, len(t.ns.shards))
	if len(ws) == 0 {
		t.put(key, shard, nil)
		return
	}
	t.put(key, shard, encodeWaits(session, ws))
}

func (t *txn) Discard() { t.writes = nil }
