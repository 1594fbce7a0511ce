package state

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/packhost/packhost/runtime"
)

// A shard whose entries pass Options.JournalAbove is journalled (see Journal in the
// package doc): its group commits append their changes to a small journal ConfigMap,
// <revision>-state-<n>-journal, and a fold now and then writes the journal into the
// shard and trims it.
const (
	// AnnotationFoldedThrough on a shard says it is journalled, and that the journal's
	// records up to this sequence number are folded into it (readers skip them).
	AnnotationFoldedThrough = "packhost.io/folded-through"
	// AnnotationTrimmedThrough on a journal says its records up to this sequence number
	// were dropped: a copy of the shard folded through less is older than the journal.
	AnnotationTrimmedThrough = "packhost.io/trimmed-through"

	journalSuffix = "-journal"
	// journalPrefix starts the name of a journal record in a shard's problems: "j." and
	// its sequence number in 16 hex digits.
	journalPrefix = "j."

	entryChange byte = 6
)

// DefaultJournalAbove is the size of a shard's entries from which its commits go to a
// journal: below it, rewriting the shard costs about what a journal write does.
const DefaultJournalAbove = 16 << 10

// DefaultFoldAfter is the most records a journal holds before it is folded.
const DefaultFoldAfter = 256

// A journal is folded once its records times its bytes reach twice the shard's bytes
// (see foldDue), or once it holds foldBytes; maxJournalBytes is the most it ever
// holds (a fold runs first), well under the 1 MiB object limit.
const (
	foldBytes       = 64 << 10
	maxJournalBytes = 512 << 10
)

// JournalName is the name of the journal of a revision's n-th state ConfigMap.
func JournalName(revision string, n int) string { return ShardName(revision, n) + journalSuffix }

func journalKeyOf(shard types.NamespacedName) types.NamespacedName {
	return types.NamespacedName{Namespace: shard.Namespace, Name: shard.Name + journalSuffix}
}

// shardKeyOf is the shard a state ConfigMap belongs to (itself, or the shard whose
// journal it is) and whether it is a journal. Only names judge accepted are passed.
func shardKeyOf(key types.NamespacedName) (types.NamespacedName, bool) {
	if name, ok := strings.CutSuffix(key.Name, journalSuffix); ok {
		return types.NamespacedName{Namespace: key.Namespace, Name: name}, true
	}
	return key, false
}

// foldedThrough reports whether a shard is journalled, and through which record.
func foldedThrough(cm *corev1.ConfigMap) (uint64, bool) {
	v, ok := cm.Annotations[AnnotationFoldedThrough]
	if !ok {
		return 0, false
	}
	n, _ := strconv.ParseUint(v, 10, 64)
	return n, true
}

func trimmedThrough(j *corev1.ConfigMap) uint64 {
	n, _ := strconv.ParseUint(j.Annotations[AnnotationTrimmedThrough], 10, 64)
	return n
}

// recordKey names a journal record in a shard's problems and in its composition when
// the record does not decode.
func recordKey(seq uint64) string { return fmt.Sprintf("%s%016x", journalPrefix, seq) }

// journalData is the binaryData key that holds a journal's records, packed, so that
// the API server tracks one field however many records there are (its managed-fields
// work per update grows with the keys: 45 keys cost it about 1.5 times one key of
// the same bytes, measured here). Each record is its sequence number (uvarint) and its
// bytes (length-prefixed).
const journalData = "records"

// unreadable is the sequence number of the record that stands for a journal whose
// records cannot be told apart: it never decodes, so the shard is reported and neither
// read nor written.
const unreadable = ^uint64(0)

// journalRecord is one group commit's changes in a journal, as stored.
type journalRecord struct {
	seq  uint64
	key  string
	blob []byte
}

// journalRecords returns a journal's records in sequence.
func journalRecords(j *corev1.ConfigMap) []journalRecord {
	var out []journalRecord
	data := j.BinaryData[journalData]
	for rest := data; len(rest) > 0; {
		seq, n := binary.Uvarint(rest)
		var blob []byte
		ok := n > 0 && seq != unreadable
		if ok {
			blob, rest, ok = readField(rest[n:])
		}
		if !ok {
			out = append(out, journalRecord{seq: unreadable, key: journalPrefix + "unreadable", blob: []byte{0}})
			break
		}
		out = append(out, journalRecord{seq: seq, key: recordKey(seq), blob: blob})
	}
	slices.SortStableFunc(out, func(a, b journalRecord) int { return cmp.Compare(a.seq, b.seq) })
	return out
}

