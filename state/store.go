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
// waits, one per parked pack and flow, in one entry; see entryWaits); the entry's bytes
// carry the original pack and key, or session, so any guest key up to 512 bytes
// round-trips exactly and a foreign or corrupted entry is reported, not trusted. A key's
// shard is chosen by the same hash. Each parked flow pins the session's activities for
// that flow to the revision (Pins, per revision, pack and flow).
//
// # Shard sizing
//
// Rewriting a ConfigMap costs in proportion to its size. Measured against envtest here:
// a 1 KiB ConfigMap takes about 260 updates/s from one writer, 100 KiB about 90/s,
// 800 KiB about 26/s. A shard's budget is 256 KiB of entries (keys plus values), well
// under the 1 MiB object limit, so that a fold (see Journal) still costs a few
// milliseconds; a revision needing more state takes more shards (up to 64, 16 MiB). A
// commit that would pass the budget fails with runtime.ErrStateFull and nothing already
// stored is lost. The budget counts what the shard holds: its base and its journal's
// records composed (an entry the journal rewrites counts once).
//
// # Journal
//
// A shard of up to Options.JournalAbove (DefaultJournalAbove, 16 KiB) of entries is one
// ConfigMap, and every group commit rewrites it: at that size that costs about what any
// write does. Past it, the shard is journalled: its base ConfigMap (<revision>-state-<n>)
// carries AnnotationFoldedThrough, and its group commits append their changes, as one
// record each (a sequence number, the commit's id and the entries it wrote or deleted;
// all records packed in one binaryData key, see journalData), to a journal ConfigMap
// <revision>-state-<n>-journal, created (empty) by the commit that
// journals the shard. What a shard holds is its base with the journal's records after
// the base's folded-through sequence applied in order (a composition); readers, the
// watch's view and every merge work on that.
//
//   - Serialisation: a journal write is conditioned on the journal's resourceVersion,
//     so the journal is the shard's point of serialisation; every write that changes
//     what the shard holds goes through it. The base is then only ever rewritten by a
//     fold, which changes nothing the shard holds, so a commit validated against base
//     ⊕ journal and conditioned on the journal alone stays serializable while a fold
//     races it. Reads are validated by value at merge time, as before.
//   - Fold: a writer whose journal write leaves the journal due (its records × its bytes
//     reach twice the shard's bytes, see foldDue; or FoldAfter records, default 256; or
//     64 KiB) rewrites the base in the background as base ⊕ journal, marked folded
//     through the journal's last record, conditioned on the base's resourceVersion. The
//     next journal write, by any replica, trims the records the base has folded; no
//     commit waits for a fold or conflicts with one.
//   - Crashes and half-seen folds: a fold stopped after the base write leaves records
//     that readers skip (the base says they are folded) and the next journal write
//     trims. The journal carries AnnotationTrimmedThrough; a copy of the base folded
//     through less than that is older than the journal, so such a pair is never
//     composed: the shard is read again, base then journal (then the base once more if
//     a fold landed in between). The watch delivers a fold's base before its trim.
//   - Lost answers: a journal record carries its group commit's id, and the ids of
//     folded records join the base's AnnotationCommits, so a commit whose answer was
//     lost is found as before.
//   - Cross-shard commits: intents and records are entries like any other, written and
//     read through the composition, so a journalled shard takes part unchanged.
//   - Trust: the journal is judged as its shard is (controller reference to the
//     Revision's UID, tenant label, its name for its shard label) and adopted with it;
//     a ConfigMap of its name that is not trusted is never read and never written: a
//     shard that is not journalled yet stays unjournalled, a journalled one refuses
//     commits until it is removed. A record that does not decode is reported (Problems)
//     and the shard is neither read, written nor folded until it is removed.
//   - Older shards: a base without AnnotationFoldedThrough is read and written as ever
//     and journalled by the first commit that finds it past the threshold. A journalled
//     base writes its pages in journalPageVersion, which a packhost without journals
//     cannot decode, so it refuses the shard instead of writing past its journal; still,
//     do not run replicas of both versions at once on journalled state (v1alpha1).
//
// Why a journal: the commit's cost is then bounded by its own changes and the journal
// (a few KiB), not the shard. Splitting a shard across several ConfigMaps by key hash
// would only divide the rewrite, and a transaction over keys of several parts would need
// the cross-shard protocol, or a manifest written with every commit.
//
// Cost in API writes per activity on a journalled shard, before group commit shares
// them: 1 journal write, plus 1 base rewrite per fold (the trim rides on the next
// journal write). With k records between folds and d bytes per record, a commit sends
// about kd/2 bytes of journal and B/k of the shard's B bytes amortised; the fold rule
// keeps k near sqrt(2B/d): for 1,000 entries (a shard of about 100 KB) and one-entry
// commits, a fold every 40-50 commits; measured, 1.02 writes and 4.9 KB sent per
// activity instead of 1 write of 100 KB. TestJournalKeepsTheCommitCostFlat checks the
// bytes.
//
// # Commit cost
//
// A shard's entries are packed into 16 binaryData pages (see pagePrefix), so the API
// server's managed-fields work does not grow with the number of keys, ConfigMaps travel
// as protobuf (binaryData as bytes, not base64 in JSON), and without gzip: a profile of
// the API server under a commit loop on a shard of 1,000 entries
// (kubectl get --raw '/debug/pprof/profile?seconds=8') showed compressing each watch
// event of the shard as its largest single cost. BenchmarkCommitFilled
// (go test ./state -run '^$' -bench CommitFilled -benchtime 200x; one shard, entries
// of about 100 bytes, envtest on 2 shared cores, noisy: compare cases of one run, which
// it reports as rate-x-empty and cpu-x-empty) measured activities/s and API-server CPU ms
// per activity, whole-shard rewrites (packed, protobuf) → journal, two runs:
//
//	entries=0/c1          328 → 266, 388     2.0 → 2.6, 2.35
//	entries=1000/c1        82 → 234, 200     7.8 → 3.3, 2.9
//	entries=10000/c1     16.4 → 101, 123      29 → 3.35, 4.15
//	entries=0/c16        2651 → 1220, 2610   0.3 → 0.4, 0.25
//	entries=1000/c16      522 → 791, 1098   1.05 → 0.7, 0.8
//	entries=10000/c16      83 → 593, 433     4.0 → 0.7, 1.25
//
// At 1,000 entries and c1 that is 0.88x and 0.52x the empty shard's rate with 1.27x and
// 1.23x its API-server CPU (the goal: ≥ 0.6x, ≤ 3x; whole-shard rewrites gave 0.25x and
// 4x). The CPU ratio held at 1.0-1.8x over a dozen runs; the rate ratio ranged 0.5-1.0x
// (median about 0.7x over nine runs) with the empty case's own rate swinging 230-560/s on the shared
// machine. What still grows with the shard is this process's work, not the API
// server's: a merge copies the shard's entry map, and each journal write is composed
// into a new copy of it (immutable, as readers hold it without a lock); at 10,000
// entries that is most of a commit's time.
//
// # Commits
//
// An activity's reads and writes form a transaction, serializable across every shard
// of its namespace and applied all or nothing. Writes waiting for one shard are
// group-committed: one Update carries every queued activity's share, conditioned on the
// resourceVersion it was merged onto. On a conflict the latest object is read and the
// shares merged again key by key; an activity whose read keys changed meanwhile is
// answered with runtime.ErrConflict, which the runtime turns into a re-run. A
// transaction whose reads and writes all lie in one shard (the common case with one
// shard, or a counter without a session) takes exactly that: one share of one update.
//
// A transaction that spans shards commits Percolator-style, with resourceVersion
// preconditions only. Its primary is the lowest shard it writes. On every other shard
// it reads or writes (the secondaries, in parallel) a group commit validates its reads
// there and writes an intent ("x.<txn>": the entries it read, which nobody may write,
// and the writes it will apply, which nobody may read or write) until the transaction
// is decided. Then the primary's group commit validates the reads there, applies the
// writes there and adds the record "t.<txn>" = committed, all in one guarded update:
// that update is the decision, and the activity is answered. The intents are then
// rolled forward (in parallel, or by any group commit on their shard that comes first)
// and the record dropped with the primary's next group commit. Whoever meets an intent asks the primary: committed means its writes are
// what is read, and any group commit on that shard applies them on the way; no record
// means pending, and a reader waits briefly or re-runs. An intent older than LockTTL
// (DefaultLockTTL, 10 s) whose primary has no record is decided aborted by writing
// "t.<txn>" = aborted there, guarded by resourceVersion, so either that write or the
// writer's deciding update wins, never both (an aborted record is kept an hour, past
// any late prewrite). A replica that starts (Ensure) or a Recover pass settles what a
// crashed writer left. The primary holds no intent of its own: its deciding update
// both validates and applies, which saves one write per transaction over textbook
// Percolator.
//
// Cost, in API writes per activity spanning N shards, before group commit shares them:
// N-1 intents + 1 decision + N-1 roll-forwards + 1 record drop = 2N (the common case of
// a session's wait on one shard and its keys on another: 4 instead of 2 before, which
// were not atomic), in two sequential rounds before the answer (intents in parallel,
// then the decision); the roll-forward and the record's drop follow the answer. A
// single-shard activity keeps its one write. The alternatives cost
// more: one log ConfigMap per revision serialises every commit of the revision on one
// object, and placing a session's keys with its wait cannot work for keys that
// sessions share.
//
// A write whose answer is lost (timeout, connection reset) is looked for in the
// shard's AnnotationCommits (ids of its last 64 group commits) before anything is
// merged again, so nothing is applied twice and a commit that landed is answered as
// landed. A commit bounded by CommitTimeout (DefaultCommitTimeout, 3 s) that cannot
// learn its outcome answers runtime.ErrStateUnavailable with runtime.ErrOutcomeUnknown;
// without ErrOutcomeUnknown, an error means nothing was applied. A commit still queued
// when the activity's deadline passes is withdrawn (nothing applied, ErrTimeout); one
// already sent is waited for, within the commit timeout. After a commit fails for want
// of an answer, a breaker refuses new commits at once (ErrStateUnavailable) and lets one
// through every 250 ms to find the API server back.
//
// # Reads
//
// Reads come from a watch of the ConfigMaps carrying the state label only (never every
// ConfigMap in the cluster; with Options.Namespaces, only in those namespaces), with
// the process's own commits applied as soon as they are acknowledged, so a writer
// reads its writes. An entry that a cross-shard intent writes is read as its
// transaction decided: the intent's value once the primary records it committed, the
// stored one once aborted; while undecided, the read waits up to 50 ms and then
// answers ErrConflict (the activity runs again). A transaction that writes has every
// read validated at commit, so its outcome is serializable even when the shards it
// read were seen at different moments. One that writes nothing writes nothing, and its
// reads are validated too: within one shard against the newest known copy (free), across
// N shards against each shard read from the API server (N reads, no write), because
// the watch may deliver one shard's roll-forward of a cross-shard commit before
// another shard's record of it.
//
// # Trust
//
// Anyone who may create ConfigMaps can put the state label on one, so a ConfigMap is
// trusted as state only when a revision this process serves (Ensure, Namespace) owns
// it: a controller reference to that Revision's UID, the revision's tenant label, and
// the name of its shard. Of any other labelled ConfigMap the watch keeps metadata only;
// it pins no session and is reported by Claims. Session pins are indexed per namespace
// and tenant (Pins), so a wait in one namespace or tenant never moves another's session.
// Ensure adopts an existing shard only when it is this Revision's or retained
// (AnnotationRetainedFor) for the same tenant and revision name; Remove touches only
// what the Revision owns. resourceVersions are compared as the
// integers the API server issues, to keep the newest copy of each shard.
package state

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/url"
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
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/packhost/packhost/runtime"
)

