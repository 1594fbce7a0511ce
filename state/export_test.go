package state

import (
	"cmp"
	"context"
	"encoding/binary"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/packhost/packhost/runtime"
)

// ShardOfValue is the shard that holds a pack's value of name.
func ShardOfValue(pack, name string, shards int) int {
	_, s := valueKey(pack, name, shards)
	return s
}

// ShardOfWait is the shard that holds a session's wait.
func ShardOfWait(session string, shards int) int {
	_, s := waitKey(session, shards)
	return s
}

// Entries returns a state ConfigMap's entries by key, as stored in its pages.
func Entries(cm *corev1.ConfigMap) map[string][]byte {
	cp := cm.DeepCopy()
	unpack(cp)
	return cp.BinaryData
}

// PageOfValue is the page that holds a pack's value of name.
func PageOfValue(pack, name string) string {
	k, _ := valueKey(pack, name, 1)
	return pageOf(k)
}

// encodeLegacyWait encodes a session's one wait as packhost stored it before a session
// could park several flows (entryWait).
func encodeLegacyWait(session string, w runtime.Wait) []byte {
	b := []byte{entryWait}
	b = appendString(b, session)
	b = appendString(b, w.Pack)
	b = appendString(b, w.Flow)
	b = binary.BigEndian.AppendUint64(b, uint64(w.Expires.UnixNano()))
	return append(b, w.Data...)
}

// LegacyWaitEntry is the binaryData key and bytes of a session's one wait as packhost
// stored it before a session could park several flows.
func LegacyWaitEntry(session string, w runtime.Wait) (string, []byte) {
	k, _ := waitKey(session, 1)
	return k, encodeLegacyWait(session, w)
}

// Fold folds the journal of a revision's n-th shard now, and trims it.
func (s *Store) Fold(ctx context.Context, namespace, revision string, n int) error {
	return s.shard(types.NamespacedName{Namespace: namespace, Name: ShardName(revision, n)}).fold(ctx, true)
}

// ValueRecord is a journal record that sets a pack's value of name.
func ValueRecord(pack, name string, value []byte) []byte {
	k, _ := valueKey(pack, name, 1)
	return encodeChange("forged", map[string][]byte{k: encodeValue(pack, name, value)})
}

// JournalRecords returns a journal's records by sequence number.
func JournalRecords(j *corev1.ConfigMap) map[uint64][]byte {
	out := map[uint64][]byte{}
	for _, r := range journalRecords(j) {
		out[r.seq] = r.blob
	}
	return out
}

// SetJournalRecords stores records in journal j, as packhost does.
func SetJournalRecords(j *corev1.ConfigMap, records map[uint64][]byte) {
	var rs []journalRecord
	for seq, blob := range records {
		rs = append(rs, journalRecord{seq: seq, blob: blob})
	}
	slices.SortFunc(rs, func(a, b journalRecord) int { return cmp.Compare(a.seq, b.seq) })
	if j.BinaryData == nil {
		j.BinaryData = map[string][]byte{}
	}
	j.BinaryData[journalData] = encodeRecords(rs)
}
