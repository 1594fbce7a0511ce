// Package state keeps each revision's state namespace in ConfigMaps that packhost owns:
// durable before an activity is answered, isolated per revision, shared by every manager
// replica, and never losing a write.
//
// # Layout
//
// A revision's namespace is spec.state.shards ConfigMaps named <revision>-state-<n>,
// labelled packhost.io/component=state plus tenant, revision and shard, and
// owner-referenced to the Revision. Entries live in binaryData under keys derived from a
// SHA-256 of what they name ("v.<hash>" for a pack's value, "w.<hash>" for a session's
// wait); the entry's bytes carry the original pack and key, so any guest key up to 512
// bytes round-trips exactly and a foreign or corrupted entry is reported, not trusted. A
// key's shard is chosen by the same hash.
//
// # Shard sizing
//
// Every update rewrites the whole ConfigMap, so update cost grows with shard size.
// Measured against envtest here: a 1 KiB ConfigMap takes about 260 updates/s from one
// writer, 100 KiB about 90/s, 800 KiB about 26/s. A shard's budget is therefore 256 KiB
// of entries (keys plus values, about 340 KiB of object once base64 encoded), well under
// the 1 MiB object limit and in the range where an update still costs a few
// milliseconds; a revision needing more state takes more shards (up to 16, 4 MiB). A
// commit that would pass the budget fails with runtime.ErrStateFull and nothing already
// stored is lost.
//
// # Commits
//
// An activity's reads and writes form a transaction. Writes waiting for one shard are
// group-committed: one Update carries every queued activity's writes, conditioned on the
// resourceVersion they were merged onto. On a conflict the latest object is read and the
// activities merged again key by key; an activity whose read keys changed meanwhile is
// answered with runtime.ErrConflict, which the runtime turns into a re-run. Atomicity is
// per shard: an activity whose writes span shards commits them shard by shard.
//
// # Reads
//
// Reads come from a watch of the ConfigMaps carrying the state label only (never every
// ConfigMap in the cluster), with the process's own commits applied as soon as they are
// acknowledged, so a writer reads its writes. resourceVersions are compared as the
// integers the API server issues, to keep the newest copy of each shard.
package state

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Labels on every state ConfigMap.
const (
	LabelComponent = "packhost.io/component"
	ComponentState = "state"
	LabelTenant    = "packhost.io/tenant"
	LabelRevision  = "packhost.io/revision"
	LabelShard     = "packhost.io/shard"
)

// DefaultShardBudget is the most entry bytes one shard holds (see Shard sizing).
const DefaultShardBudget = 256 << 10

// maxFlushAttempts bounds how often one group commit is merged again after conflicts.
const maxFlushAttempts = 16

// flushTimeout bounds one group commit, whoever waits for it.
const flushTimeout = 30 * time.Second

// Options configure a Store.
type Options struct {
	// ShardBudget is the most entry bytes per shard; 0 takes DefaultShardBudget.
	ShardBudget int
	// Logger receives problems found in state ConfigMaps.
	Logger logr.Logger
	// OnCommit, when set, is told how long each successful commit took.
	OnCommit func(time.Duration)
}

// Store is the process's view of every revision's state namespace.
type Store struct {
	client   client.Client
	cache    cache.Cache
	budget   int
	log      logr.Logger
	onCommit func(time.Duration)

	mu       sync.RWMutex
	view     map[types.NamespacedName]*corev1.ConfigMap
	shards   map[types.NamespacedName]*shard
	sessions map[string]Pin
	// problems are, per state ConfigMap, its entries that packhost did not write, by
	// entry key (the empty key stands for the data field).
	problems map[types.NamespacedName]map[string]string

	updates   atomic.Int64
	bytesSent atomic.Int64
}

// Pin says which revision holds a live wait for a session.
type Pin struct {
	// Revision is namespace/name of the Revision.
	Revision string
	Expires  time.Time
}

// New creates a Store that watches the state ConfigMaps through cfg. Start it (it is a
// manager Runnable) before use.
func New(cfg *rest.Config, scheme *runtime.Scheme, opts Options) (*Store, error) {
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("create client: %w", err)
	}
	sel := labels.SelectorFromSet(labels.Set{LabelComponent: ComponentState})
	ca, err := cache.New(cfg, cache.Options{
		Scheme: scheme,
		ByObject: map[client.Object]cache.ByObject{
			&corev1.ConfigMap{}: {Label: sel},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("create state cache: %w", err)
	}
	if opts.ShardBudget == 0 {
		opts.ShardBudget = DefaultShardBudget
	}
	s := &Store{
		client: c, cache: ca, budget: opts.ShardBudget, log: opts.Logger, onCommit: opts.OnCommit,
		view: map[types.NamespacedName]*corev1.ConfigMap{}, shards: map[types.NamespacedName]*shard{},
		sessions: map[string]Pin{}, problems: map[types.NamespacedName]map[string]string{},
	}
	inf, err := ca.GetInformer(context.Background(), &corev1.ConfigMap{})
	if err != nil {
		return nil, fmt.Errorf("watch state ConfigMaps: %w", err)
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.observeAny(obj) },
		UpdateFunc: func(_, obj any) { s.observeAny(obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if cm, ok := obj.(*corev1.ConfigMap); ok {
				s.forget(client.ObjectKeyFromObject(cm))
			}
		},
	}); err != nil {
		return nil, fmt.Errorf("watch state ConfigMaps: %w", err)
	}
	return s, nil
}

