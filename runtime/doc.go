// Package runtime turns digest-pinned WebAssembly packs into loaded revision runtimes
// that handle activities: one wazero runtime per process, each pack compiled once per
// sha256 digest, a bounded instance pool per revision, and a state transaction per
// activity. It imports no Kubernetes code; state, sessions and secrets reach it through
// the Store and SecretSource interfaces, which the host scopes.
//
// The guest ABI (exports, host imports, input record, result codes) is in ABI.md next
// to this file; a pack author needs nothing else.
//
// # Decisions
//
//   - A revision's packs are the main pack then the overlays; an activity enters the flow
//     its flow_id names, else the unique entry flow of its flow_type, else the main pack's
//     first entry flow. Flows tagged internal are never entered from outside.
//   - A session key is built from env, tenant, endpoint, provider, channel, conversation
//     (or session_id) and user, each escaped; "default" and "anonymous" fill the gaps. An
//     activity with no user, conversation or session id has no session. Pack and flow
//     are not part of the key string but fields of each wait, taken from the manifest
//     by the host, so no hint can name another user's wait.
//   - A session keeps one wait per pack and flow, as the seed host keys its session
//     store (env, tenant, user, then pack and flow): an activity that names its flow
//     (flow_id or flow_type) runs it and resumes its wait if parked, whatever else is
//     parked; one that names none resumes the one parked wait (in its pack_id's pack),
//     and with several parked fails with AmbiguousFlowError rather than guess which
//     conversation a reply continues (see chooseFlow). A wait is cleared when its
//     flow's turn completes and expires after its TTL (default 30 minutes, at most 24
//     hours); a session parks at most MaxParkedFlows flows holding MaxValueLen bytes.
//   - A session's waits are one record of the Store (Txn.Waits), not one per flow: the
//     question "which flows are parked" must be one read of the activity's transaction,
//     or an activity naming no flow could miss a wait another replica just parked. So
//     the read is recorded and validated at commit: two racing activities cannot both
//     resume a wait, and two activities of one session on different flows serialize
//     (one re-runs) rather than drop each other's wait. The cost is that rare
//     concurrent turns of one user conflict even on different flows.
//   - Deadlines are enforced by the guest's own code: each pack is rewritten once at
//     load (internal/wasmguard) to check a budget at every function entry and loop
//     header and to ask the host's tick for more, which ends the call once its context is
//     done. wazero's close-on-context-done is off: it started a goroutine per call (2 µs
//     and 3 allocations each), exited to Go at every loop header (9.4–15.9x on the compute
//     pack) and never checked at function entry, so loop-free recursion ran 564–613 ms
//     under a 50 ms deadline. Rewritten, the compute pack runs 1.14x its unguarded time
//     and a call costs what an unguarded one does (go test ./runtime -run XXX -bench
//     'Guard|Floor'); the rewrite takes 143 ms for the 10 MiB Go-built pack (go test
//     ./internal/wasmguard -bench Instrument) and is kept in the cache directory by
//     digest, rewriter version and limits. The instance is discarded after a timeout or a
//     trap; the revision keeps serving.
//   - Memory limits are per instance: the instance's linear memory refuses to grow past
//     the revision's memoryPages, so the guest traps instead of taking host memory.
//   - Instances are made on demand, up to MaxConcurrency, and closed after IdleTimeout
//     (30 s) without use, down to none: 200 idle revisions of one digest would otherwise
//     keep 7.2–7.9 MiB each. Freed instance memory is handed back to the OS at most every
//     10 s (Engine.returnMemory). BenchmarkIdleRevisions prints the figures.
package runtime