// Labels on every state ConfigMap.
const (
	LabelComponent = "packhost.io/component"
	ComponentState = "state"
	LabelTenant    = "packhost.io/tenant"
	LabelRevision  = "packhost.io/revision"
	LabelShard     = "packhost.io/shard"
)

// AnnotationRetainedFor marks a state ConfigMap that a deleted Revision with retention
// Retain left behind, as "<tenant>/<revision>": only a new Revision of that tenant and
// name adopts it.
const AnnotationRetainedFor = "packhost.io/retained-for"

// DefaultShardBudget is the most entry bytes one shard holds (see Shard sizing).
const DefaultShardBudget = 256 << 10

// maxFlushAttempts bounds how often one group commit is merged again after conflicts.
const maxFlushAttempts = 16

// DefaultCommitTimeout bounds one group commit, whoever waits for it: past it, the API
// server counts as not answering (runtime.ErrStateUnavailable).
const DefaultCommitTimeout = 3 * time.Second

// DefaultLockTTL is how long a cross-shard transaction's intents are left to their
// writer before whoever meets them decides the transaction: several commit timeouts.
const DefaultLockTTL = 10 * time.Second

// Options configure a Store.
type Options struct {
	// ShardBudget is the most entry bytes per shard; 0 takes DefaultShardBudget.
	ShardBudget int
	// Logger receives problems found in state ConfigMaps.
	Logger logr.Logger
	// OnCommit, when set, is told how long each successful commit took.
	OnCommit func(time.Duration)
	// Namespaces, when not empty, are the only namespaces whose state is watched (the
	// manager's --watch-namespaces).
	Namespaces []string
	// CommitTimeout bounds one group commit; 0 takes DefaultCommitTimeout.
	CommitTimeout time.Duration
	// LockTTL is how long a cross-shard transaction's intents belong to their writer;
	// 0 takes DefaultLockTTL, a negative value means no time at all (for recovery tests).
	LockTTL time.Duration
	// WrapClient, when set, wraps the client every read and write of state goes
	// through (fault-injection tests use it).
	WrapClient func(client.Client) client.Client
	// JournalAbove is the size of a shard's entries, in bytes, from which its commits
	// go to its journal (see Journal); 0 takes DefaultJournalAbove, a negative value
	// journals every shard from its first commit.
	JournalAbove int
	// FoldAfter is how many records a shard's journal holds before it is folded; 0
	// takes DefaultFoldAfter.
	FoldAfter int
}