// Start runs the watch until ctx is done.
func (s *Store) Start(ctx context.Context) error { return s.cache.Start(ctx) }

// WaitForSync blocks until the watch has listed every state ConfigMap.
func (s *Store) WaitForSync(ctx context.Context) bool { return s.cache.WaitForCacheSync(ctx) }

// NeedLeaderElection is false: every replica reads and writes state.
func (s *Store) NeedLeaderElection() bool { return false }

// Updates reports the ConfigMap updates this store sent and the object bytes they carried.
func (s *Store) Updates() (updates, bytes int64) { return s.updates.Load(), s.bytesSent.Load() }

// PinnedRevision says which revision holds a live wait for the session key, if any.
func (s *Store) PinnedRevision(session string, now time.Time) (string, bool) {
	s.mu.RLock()
	p, ok := s.sessions[session]
	s.mu.RUnlock()
	if !ok || !now.Before(p.Expires) {
		return "", false
	}
	return p.Revision, true
}

// OpenSessions counts the live waits a revision holds.
func (s *Store) OpenSessions(namespace, revision string, now time.Time) int {
	want := namespace + "/" + revision
	n := 0
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, p := range s.sessions {
		if p.Revision == want && now.Before(p.Expires) {
			n++
		}
	}
	return n
}

// Problems reports what was found wrong in a revision's state ConfigMaps: foreign or
// corrupted entries, which are never trusted.
func (s *Store) Problems(namespace, revision string, shards int) []string {
	var out []string
	s.mu.RLock()
	defer s.mu.RUnlock()
	for i := range shards {
		key := types.NamespacedName{Namespace: namespace, Name: ShardName(revision, i)}
		bad := s.problems[key]
		if len(bad) == 0 {
			continue
		}
		entries := make([]string, 0, len(bad))
		for k, why := range bad {
			if k == "" {
				entries = append(entries, why)
			} else {
				entries = append(entries, k+": "+why)
			}
		}
		slices.Sort(entries)
		out = append(out, fmt.Sprintf("ConfigMap %s: %s", key, strings.Join(entries, "; ")))
	}
	return out
}

// ShardName is the name of a revision's n-th state ConfigMap.
func ShardName(revision string, n int) string { return fmt.Sprintf("%s-state-%d", revision, n) }

func (s *Store) observeAny(obj any) {
	if cm, ok := obj.(*corev1.ConfigMap); ok {
		s.observe(cm)
	}
}

func rv(obj metav1.Object) uint64 {
	n, _ := strconv.ParseUint(obj.GetResourceVersion(), 10, 64)
	return n
}

// observe records cm as the newest copy of its shard unless a newer one is known, and
// keeps the session index and the problem list current.
func (s *Store) observe(cm *corev1.ConfigMap) {
	key := client.ObjectKeyFromObject(cm)
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.view[key]
	if old != nil && rv(old) >= rv(cm) {
		return
	}
	s.view[key] = cm
	revision := cm.Namespace + "/" + cm.Labels[LabelRevision]
	bad := s.problems[key]
	if bad == nil {
		bad = map[string]string{}
		s.problems[key] = bad
	}
	// Only entries that changed are checked again; the others keep their verdict.
	for k, v := range cm.BinaryData {
		if old != nil {
			if prev, ok := old.BinaryData[k]; ok && string(prev) == string(v) {
				continue
			}
		}
		delete(bad, k)
		switch {
		case strings.HasPrefix(k, waitPrefix):
			w, err := decodeWait(v)
			if err != nil {
				bad[k] = err.Error()
				continue
			}
			if expected, _ := waitKey(w.session, 1); expected != k {
				bad[k] = "wait entry does not match its key"
				continue
			}
			s.sessions[w.session] = Pin{Revision: revision, Expires: w.expires}
		case strings.HasPrefix(k, valuePrefix):
			if len(v) == 0 || v[0] != entryValue {
				bad[k] = errCorrupt.Error()
			}
		default:
			bad[k] = "foreign key in a state ConfigMap"
		}
	}
	if old != nil {
		for k, v := range old.BinaryData {
			if _, still := cm.BinaryData[k]; still {
				continue
			}
			delete(bad, k)
			if !strings.HasPrefix(k, waitPrefix) {
				continue
			}
			if w, err := decodeWait(v); err == nil && s.sessions[w.session].Revision == revision {
				delete(s.sessions, w.session)
			}
		}
	}
	// The empty key stands for the data field, which packhost never writes.
	delete(bad, "")
	if len(cm.Data) > 0 {
		bad[""] = "data holds foreign keys; packhost keeps state in binaryData only"
	}
	if len(bad) > 0 {
		s.log.Info("State ConfigMap has content packhost did not write; it is not trusted", "configMap", key.String(), "problems", len(bad))
	}
}

