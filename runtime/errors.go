package runtime

import (
	"errors"
	"fmt"
	"strings"
)

// Errors a caller branches on with errors.Is. The dispatcher maps them to HTTP statuses.
var (
	// ErrNotLoaded: the revision was unloaded or never loaded.
	ErrNotLoaded = errors.New("revision not loaded")
	// ErrNoSuchFlow: no flow matches the activity's flow id or type.
	ErrNoSuchFlow = errors.New("no such flow")
	// ErrAmbiguousFlow: the activity names no flow while its session has waits parked
	// in several; it comes as an AmbiguousFlowError naming them.
	ErrAmbiguousFlow = errors.New("ambiguous flow")
	// ErrOverloaded: every instance is busy and the wait queue is full.
	ErrOverloaded = errors.New("revision overloaded")
	// ErrTimeout: the activity ran past its deadline and was stopped.
	ErrTimeout = errors.New("activity timed out")
	// ErrTrap: the guest trapped (panic, out of memory, bad memory access); the
	// instance was discarded.
	ErrTrap = errors.New("guest trapped")
	// ErrResourceLimit: the guest went past a limit on what it may grow (call depth,
	// host memory it filled through host calls); the instance was discarded and nothing
	// of the activity was kept.
	ErrResourceLimit = errors.New("guest resource limit exceeded")
	// ErrInvalidOutput: the guest returned output the host refuses (too large, bad
	// pointers, invalid JSON, an error code).
	ErrInvalidOutput = errors.New("invalid guest output")
	// ErrInvalidActivity: the activity itself is malformed.
	ErrInvalidActivity = errors.New("invalid activity")
	// ErrConflict: the activity's state transaction kept conflicting with other writers.
	ErrConflict = errors.New("state conflict")
	// ErrStateFull: a commit would take a state shard past its byte budget; nothing of
	// the activity was kept.
	ErrStateFull = errors.New("state full")
	// ErrStateUnavailable: the state store (the API server) did not answer within the
	// commit timeout, or recently did not and commits are held back until it does. The
	// error says whether the activity's writes were not applied or whether that is
	// unknown (see ErrOutcomeUnknown); retry after a second.
	ErrStateUnavailable = errors.New("state unavailable")
	// ErrInProgress: a provider invoke with this correlation id is running in another
	// call, which did not finish before this call's deadline; try again for its answer.
	ErrInProgress = errors.New("invoke in progress")
	// ErrInvalidPack: the module or its manifest cannot be loaded.
	ErrInvalidPack = errors.New("invalid pack")
	// ErrInvalidManifest: the pack's manifest is missing or malformed; it also matches
	// ErrInvalidPack.
	ErrInvalidManifest = errors.New("invalid manifest")
	// ErrMemoryLimit: a pack needs more memory to start than the revision allows.
	ErrMemoryLimit = errors.New("memory limit below what the pack needs")
	// ErrCapabilityDenied: a pack asks for a capability the tenant's policy does not allow.
	ErrCapabilityDenied = errors.New("capability not allowed")
	// ErrUnsupported: the revision has no component for what was asked (identify or
	// invoke of an unknown provider type).
	ErrUnsupported = errors.New("unsupported")
	// ErrAmbiguous: more than one pack binds the provider type.
	ErrAmbiguous = errors.New("ambiguous provider binding")
	// ErrOpNotAllowed: the provider op is not in the pack's allowlist.
	ErrOpNotAllowed = errors.New("provider op not allowed")
)

// PackError says which pack a load failure is about.
type PackError struct {
	// Pack is the pack's name in the revision, or its pack id when known.
	Pack string
	// Err is the problem; it wraps ErrInvalidPack or ErrCapabilityDenied.
	Err error
}

func (e *PackError) Error() string { return fmt.Sprintf("pack %q: %v", e.Pack, e.Err) }
func (e *PackError) Unwrap() error { return e.Err }

func invalidPack(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidPack, fmt.Sprintf(format, args...))
}

// AmbiguousFlowError answers an activity that names no flow (flow_id or flow_type)
// while its session has waits parked in several flows: which conversation it continues
// is the caller's to say, so nothing runs and the error names the parked flows.
type AmbiguousFlowError struct {
	// Parked are the session's live waits the activity could have meant.
	Parked []Pin
}

func (e *AmbiguousFlowError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "the session has waits parked in %d flows (", len(e.Parked))
	for i, p := range e.Parked {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "flow %q of pack %q", p.Flow, p.Pack)
		if p.Revision != "" {
			fmt.Fprintf(&b, " on revision %s", p.Revision)
		}
	}
	b.WriteString("): name the one this activity continues with flow_id (and pack_id)")
	return b.String()
}

func (e *AmbiguousFlowError) Unwrap() error { return ErrAmbiguousFlow }
