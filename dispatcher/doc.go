// Package dispatcher is packhost's embedded HTTP server: it authenticates a tenant's
// callers, routes each activity to a revision by the tenant's traffic split (explicit
// choice, then session pin, then sticky weighted buckets, then weighted random), runs it
// on the revision's runtime and answers with its replies. A session pin is per flow: the
// revision holding the parked wait of the flow the activity names, or of the one flow
// parked when it names none (see Server.pinned).
package dispatcher