// encodeRecords packs records as journalData holds them.
func encodeRecords(records []journalRecord) []byte {
	var b []byte
	for _, r := range records {
		b = binary.AppendUvarint(b, r.seq)
		b = appendString(b, string(r.blob))
	}
	return b
}

// lastSeq is the sequence number of a journal's newest record, kept or trimmed.
func lastSeq(j *corev1.ConfigMap) uint64 {
	last := trimmedThrough(j)
	for _, r := range journalRecords(j) {
		if r.seq != unreadable && r.seq > last {
			last = r.seq
		}
	}
	return last
}

// recordsAfter returns a journal's records after seq, in order.
func recordsAfter(j *corev1.ConfigMap, seq uint64) []journalRecord {
	return slices.DeleteFunc(journalRecords(j), func(r journalRecord) bool { return r.seq <= seq })
}

// encodeChange is a journal record: a group commit's id and the entries it changed (a
// nil value deletes one).
func encodeChange(id string, writes map[string][]byte) []byte {
	b := appendString([]byte{entryChange}, id)
	return appendWrites(b, writes)
}

func decodeChange(blob []byte) (string, map[string][]byte, error) {
	bad := fmt.Errorf("%w: not a journal record", errCorrupt)
	if len(blob) == 0 || blob[0] != entryChange {
		return "", nil, bad
	}
	id, rest, ok := readField(blob[1:])
	if !ok {
		return "", nil, bad
	}
	writes, ok := readWrites(rest)
	if !ok {
		return "", nil, bad
	}
	for k := range writes {
		if pageOf(k) == "" {
			return "", nil, fmt.Errorf("%w: journal record writes %q, which is no entry's key", errCorrupt, k)
		}
	}
	return string(id), writes, nil
}

// replayed is what replay did.
type replayed struct {
	// ids are the group commits of the records applied, in order.
	ids []string
	// broken is the key of the first record that does not decode.
	broken string
	// touched are the entries the records wrote; grew is by how many bytes they grew.
	touched map[string]bool
	grew    int
}

// replay applies a journal's records after seq to entries, in order. A record that does
// not decode is kept in entries under its own key (so it is reported, and nothing it
// held is taken for absent).
func replay(entries map[string][]byte, j *corev1.ConfigMap, seq uint64) replayed {
	r := replayed{touched: map[string]bool{}}
	for _, rec := range recordsAfter(j, seq) {
		id, writes, err := decodeChange(rec.blob)
		if err != nil {
			r.grew += entryDelta(entries[rec.key], rec.blob, rec.key)
			entries[rec.key], r.touched[rec.key] = rec.blob, true
			if r.broken == "" {
				r.broken = rec.key
			}
			continue
		}
		for k, v := range writes {
			r.grew += entryDelta(entries[k], v, k)
			r.touched[k] = true
			if v == nil {
				delete(entries, k)
			} else {
				entries[k] = v
			}
		}
		r.ids = append(r.ids, id)
	}
	return r
}

// remember appends group-commit ids to obj's AnnotationCommits, keeping the last
// commitRing.
func remember(obj *corev1.ConfigMap, ids ...string) {
	ring := append(strings.Fields(obj.Annotations[AnnotationCommits]), ids...)
	if len(ring) > commitRing {
		ring = ring[len(ring)-commitRing:]
	}
	if obj.Annotations == nil {
		obj.Annotations = map[string]string{}
	}
	obj.Annotations[AnnotationCommits] = strings.Join(ring, " ")
}

// composition is what a shard holds: its base ConfigMap (unpacked) with its journal's
// records after the base's AnnotationFoldedThrough applied (logical), as the newest
// copies of both known here compose it.
type composition struct {
	logical *corev1.ConfigMap
	base    *corev1.ConfigMap
	// journal is nil for a shard that is not journalled, or whose journal is not known.
	journal *corev1.ConfigMap
	// broken is the key of a journal record that does not decode: the shard's content
	// is not known, so nothing is read from or written to it.
	broken string
	// baseBytes and size are the entry bytes of base and logical.
	baseBytes, size int
	// touched are the entries the journal's records write (nil without records): all
	// that logical holds otherwise than base.
	touched map[string]bool
}

