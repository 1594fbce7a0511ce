package state

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