// Store is the process's view of every revision's state namespace.
type Store struct {
	client   client.Client
	cache    cache.Cache
	budget   int
	log      logr.Logger
	onCommit func(time.Duration)

	commitTimeout time.Duration
	lockTTL       time.Duration
	journalAbove  int
	foldAfter     int
	breaker       breaker

	mu sync.RWMutex
	// raw are the newest copies of the trusted state ConfigMaps, shards (unpacked) and
	// journals, by their own key.
	raw map[types.NamespacedName]*corev1.ConfigMap
	// comps compose each shard from raw, by the shard's key; view holds their logical
	// content.
	comps map[types.NamespacedName]*composition
	view  map[types.NamespacedName]*corev1.ConfigMap
	// owners are the revisions whose state this process reads, by namespace/revision:
	// only ConfigMaps they own are trusted (see Trust).
	owners map[types.NamespacedName]owner
	shards map[types.NamespacedName]*shard
	// intents are the cross-shard intents in each trusted shard's newest copy, by
	// transaction id.
	intents map[types.NamespacedName]map[string]*intent
	// sessions are the live waits of each session, by the revision holding them.
	sessions map[pinKey][]runtime.Pin
	// problems are, per state ConfigMap, its entries that packhost did not write, by
	// entry key (the empty key stands for the data field).
	problems map[types.NamespacedName]map[string]string
	// suspects are the ConfigMaps with the state label that are not trusted, by key,
	// with only what judging them takes.
	suspects map[types.NamespacedName]*metav1.ObjectMeta
	claimed  chan types.NamespacedName

	updates   atomic.Int64
	bytesSent atomic.Int64
}

// owner is the revision a state ConfigMap must belong to.
type owner struct {
	uid    types.UID
	tenant string
}

// pinKey scopes a session's pins to the namespace and tenant of the state that holds
// the waits: a wait in another namespace's or another tenant's state never pins it.
type pinKey struct{ namespace, tenant, session string }

