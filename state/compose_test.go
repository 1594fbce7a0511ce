package state

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/packhost/packhost/runtime"
)

// A reader composes a shard only from copies of its base and journal that fit: a
// journal trimmed past what the known base folded (the fold's rewrite not seen yet)
// never makes the base alone the shard's content, and a journal a fold did not trim
// (stopped before its trim) still composes with the folded base.
func TestReaderNeverComposesAHalfSeenFold(t *testing.T) {
	s := &Store{owners: map[types.NamespacedName]owner{}, view: map[types.NamespacedName]*corev1.ConfigMap{},
		intents: map[types.NamespacedName]map[string]*intent{}, sessions: map[pinKey][]runtime.Pin{},
		problems: map[types.NamespacedName]map[string]string{}, suspects: map[types.NamespacedName]*metav1.ObjectMeta{}}
	s.serve(Spec{Namespace: "ns", Revision: "bot", RevisionUID: "uid-1", Tenant: "acme", Shards: 1})
	k1, _ := valueKey("p", "one", 1)
	k2, _ := valueKey("p", "two", 1)
	v := func(name, value string) []byte { return encodeValue("p", name, []byte(value)) }
	meta := func(name, rv, annotation, through string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Namespace: "ns", Name: name, ResourceVersion: rv, Annotations: map[string]string{annotation: through},
			Labels:          map[string]string{LabelComponent: ComponentState, LabelRevision: "bot", LabelTenant: "acme", LabelShard: "0"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "packhost.io/v1alpha1", Kind: "Revision", Name: "bot", UID: "uid-1", Controller: ptr.To(true)}}}
	}
	base := func(rv, folded string, entries map[string][]byte) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: meta(ShardName("bot", 0), rv, AnnotationFoldedThrough, folded), BinaryData: entries}
	}
	journal := func(rv, trimmed string, records map[uint64]map[string][]byte) *corev1.ConfigMap {
		j := &corev1.ConfigMap{ObjectMeta: meta(JournalName("bot", 0), rv, AnnotationTrimmedThrough, trimmed)}
		blobs := map[uint64][]byte{}
		for seq, writes := range records {
			blobs[seq] = encodeChange("c"+recordKey(seq), writes)
		}
		SetJournalRecords(j, blobs)
		return j
	}
	key := types.NamespacedName{Namespace: "ns", Name: ShardName("bot", 0)}
	want := func(when string, entries map[string]string) {
		t.Helper()
		cm := s.view[key]
		if entries == nil {
			if cm != nil {
				t.Fatalf("%s: the shard is composed (rv %s, %d entries) from copies that do not fit", when, cm.ResourceVersion, len(cm.BinaryData))
			}
			return
		}
		if cm == nil {
			t.Fatalf("%s: the shard is not composed", when)
		}
		if len(cm.BinaryData) != len(entries) {
			t.Fatalf("%s: %d entries, want %d", when, len(cm.BinaryData), len(entries))
		}
		for k, name := range entries {
			if string(cm.BinaryData[k]) != name {
				t.Fatalf("%s: entry %s is %q, want %q", when, k, cm.BinaryData[k], name)
			}
		}
	}

	s.observe(base("10", "0", map[string][]byte{k1: v("one", "a")}))
	s.observe(journal("11", "0", map[uint64]map[string][]byte{1: {k1: v("one", "b")}, 2: {k2: v("two", "c")}}))
	want("base and journal", map[string]string{k1: string(v("one", "b")), k2: string(v("two", "c"))})

	// A fold rewrote the base (rv 12) and trimmed the journal (rv 13); the trim is seen
	// first, as a read of the journal alone from the API server may see it.
	s.observe(journal("13", "2", nil))
	want("journal trimmed, base not yet seen folded", nil)
	s.observe(base("12", "2", map[string][]byte{k1: v("one", "b"), k2: v("two", "c")}))
	want("the fold seen whole", map[string]string{k1: string(v("one", "b")), k2: string(v("two", "c"))})

	// A fold that stopped before its trim: the base folded through 3, the journal still
	// holds record 3, and a newer record 4 that deletes what 3 wrote.
	s.observe(base("14", "3", map[string][]byte{k1: v("one", "d"), k2: v("two", "c")}))
	s.observe(journal("15", "2", map[uint64]map[string][]byte{3: {k1: v("one", "d")}, 4: {k1: nil}}))
	want("a fold stopped before its trim", map[string]string{k2: string(v("two", "c"))})
}