// check refuses a shard whose journal holds a record that does not decode: what the
// shard holds is not known.
func (c *composition) check(key types.NamespacedName) error {
	if c.broken == "" {
		return nil
	}
	return fmt.Errorf("%w: %s: journal record %s: %w (see the revision's state problems)", errRefused, key, c.broken, errCorrupt)
}

// journalled reports whether the shard's commits go to its journal.
func (c *composition) journalled() bool {
	_, ok := foldedThrough(c.base)
	return ok
}

// composeLocked composes shard key from the newest copies of its base and journal, or
// returns nil when the journal was trimmed past what the known base folded (a fold
// landed that this process has not seen yet). s.mu is held.
func (s *Store) composeLocked(key types.NamespacedName) *composition {
	base := s.raw[key]
	if base == nil {
		return nil
	}
	c := &composition{logical: base, base: base}
	// The base's size is counted once per copy of it, not once per journal write.
	if prev := s.comps[key]; prev != nil && prev.base == base {
		c.baseBytes = prev.baseBytes
	} else {
		c.baseBytes = entryBytes(base)
	}
	c.size = c.baseBytes
	folded, on := foldedThrough(base)
	if !on {
		return c
	}
	j := s.raw[journalKeyOf(key)]
	if j == nil {
		return c
	}
	if trimmedThrough(j) > folded {
		return nil
	}
	c.journal = j
	if lastSeq(j) <= folded {
		return c
	}
	logical := &corev1.ConfigMap{TypeMeta: base.TypeMeta}
	base.ObjectMeta.DeepCopyInto(&logical.ObjectMeta)
	logical.BinaryData = maps.Clone(base.BinaryData)
	if logical.BinaryData == nil {
		logical.BinaryData = map[string][]byte{}
	}
	r := replay(logical.BinaryData, j, folded)
	remember(logical, r.ids...)
	c.logical, c.broken, c.touched, c.size = logical, r.broken, r.touched, c.baseBytes+r.grew
	return c
}

// changedSince returns the entries that may differ between what prev and c hold, or
// nil when any may (they compose different copies of the base).
func (c *composition) changedSince(prev *composition) map[string]bool {
	if prev == nil || prev.base != c.base {
		return nil
	}
	keys := make(map[string]bool, len(prev.touched)+len(c.touched))
	for k := range prev.touched {
		keys[k] = true
	}
	for k := range c.touched {
		keys[k] = true
	}
	return keys
}

// latestComp returns the newest known composition of a shard, reading it from the API
// server when the watch has not delivered it yet.
func (s *Store) latestComp(ctx context.Context, key types.NamespacedName) (*composition, error) {
	s.mu.RLock()
	c := s.comps[key]
	s.mu.RUnlock()
	if c != nil {
		return c, nil
	}
	return s.fetchComp(ctx, key)
}

// fetchComp reads a shard from the API server: the base, then, when it is journalled,
// the journal, then the base again if a fold landed in between (the journal trimmed
// past what the first read folded).
func (s *Store) fetchComp(ctx context.Context, key types.NamespacedName) (*composition, error) {
	for range 3 {
		base, err := s.fetchObject(ctx, key)
		if err != nil {
			return nil, err
		}
		if _, on := foldedThrough(base); on {
			jkey := journalKeyOf(key)
			j := &corev1.ConfigMap{}
			switch err := s.client.Get(ctx, jkey, j); {
			case apierrors.IsNotFound(err):
				s.forget(jkey)
			case err != nil:
				return nil, fmt.Errorf("read state journal %s: %w", jkey, err)
			default:
				// Not trusted: not this shard's journal, which then does not exist (it
				// would have its name); the stranger is reported by Claims.
				s.observe(j)
			}
		}
		s.mu.RLock()
		c := s.comps[key]
		s.mu.RUnlock()
		if c != nil {
			return c, nil
		}
	}
	return nil, fmt.Errorf("%w: shard %s was folded again while it was read", runtime.ErrConflict, key)
}