// New creates a Store that watches the state ConfigMaps through cfg. Start it (it is a
// manager Runnable) before use.
func New(cfg *rest.Config, scheme *kruntime.Scheme, opts Options) (*Store, error) {
	// ConfigMaps travel as protobuf: binaryData is sent as bytes, not base64 in JSON,
	// and the API server decodes and encodes it several times faster (see Commit cost).
	cfg = rest.CopyConfig(cfg)
	cfg.ContentType = kruntime.ContentTypeProtobuf
	cfg.AcceptContentTypes = kruntime.ContentTypeProtobuf + "," + kruntime.ContentTypeJSON
	// Nor gzip: compressing every watch event and answer of a shard cost the API
	// server more CPU than anything else in a commit (its profile, see Commit cost).
	cfg.DisableCompression = true
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("create client: %w", err)
	}
	if opts.ShardBudget == 0 {
		opts.ShardBudget = DefaultShardBudget
	}
	if opts.CommitTimeout == 0 {
		opts.CommitTimeout = DefaultCommitTimeout
	}
	switch {
	case opts.LockTTL == 0:
		opts.LockTTL = DefaultLockTTL
	case opts.LockTTL < 0:
		opts.LockTTL = 0
	}
	if opts.JournalAbove == 0 {
		opts.JournalAbove = DefaultJournalAbove
	}
	if opts.FoldAfter <= 0 {
		opts.FoldAfter = DefaultFoldAfter
	}
	if opts.WrapClient != nil {
		c = opts.WrapClient(c)
	}
	s := &Store{
		client: c, budget: opts.ShardBudget, log: opts.Logger, onCommit: opts.OnCommit,
		commitTimeout: opts.CommitTimeout, lockTTL: opts.LockTTL, intents: map[types.NamespacedName]map[string]*intent{},
		journalAbove: opts.JournalAbove, foldAfter: opts.FoldAfter,
		raw: map[types.NamespacedName]*corev1.ConfigMap{}, comps: map[types.NamespacedName]*composition{},
		view: map[types.NamespacedName]*corev1.ConfigMap{}, shards: map[types.NamespacedName]*shard{},
		owners: map[types.NamespacedName]owner{}, sessions: map[pinKey][]runtime.Pin{},
		problems: map[types.NamespacedName]map[string]string{}, suspects: map[types.NamespacedName]*metav1.ObjectMeta{},
		claimed: make(chan types.NamespacedName, claimedBuffer),
	}
	copts := cache.Options{
		Scheme: scheme,
		ByObject: map[client.Object]cache.ByObject{
			&corev1.ConfigMap{}: {Label: labels.SelectorFromSet(labels.Set{LabelComponent: ComponentState}), Transform: s.transform},
		},
	}
	if len(opts.Namespaces) > 0 {
		copts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range opts.Namespaces {
			copts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	ca, err := cache.New(cfg, copts)
	if err != nil {
		return nil, fmt.Errorf("create state cache: %w", err)
	}
	s.cache = ca
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

// Pins returns the live waits parked for the session key in the state of the tenant's
// revisions in namespace, one per revision, pack and flow, in that order: where the
// dispatcher sends the session's activities for each flow.
func (s *Store) Pins(namespace, tenant, session string, now time.Time) []runtime.Pin {
	s.mu.RLock()
	all := s.sessions[pinKey{namespace, tenant, session}]
	var out []runtime.Pin
	for _, p := range all {
		if now.Before(p.Expires) {
			out = append(out, p)
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b runtime.Pin) int {
		return cmp.Or(cmp.Compare(a.Revision, b.Revision), cmp.Compare(a.Pack, b.Pack), cmp.Compare(a.Flow, b.Flow))
	})
	return out
}

// SessionPins is Pins for a session key made by runtime.SessionKey with
// "<namespace>/<tenant>" as its tenant, as the dispatcher makes them: the namespace and
// tenant are read from the key, so only that tenant's waits are looked at. A key of
// another form pins nothing.
func (s *Store) SessionPins(session string, now time.Time) []runtime.Pin {
	parts := strings.SplitN(session, "/", 3)
	if len(parts) < 3 {
		return nil
	}
	scope, err := url.PathUnescape(parts[1])
	if err != nil {
		return nil
	}
	namespace, tenant, ok := strings.Cut(scope, "/")
	if !ok {
		return nil
	}
	return s.Pins(namespace, tenant, session, now)
}

// repinLocked replaces the pins revision holds for a session with its waits ws (none
// when the session's entry is gone). Invoke's records pin nothing. s.mu is held.
func (s *Store) repinLocked(key pinKey, revision string, ws []waitFields) {
	if runtime.IsInvokeSession(key.session) {
		return
	}
	pins := slices.DeleteFunc(s.sessions[key], func(p runtime.Pin) bool { return p.Revision == revision })
	for _, w := range ws {
		pins = append(pins, runtime.Pin{Revision: revision, Pack: string(w.pack), Flow: string(w.flow), Expires: w.expires})
	}
	if len(pins) == 0 {
		delete(s.sessions, key)
		return
	}
	s.sessions[key] = pins
}

// unpinLocked drops the pins of the waits entry blob in revision's shard. s.mu is held.
func (s *Store) unpinLocked(namespace, tenant, revision string, blob []byte) {
	if session, _, ok := splitWaits(blob); ok {
		s.repinLocked(pinKey{namespace, tenant, string(session)}, revision, nil)
	}
}

// Claims reports the ConfigMaps in namespace that carry the state labels of revision
// but are not its state (not owned by it, labelled for another tenant, misnamed): they
// are ignored, and the revision's owner should hear of them.
func (s *Store) Claims(namespace, revision string) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if _, ok := s.owners[types.NamespacedName{Namespace: namespace, Name: revision}]; !ok {
		return nil
	}
	var out []string
	for key, meta := range s.suspects {
		if key.Namespace != namespace || meta.Labels[LabelRevision] != revision {
			continue
		}
		if _, why := s.judge(meta); why != "" {
			out = append(out, fmt.Sprintf("ConfigMap %s claims to be revision %s's state and is ignored: %s", key, revision, why))
		}
	}
	slices.Sort(out)
	return out
}

// claimedBuffer is how many claim notices wait for a reader before more are dropped
// (a dropped notice delays a report to the next reconcile; nothing else depends on it).
const claimedBuffer = 256

// Claimed tells of revisions (namespace/name) that a ConfigMap newly claims; see Claims.
func (s *Store) Claimed() <-chan types.NamespacedName { return s.claimed }

// judge says whether a state ConfigMap is trusted: it belongs to a revision this process
// serves (see Ensure and Namespace), is owned by it (controller reference to that
// Revision's UID), is labelled for its tenant and named as its shard. It returns the
// tenant, or why the ConfigMap is not trusted. Only metadata is judged. s.mu is held.
func (s *Store) judge(meta metav1.Object) (string, string) {
	l := meta.GetLabels()
	revision := l[LabelRevision]
	o, ok := s.owners[types.NamespacedName{Namespace: meta.GetNamespace(), Name: revision}]
	if !ok {
		return "", "no revision " + revision + " is served here"
	}
	if l[LabelTenant] != o.tenant {
		return "", fmt.Sprintf("labelled for tenant %q, and the revision is tenant %q's", l[LabelTenant], o.tenant)
	}
	ref := metav1.GetControllerOfNoCopy(meta)
	if ref == nil || ref.Kind != "Revision" || !strings.HasPrefix(ref.APIVersion, "packhost.io/") || ref.Name != revision || ref.UID != o.uid {
		return "", "not owned by the Revision (no controller reference to its UID)"
	}
	n, err := strconv.Atoi(l[LabelShard])
	if name := meta.GetName(); err != nil || (name != ShardName(revision, n) && name != JournalName(revision, n)) {
		return "", fmt.Sprintf("not named %s for its shard label %q", ShardName(revision, n), l[LabelShard])
	}
	return o.tenant, ""
}

// transform keeps in the watch's cache only the metadata of state ConfigMaps that are
// not trusted, so nobody fills every replica's memory by creating labelled ConfigMaps.
func (s *Store) transform(obj any) (any, error) {
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok {
		return obj, nil
	}
	cm.ManagedFields = nil
	s.mu.RLock()
	_, why := s.judge(cm)
	s.mu.RUnlock()
	if why != "" {
		// Marked, so that observe never takes this husk for the shard's content if the
		// revision comes to be served before the event is handled: with its real
		// resourceVersion, a flush onto it would wipe the shard.
		cm.Data, cm.BinaryData, cm.Annotations = nil, nil, map[string]string{annotationStripped: "true"}
		return cm, nil
	}
	unpack(cm)
	return cm, nil
}

// annotationStripped marks a ConfigMap whose content transform dropped.
const annotationStripped = "packhost.io/stripped-by-cache"

// serve records that this process serves spec's revision: ConfigMaps it owns are
// trusted from now on.
func (s *Store) serve(spec Spec) {
	if spec.RevisionUID == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.owners[types.NamespacedName{Namespace: spec.Namespace, Name: spec.Revision}] = owner{uid: spec.RevisionUID, tenant: spec.Tenant}
}

// Release forgets a revision this process no longer serves: its state is no longer
// read, nor its waits pin sessions.
func (s *Store) Release(namespace, revision string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.owners, types.NamespacedName{Namespace: namespace, Name: revision})
	for key, cm := range s.view {
		if key.Namespace == namespace && cm.Labels[LabelRevision] == revision {
			s.forgetLocked(key)
		}
	}
}

