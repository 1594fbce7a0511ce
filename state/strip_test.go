package state

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/packhost/packhost/runtime"
)

// A shard the watch cache stripped while its revision was not yet served is never
// taken for the shard's content once the revision is served: with its real
// resourceVersion, a flush onto the empty copy would succeed and wipe the shard.
func TestStrippedShardIsNeverTheShardsContent(t *testing.T) {
	s := &Store{view: map[types.NamespacedName]*corev1.ConfigMap{}, owners: map[types.NamespacedName]owner{},
		intents: map[types.NamespacedName]map[string]*intent{}, sessions: map[pinKey][]runtime.Pin{},
		problems: map[types.NamespacedName]map[string]string{}, suspects: map[types.NamespacedName]*metav1.ObjectMeta{}}
	spec := Spec{Namespace: "ns", Revision: "bot", RevisionUID: "uid-1", Tenant: "acme", Shards: 1}
	shard := func(rv string, entries map[string][]byte) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: ShardName("bot", 0), ResourceVersion: rv,
			Labels:          map[string]string{LabelComponent: ComponentState, LabelRevision: "bot", LabelTenant: "acme", LabelShard: "0"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "packhost.io/v1alpha1", Kind: "Revision", Name: "bot", UID: "uid-1", Controller: ptr.To(true)}}},
			BinaryData: entries}
	}
	key := types.NamespacedName{Namespace: "ns", Name: ShardName("bot", 0)}

	// The list at start-up arrives before the revision is served: transform strips it.
	husk, err := s.transform(shard("7", map[string][]byte{"v.k": []byte("x")}))
	if err != nil {
		t.Fatal(err)
	}
	s.serve(spec) // Ensure runs before the event handler gets to the husk
	s.observe(husk.(*corev1.ConfigMap))
	if cm := s.view[key]; cm != nil {
		t.Fatalf("the stripped copy (rv %s, %d entries) is the shard's content now", cm.ResourceVersion, len(cm.BinaryData))
	}

	// A whole copy is taken as ever.
	s.observe(shard("8", map[string][]byte{"v.k": []byte("x")}))
	if cm := s.view[key]; cm == nil || cm.ResourceVersion != "8" {
		t.Fatalf("a whole, trusted copy was not taken: %v", cm)
	}
}