// journal returns the shard's journal, creating it when it does not exist yet, with
// its records starting after seq. A ConfigMap of its name that this process does not
// trust is an error: it is never written to.
func (sh *shard) journal(ctx context.Context, base *corev1.ConfigMap, seq uint64) (*corev1.ConfigMap, error) {
	s := sh.store
	jkey := journalKeyOf(sh.key)
	j := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{
		Namespace: jkey.Namespace, Name: jkey.Name, Labels: maps.Clone(base.Labels),
		Annotations:     map[string]string{AnnotationTrimmedThrough: strconv.FormatUint(seq, 10)},
		OwnerReferences: slices.Clone(base.OwnerReferences),
	}}
	err := s.client.Create(ctx, j)
	if apierrors.IsAlreadyExists(err) {
		j = &corev1.ConfigMap{}
		err = s.client.Get(ctx, jkey, j)
	}
	if err != nil {
		return nil, fmt.Errorf("create state journal %s: %w", jkey, err)
	}
	if !s.observe(j) {
		s.mu.RLock()
		_, why := s.judge(j)
		s.mu.RUnlock()
		return nil, fmt.Errorf("%w: ConfigMap %s is not this shard's journal (%s): rename or delete it", errNotState, jkey, why)
	}
	return j, nil
}

// writeJournal appends m's changes to the shard's journal as one record, conditioned
// on the journal's resourceVersion: the journal is where a journalled shard's commits
// are serialised. The same write trims the records the shard has folded since (a fold
// rewrites only the shard, so no commit ever waits for or conflicts with one). It
// returns errRefetch when the shard must be read again first (its journal was just
// created, or folded to make room).
func (sh *shard) writeJournal(ctx context.Context, c *composition, m *merged) error {
	s := sh.store
	folded, _ := foldedThrough(c.base)
	if c.journal == nil {
		if _, err := sh.journal(ctx, c.base, folded); err != nil {
			return err
		}
		return errRefetch
	}
	rec := encodeChange(m.id, diff(c.logical.BinaryData, m.obj.BinaryData))
	if len(rec) > maxJournalBytes {
		return fmt.Errorf("%w: %w: one commit of %d bytes to %s is more than its journal takes (%d): write less at once",
			errRefused, runtime.ErrStateFull, len(rec), sh.key, maxJournalBytes)
	}
	j, _ := trim(c.journal, folded)
	if entryBytes(j)+len(rec) > maxJournalBytes {
		if err := sh.fold(ctx, true); err != nil {
			return err
		}
		return errRefetch
	}
	j.BinaryData[journalData] = encodeRecords(append(journalRecords(j), journalRecord{seq: lastSeq(c.journal) + 1, blob: rec}))
	if err := s.client.Update(ctx, j); err != nil {
		return err
	}
	s.bytesSent.Add(int64(objectBytes(j)))
	s.observe(j)
	return nil
}

// trim returns a copy of journal j without the records up to folded, which the shard
// holds, and how many it dropped.
func trim(j *corev1.ConfigMap, folded uint64) (*corev1.ConfigMap, int) {
	out := j.DeepCopy()
	out.ManagedFields = nil // kept by the API server, as pack says
	if out.BinaryData == nil {
		out.BinaryData = map[string][]byte{}
	}
	if out.Annotations == nil {
		out.Annotations = map[string]string{}
	}
	records := journalRecords(j)
	all := len(records)
	kept := slices.DeleteFunc(records, func(r journalRecord) bool { return r.seq <= folded })
	if len(kept) < all {
		out.BinaryData[journalData] = encodeRecords(kept)
	}
	if folded > trimmedThrough(j) {
		out.Annotations[AnnotationTrimmedThrough] = strconv.FormatUint(folded, 10)
	}
	return out, all - len(kept)
}

// diff returns the writes that turn entries old into new.
func diff(old, new map[string][]byte) map[string][]byte {
	d := map[string][]byte{}
	for k, v := range new {
		if ov, ok := old[k]; !ok || !same(ov, v) {
			d[k] = v
		}
	}
	for k := range old {
		if _, ok := new[k]; !ok {
			d[k] = nil
		}
	}
	return d
}

// same reports whether two entries are equal, telling a shared one by its address.
func same(a, b []byte) bool {
	if len(a) == len(b) && len(a) > 0 && &a[0] == &b[0] {
		return true
	}
	return bytes.Equal(a, b)
}

// foldDue reports whether a shard's journal should be folded. Each commit sends the
// journal, and a fold the shard: with k records of d bytes each since the last fold,
// commits have sent about k²d/2 bytes of journal, and one fold of B bytes more is
// worth it once that reaches B, that is when the journal's bytes (kd) times its
// records (k) reach 2B. This keeps a commit's cost near sqrt(2Bd): for a shard of
// 1,000 entries of 100 bytes, a fold every 40 commits or so.
func (s *Store) foldDue(c *composition) bool {
	if c == nil || c.journal == nil || c.broken != "" {
		return false
	}
	folded, _ := foldedThrough(c.base)
	records := recordsAfter(c.journal, folded)
	size := 0
	for _, r := range records {
		size += len(r.key) + len(r.blob)
	}
	n := len(records)
	return n >= s.foldAfter || size >= foldBytes || n*size >= 2*c.baseBytes
}

