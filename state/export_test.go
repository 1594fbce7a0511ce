package state

import corev1 "k8s.io/api/core/v1"

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