// OpenSessions counts the sessions with a live wait, in any flow, in a revision's state.
func (s *Store) OpenSessions(namespace, revision string, now time.Time) int {
	want := namespace + "/" + revision
	n := 0
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, pins := range s.sessions {
		if slices.ContainsFunc(pins, func(p runtime.Pin) bool { return p.Revision == want && now.Before(p.Expires) }) {
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

// observe records cm as the newest copy of its shard's base or journal unless a newer
// one is known, composes the shard again, and keeps the session index and the problem
// list current. A ConfigMap that is not trusted
// (see judge) is only remembered as a suspect; it reports whether cm was trusted.
func (s *Store) observe(cm *corev1.ConfigMap) bool {
	key := client.ObjectKeyFromObject(cm)
	s.mu.Lock()
	defer s.mu.Unlock()
	tenant, why := s.judge(cm)
	if why != "" {
		s.suspectLocked(key, cm, why)
		return false
	}
	delete(s.suspects, key)
	if s.raw == nil {
		s.raw, s.comps = map[types.NamespacedName]*corev1.ConfigMap{}, map[types.NamespacedName]*composition{}
	}
	if old := s.raw[key]; old != nil && rv(old) >= rv(cm) {
		return true
	}
	shard, _ := shardKeyOf(key)
	if cm.Annotations[annotationStripped] != "" {
		// Trusted only since the watch cache stripped it: forget what is known, so that
		// the next read fetches the shard whole (latest).
		delete(s.raw, key)
		delete(s.comps, shard)
		delete(s.view, shard)
		return true
	}
	s.raw[key] = cm
	s.installLocked(shard, tenant)
	return true
}

// installLocked composes shard key again from the newest copies of its ConfigMaps and
// keeps the session index and the problem list current with its content. s.mu is held.
func (s *Store) installLocked(key types.NamespacedName, tenant string) {
	c := s.composeLocked(key)
	prev := s.comps[key]
	if c == nil {
		// Its journal was trimmed past the known base: read again when next needed.
		delete(s.comps, key)
		delete(s.view, key)
		return
	}
	s.comps[key] = c
	cm := c.logical
	old := s.view[key]
	if old == cm {
		return
	}
	s.view[key] = cm
	revision := cm.Namespace + "/" + cm.Labels[LabelRevision]
	bad := s.problems[key]
	if bad == nil {
		bad = map[string]string{}
		s.problems[key] = bad
	}
	// Only entries that changed are checked again; the others keep their verdict. A
	// journal write changes only what its records write (changedSince), so only those
	// are looked at; other changes have every entry compared.
	var changed map[string]bool
	if old != nil {
		changed = c.changedSince(prev)
	}
	if changed == nil {
		for k, v := range cm.BinaryData {
			s.recheckLocked(bad, old, cm, tenant, revision, k, v)
		}
	} else {
		for k := range changed {
			if v, ok := cm.BinaryData[k]; ok {
				s.recheckLocked(bad, old, cm, tenant, revision, k, v)
			}
		}
	}
	if old != nil {
		dropped := func(k string, v []byte) {
			if _, still := cm.BinaryData[k]; still {
				return
			}
			delete(bad, k)
			if strings.HasPrefix(k, waitPrefix) {
				s.unpinLocked(cm.Namespace, tenant, revision, v)
			}
		}
		if changed == nil {
			for k, v := range old.BinaryData {
				dropped(k, v)
			}
		} else {
			for k := range changed {
				if v, ok := old.BinaryData[k]; ok {
					dropped(k, v)
				}
			}
		}
	}
	s.indexIntents(key, cm, changed)
	// The empty key stands for the data field, which packhost never writes.
	delete(bad, "")
	if len(cm.Data) > 0 {
		bad[""] = "data holds foreign keys; packhost keeps state in binaryData only"
	}
	if len(bad) > 0 {
		s.log.Info("State ConfigMap has content packhost did not write; it is not trusted", "configMap", key.String(), "problems", len(bad))
	}
}

// recheckLocked judges entry k of shard cm again unless it is as in old, the shard's
// previous content, and keeps the session index current with it. s.mu is held.
func (s *Store) recheckLocked(bad map[string]string, old, cm *corev1.ConfigMap, tenant, revision, k string, v []byte) {
	if old != nil {
		if prev, ok := old.BinaryData[k]; ok && string(prev) == string(v) {
			return
		}
	}
	delete(bad, k)
	switch {
	case strings.HasPrefix(k, waitPrefix):
		if old != nil && old.BinaryData[k] != nil {
			s.unpinLocked(cm.Namespace, tenant, revision, old.BinaryData[k])
		}
		session, ws, ok := splitWaits(v)
		if !ok {
			bad[k] = errCorrupt.Error() + ": not a waits entry"
			return
		}
		if expected, _ := waitKey(string(session), 1); expected != k {
			bad[k] = "waits entry does not match its key"
			return
		}
		s.repinLocked(pinKey{cm.Namespace, tenant, string(session)}, revision, ws)
	case strings.HasPrefix(k, valuePrefix):
		if len(v) == 0 || v[0] != entryValue {
			bad[k] = errCorrupt.Error()
		}
	case strings.HasPrefix(k, intentPrefix):
		if in, err := decodeIntent(v); err != nil || intentPrefix+in.id != k {
			bad[k] = "malformed cross-shard intent"
		}
	case strings.HasPrefix(k, recordPrefix):
		if r, err := decodeRecord(v); err != nil || recordPrefix+r.id != k {
			bad[k] = "malformed cross-shard record"
		}
	case strings.HasPrefix(k, pagePrefix):
		bad[k] = "corrupt page of entries: " + errCorrupt.Error()
	case strings.HasPrefix(k, journalPrefix):
		bad[k] = "journal record does not decode: " + errCorrupt.Error()
	default:
		bad[k] = "foreign key in a state ConfigMap"
	}
}

// suspectLocked remembers an untrusted ConfigMap by its metadata, drops what was
// trusted of it before (its owner reference may just have been taken away), and tells
// of a new claim on a revision served here.
func (s *Store) suspectLocked(key types.NamespacedName, cm *corev1.ConfigMap, why string) {
	s.forgetLocked(key)
	meta := &metav1.ObjectMeta{Namespace: cm.Namespace, Name: cm.Name, Labels: cm.Labels, OwnerReferences: cm.OwnerReferences}
	prev, seen := s.suspects[key]
	s.suspects[key] = meta
	revision := types.NamespacedName{Namespace: cm.Namespace, Name: cm.Labels[LabelRevision]}
	if _, served := s.owners[revision]; !served {
		return
	}
	if seen {
		if _, was := s.judge(prev); was == why {
			return
		}
	}
	s.log.V(1).Info("Ignoring a ConfigMap that claims a revision's state", "configMap", key.String(), "revision", revision.String(), "why", why)
	select {
	case s.claimed <- revision:
	default:
	}
}

func (s *Store) forget(key types.NamespacedName) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.suspects, key)
	s.forgetLocked(key)
}

func (s *Store) forgetLocked(key types.NamespacedName) {
	if shard, journal := shardKeyOf(key); journal {
		if _, known := s.raw[key]; known {
			delete(s.raw, key)
			if base := s.raw[shard]; base != nil {
				s.installLocked(shard, base.Labels[LabelTenant])
			}
		}
		return
	}
	delete(s.raw, key)
	delete(s.raw, journalKeyOf(key))
	delete(s.comps, key)
	cm := s.view[key]
	delete(s.view, key)
	delete(s.problems, key)
	delete(s.intents, key)
	if cm == nil {
		return
	}
	revision := cm.Namespace + "/" + cm.Labels[LabelRevision]
	tenant := cm.Labels[LabelTenant]
	for k, v := range cm.BinaryData {
		if strings.HasPrefix(k, waitPrefix) {
			s.unpinLocked(cm.Namespace, tenant, revision, v)
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

// errNotState: a fetched ConfigMap is not state this process trusts; a definite
// refusal, never an outcome to wait for.
var errNotState = errors.New("not trusted state")

// fetch reads a shard from the API server and returns what it holds (its journal
// applied).
func (s *Store) fetch(ctx context.Context, key types.NamespacedName) (*corev1.ConfigMap, error) {
	c, err := s.fetchComp(ctx, key)
	if err != nil {
		return nil, err
	}
	return c.logical, nil
}

// fetchObject reads one state ConfigMap from the API server, as stored (unpacked).
func (s *Store) fetchObject(ctx context.Context, key types.NamespacedName) (*corev1.ConfigMap, error) {
	cm := &corev1.ConfigMap{}
	if err := s.client.Get(ctx, key, cm); err != nil {
		return nil, fmt.Errorf("read state ConfigMap %s: %w", key, err)
	}
	unpack(cm)
	if cm.Labels[LabelComponent] != ComponentState {
		return nil, fmt.Errorf("%w: ConfigMap %s is not a packhost state ConfigMap (label %s=%s missing)", errNotState, key, LabelComponent, ComponentState)
	}
	if !s.observe(cm) {
		s.mu.RLock()
		_, why := s.judge(cm)
		s.mu.RUnlock()
		return nil, fmt.Errorf("%w: ConfigMap %s is not trusted as state: %s", errNotState, key, why)
	}
	return cm, nil
}

// indexIntents records the cross-shard intents of cm, the newest copy of shard key;
// when changed is set, only those entries changed since the last copy. s.mu is held.
func (s *Store) indexIntents(key types.NamespacedName, cm *corev1.ConfigMap, changed map[string]bool) {
	idx := map[string]*intent{}
	scan := func(k string) {
		if !strings.HasPrefix(k, intentPrefix) {
			return
		}
		delete(idx, strings.TrimPrefix(k, intentPrefix))
		if in, err := decodeIntent(cm.BinaryData[k]); err == nil && intentPrefix+in.id == k {
			idx[in.id] = in
		}
	}
	if changed == nil {
		for k := range cm.BinaryData {
			scan(k)
		}
	} else {
		maps.Copy(idx, s.intents[key])
		for k := range changed {
			scan(k)
		}
	}
	if len(idx) == 0 {
		delete(s.intents, key)
		return
	}
	s.intents[key] = idx
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
// names; from then on this process trusts the ConfigMaps spec's Revision owns. It is
// idempotent. An existing <revision>-state-<n> is taken over only when it is labelled
// for the same tenant, revision and shard and either is owned by this Revision (its UID)
// or was retained for the same tenant and revision name (AnnotationRetainedFor, written
// by Remove): anything else is an error, never adopted.
func (s *Store) Ensure(ctx context.Context, spec Spec) ([]string, error) {
	if spec.RevisionUID == "" {
		return nil, fmt.Errorf("state of %s/%s: %w", spec.Namespace, spec.Revision, errNoOwner)
	}
	s.serve(spec)
	names := make([]string, spec.Shards)
	for i := range spec.Shards {
		names[i] = ShardName(spec.Revision, i)
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{
			Name: names[i], Namespace: spec.Namespace,
			Labels: map[string]string{
				LabelComponent: ComponentState, LabelTenant: spec.Tenant,
				LabelRevision: spec.Revision, LabelShard: strconv.Itoa(i),
			},
			OwnerReferences: []metav1.OwnerReference{ownerRef(spec)},
		}}
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
		if err := s.adopt(ctx, spec, i, existing); err != nil {
			return nil, err
		}
		unpack(existing)
		if !s.observe(existing) {
			return nil, fmt.Errorf("ConfigMap %s/%s exists and is not revision %s's state: rename or delete it", spec.Namespace, names[i], spec.Revision)
		}
		if _, journalled := foldedThrough(existing); journalled {
			if err := s.adoptJournal(ctx, spec, i); err != nil {
				return nil, err
			}
		}
	}
	if s.leftovers(spec) {
		// A writer stopped in the middle of a cross-shard commit: settle what is old
		// enough now rather than when an activity meets it.
		if err := s.Recover(ctx, spec); err != nil {
			s.log.Info("Cross-shard commits left in state could not all be settled yet", "revision", spec.Namespace+"/"+spec.Revision, "error", err.Error())
		}
	}
	return names, nil
}

// leftovers reports whether the newest known copy of a shard of spec holds an intent or
// the record of a committed cross-shard transaction.
func (s *Store) leftovers(spec Spec) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for i := range spec.Shards {
		key := types.NamespacedName{Namespace: spec.Namespace, Name: ShardName(spec.Revision, i)}
		if len(s.intents[key]) > 0 {
			return true
		}
		if cm := s.view[key]; cm != nil {
			for k := range cm.BinaryData {
				if strings.HasPrefix(k, recordPrefix) && recordStatus(cm, strings.TrimPrefix(k, recordPrefix)) == committed {
					return true
				}
			}
		}
	}
	return false
}

// adoptJournal takes over the journal of a journalled shard n that already existed: it
// holds commits not folded into the shard yet, so it is judged and adopted as the
// shard was. A journal that does not exist is created by the next commit.
func (s *Store) adoptJournal(ctx context.Context, spec Spec, n int) error {
	j := &corev1.ConfigMap{}
	key := types.NamespacedName{Namespace: spec.Namespace, Name: JournalName(spec.Revision, n)}
	if err := s.client.Get(ctx, key, j); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("read state journal %s: %w", key, err)
	}
	if err := s.adopt(ctx, spec, n, j); err != nil {
		return err
	}
	if !s.observe(j) {
		return fmt.Errorf("ConfigMap %s exists and is not revision %s's state journal: rename or delete it", key, spec.Revision)
	}
	return nil
}

// adopt checks that an existing ConfigMap may serve as shard n of spec's namespace, and
// takes over one retained for it.
func (s *Store) adopt(ctx context.Context, spec Spec, n int, cm *corev1.ConfigMap) error {
	l := cm.Labels
	if l[LabelComponent] != ComponentState || l[LabelRevision] != spec.Revision || l[LabelShard] != strconv.Itoa(n) {
		return fmt.Errorf("ConfigMap %s/%s exists and is not revision %s's state: rename or delete it", cm.Namespace, cm.Name, spec.Revision)
	}
	if l[LabelTenant] != spec.Tenant {
		return fmt.Errorf("ConfigMap %s/%s is state of tenant %q, not %q: delete it, or name the Revision otherwise", cm.Namespace, cm.Name, l[LabelTenant], spec.Tenant)
	}
	ref := metav1.GetControllerOfNoCopy(cm)
	if ref != nil && ref.UID == spec.RevisionUID {
		return nil
	}
	if ref != nil || cm.Annotations[AnnotationRetainedFor] != spec.Tenant+"/"+spec.Revision {
		return fmt.Errorf("ConfigMap %s/%s is not revision %s's state (another owner, or not retained for tenant %s's revision of that name): rename or delete it",
			cm.Namespace, cm.Name, spec.Revision, spec.Tenant)
	}
	// Retained for this tenant and name: this Revision takes it over. The update is
	// conditioned on the resourceVersion just read.
	delete(cm.Annotations, AnnotationRetainedFor)
	cm.OwnerReferences = append(cm.OwnerReferences, ownerRef(spec))
	if err := s.client.Update(ctx, cm); err != nil {
		return fmt.Errorf("adopt retained state ConfigMap %s/%s: %w", cm.Namespace, cm.Name, err)
	}
	return nil
}

func ownerRef(spec Spec) metav1.OwnerReference {
	t, f := true, false
	return metav1.OwnerReference{
		APIVersion: "packhost.io/v1alpha1", Kind: "Revision", Name: spec.Revision, UID: spec.RevisionUID,
		Controller: &t, BlockOwnerDeletion: &f,
	}
}

// Remove applies a revision's retention when it is deleted, to the ConfigMaps the
// Revision owns and no other: with retain false they are deleted (packhost does not
// wait for the garbage collector); with retain true they stay, lose their owner
// reference and are marked retained for the tenant and revision name, so a later
// Revision of the same tenant and name takes them over (see Ensure). Either way this
// process no longer serves the revision.
func (s *Store) Remove(ctx context.Context, spec Spec, retain bool) error {
	namespace, revision := spec.Namespace, spec.Revision
	defer s.Release(namespace, revision)
	var list corev1.ConfigMapList
	if err := s.client.List(ctx, &list, client.InNamespace(namespace),
		client.MatchingLabels{LabelComponent: ComponentState, LabelRevision: revision}); err != nil {
		return fmt.Errorf("list state of %s/%s: %w", namespace, revision, err)
	}
	for i := range list.Items {
		cm := &list.Items[i]
		ref := metav1.GetControllerOfNoCopy(cm)
		if ref == nil || ref.UID != spec.RevisionUID || ref.Kind != "Revision" {
			continue // not this Revision's: someone else's to keep or delete
		}
		if !retain {
			if err := s.client.Delete(ctx, cm, client.Preconditions{UID: &cm.UID}); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("delete state ConfigMap %s/%s: %w", namespace, cm.Name, err)
			}
			s.forget(client.ObjectKeyFromObject(cm))
			continue
		}
		patch := client.MergeFromWithOptions(cm.DeepCopy(), client.MergeFromWithOptimisticLock{})
		cm.OwnerReferences = slices.DeleteFunc(cm.OwnerReferences, func(r metav1.OwnerReference) bool { return r.UID == spec.RevisionUID })
		if cm.Annotations == nil {
			cm.Annotations = map[string]string{}
		}
		cm.Annotations[AnnotationRetainedFor] = spec.Tenant + "/" + revision
		if err := s.client.Patch(ctx, cm, patch); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("release state ConfigMap %s/%s: %w", namespace, cm.Name, err)
		}
	}
	return nil
}

var (
	errNoShards = errors.New("state namespace has no shards")
	errNoOwner  = errors.New("no revision UID: state is only kept for an existing Revision")
)