// foldIfDue starts a fold of the shard when its journal is due one and no fold of it
// runs here; it runs in the background, so no commit's answer waits for it.
func (sh *shard) foldIfDue() {
	s := sh.store
	s.mu.RLock()
	c := s.comps[sh.key]
	s.mu.RUnlock()
	if !s.foldDue(c) || !sh.folding.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer sh.folding.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), s.commitTimeout)
		defer cancel()
		if err := sh.fold(ctx, false); err != nil {
			s.log.V(1).Info("Could not fold a state journal yet", "shard", sh.key.String(), "error", err.Error())
		}
	}()
}

// fold writes the shard's journal into the shard, marked folded through the journal's
// last record: one update conditioned on the shard's resourceVersion, which changes
// nothing it holds (readers skip folded records). The next commit's journal write
// trims the folded records; with trim set, the fold trims them itself (conditioned on
// the journal's resourceVersion, read again on conflict). A fold stopped between the
// two leaves records that readers skip and the next journal write trims.
func (sh *shard) fold(ctx context.Context, trimNow bool) error {
	s := sh.store
	c, err := s.latestComp(ctx, sh.key)
	for attempt := 0; ; attempt++ {
		if err != nil {
			return err
		}
		if c.journal == nil {
			return nil
		}
		folded, _ := foldedThrough(c.base)
		last := lastSeq(c.journal)
		if last <= folded {
			break
		}
		if c.broken != "" {
			return fmt.Errorf("fold %s: record %s: %w", sh.key, c.broken, errCorrupt)
		}
		base := c.base.DeepCopy()
		if base.BinaryData == nil {
			base.BinaryData = map[string][]byte{}
		}
		remember(base, replay(base.BinaryData, c.journal, folded).ids...)
		base.Annotations[AnnotationFoldedThrough] = strconv.FormatUint(last, 10)
		wire := pack(base)
		if err = s.client.Update(ctx, wire); err == nil {
			s.updates.Add(1)
			s.bytesSent.Add(int64(objectBytes(wire)))
			base.ResourceVersion = wire.ResourceVersion
			s.observe(base)
			break
		}
		if !apierrors.IsConflict(err) || attempt >= maxFlushAttempts {
			return fmt.Errorf("fold %s: %w", sh.key, err)
		}
		c, err = s.fetchComp(ctx, sh.key)
	}
	for attempt := 0; trimNow; attempt++ {
		s.mu.RLock()
		c = s.comps[sh.key]
		s.mu.RUnlock()
		if c == nil || c.journal == nil {
			return nil
		}
		folded, _ := foldedThrough(c.base)
		j, dropped := trim(c.journal, folded)
		if dropped == 0 {
			return nil
		}
		err := s.client.Update(ctx, j)
		if err == nil {
			s.updates.Add(1)
			s.bytesSent.Add(int64(objectBytes(j)))
			s.observe(j)
			return nil
		}
		if !apierrors.IsConflict(err) || attempt >= maxFlushAttempts {
			return fmt.Errorf("trim the journal of %s: %w", sh.key, err)
		}
		if _, err := s.fetchComp(ctx, sh.key); err != nil {
			return err
		}
	}
	return nil
}

// startJournal makes the shard journalled with the commit m writes onto it, when its
// entries reach the journal threshold: it creates the journal (an empty one) and marks
// m's object folded through the journal's last record. Failing that, the commit
// writes the shard whole, as before.
func (sh *shard) startJournal(ctx context.Context, c *composition, m *merged) {
	s := sh.store
	if s.journalAbove >= 0 && entryBytes(m.obj) < s.journalAbove {
		return
	}
	j, err := sh.journal(ctx, c.base, 0)
	if err != nil {
		s.log.Info("State shard stays unjournalled", "shard", sh.key.String(), "error", err.Error())
		return
	}
	if m.obj.Annotations == nil {
		m.obj.Annotations = map[string]string{}
	}
	m.obj.Annotations[AnnotationFoldedThrough] = strconv.FormatUint(lastSeq(j), 10)
}