func (s *Store) forget(key types.NamespacedName) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cm := s.view[key]
	delete(s.view, key)
	delete(s.problems, key)
	if cm == nil {
		return
	}
	revision := cm.Namespace + "/" + cm.Labels[LabelRevision]
	for k, v := range cm.BinaryData {
		if !strings.HasPrefix(k, waitPrefix) {
			continue
		}
		if w, err := decodeWait(v); err == nil && s.sessions[w.session].Revision == revision {
			delete(s.sessions, w.session)
		}
	}
}

// latest returns the newest known copy of a shard, reading it from the API server when
// the watch has not delivered it yet.
func (s *Store) latest(ctx context.Context, key types.NamespacedName) (*corev1.ConfigMap, error) {
	s.mu.RLock()
	cm := s.view[key]
	s.mu.RUnlock()
	if cm != nil {
		return cm, nil
	}
	return s.fetch(ctx, key)
}

func (s *Store) fetch(ctx context.Context, key types.NamespacedName) (*corev1.ConfigMap, error) {
	cm := &corev1.ConfigMap{}
	if err := s.client.Get(ctx, key, cm); err != nil {
		return nil, fmt.Errorf("read state ConfigMap %s: %w", key, err)
	}
	if cm.Labels[LabelComponent] != ComponentState {
		return nil, fmt.Errorf("ConfigMap %s is not a packhost state ConfigMap (label %s=%s missing)", key, LabelComponent, ComponentState)
	}
	s.observe(cm)
	return cm, nil
}

func (s *Store) shard(key types.NamespacedName) *shard {
	s.mu.Lock()
	defer s.mu.Unlock()
	sh := s.shards[key]
	if sh == nil {
		sh = &shard{store: s, key: key}
		s.shards[key] = sh
	}
	return sh
}

// Spec names a revision's state namespace.
type Spec struct {
	Namespace   string
	Revision    string
	RevisionUID types.UID
	Tenant      string
	Shards      int
}

// Ensure creates the namespace's ConfigMaps that do not exist yet and returns their
// names. It is idempotent. A ConfigMap of that name that packhost did not create for
// this revision is an error, never adopted.
func (s *Store) Ensure(ctx context.Context, spec Spec) ([]string, error) {
	names := make([]string, spec.Shards)
	for i := range spec.Shards {
		names[i] = ShardName(spec.Revision, i)
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{
			Name: names[i], Namespace: spec.Namespace,
			Labels: map[string]string{
				LabelComponent: ComponentState, LabelTenant: spec.Tenant,
				LabelRevision: spec.Revision, LabelShard: strconv.Itoa(i),
			},
		}}
		if spec.RevisionUID != "" {
			t, f := true, false
			cm.OwnerReferences = []metav1.OwnerReference{{
				APIVersion: "packhost.io/v1alpha1", Kind: "Revision", Name: spec.Revision, UID: spec.RevisionUID,
				Controller: &t, BlockOwnerDeletion: &f,
			}}
		}
		err := s.client.Create(ctx, cm)
		if err == nil {
			s.observe(cm)
			continue
		}
		if !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("create state ConfigMap %s/%s: %w", spec.Namespace, names[i], err)
		}
		existing := &corev1.ConfigMap{}
		if err := s.client.Get(ctx, client.ObjectKeyFromObject(cm), existing); err != nil {
			return nil, fmt.Errorf("read state ConfigMap %s/%s: %w", spec.Namespace, names[i], err)
		}
		if existing.Labels[LabelComponent] != ComponentState || existing.Labels[LabelRevision] != spec.Revision {
			return nil, fmt.Errorf("ConfigMap %s/%s exists and is not revision %s's state: rename or delete it", spec.Namespace, names[i], spec.Revision)
		}
		s.observe(existing)
	}
	return names, nil
}

// Remove applies a revision's retention when it is deleted: with retain false the
// ConfigMaps are deleted (packhost does not wait for the garbage collector); with retain
// true they stay and lose their owner reference, so deleting the Revision keeps them.
func (s *Store) Remove(ctx context.Context, namespace, revision string, retain bool) error {
	var list corev1.ConfigMapList
	if err := s.client.List(ctx, &list, client.InNamespace(namespace),
		client.MatchingLabels{LabelComponent: ComponentState, LabelRevision: revision}); err != nil {
		return fmt.Errorf("list state of %s/%s: %w", namespace, revision, err)
	}
	for i := range list.Items {
		cm := &list.Items[i]
		if !retain {
			if err := s.client.Delete(ctx, cm); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("delete state ConfigMap %s/%s: %w", namespace, cm.Name, err)
			}
			s.forget(client.ObjectKeyFromObject(cm))
			continue
		}
		if len(cm.OwnerReferences) == 0 {
			continue
		}
		patch := client.MergeFrom(cm.DeepCopy())
		cm.OwnerReferences = nil
		if err := s.client.Patch(ctx, cm, patch); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("release state ConfigMap %s/%s: %w", namespace, cm.Name, err)
		}
	}
	return nil
}

var errNoShards = errors.New("state namespace has no shards")
