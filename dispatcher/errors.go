package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/packhost/packhost/runtime"
)

// Error codes in error bodies: stable, for clients to branch on. Every answer but a
// served activity and a passing probe is the error body {"error":{"code","message"}}.
const (
	CodeInvalidActivity = "invalid_activity"
	CodeNoSplit         = "no_split"
	CodeUnauthenticated = "unauthenticated"
	CodeForbidden       = "forbidden"
	CodeTooLarge        = "body_too_large"
	CodeConflict        = "session_conflict"
	CodeOverloaded      = "overloaded"
	CodeGuestTrap       = "guest_error"
	// CodeResourceLimit: the guest went past a limit on what it may grow (call depth,
	// host memory filled through host calls); nothing of the activity was kept.
	CodeResourceLimit   = "resource_limit"
	CodeTimeout         = "timeout"
	CodeNoReadyRevision = "no_ready_revision"
	CodeNoSuchFlow      = "no_such_flow"
	// CodeAmbiguousFlow: the activity names no flow while its session has waits parked
	// in several (409); the message names them, and flow_id picks one.
	CodeAmbiguousFlow = "ambiguous_flow"
	CodeUnknownTag    = "unknown_tag"
	CodeStateFull     = "state_full"
	// CodeStateUnavailable answers a stateful activity whose commit the API server did
	// not answer in time, or held back by the breaker while it does not (503, with
	// Retry-After); the message says when the outcome is unknown.
	CodeStateUnavailable = "state_unavailable"
	CodeUnsupported      = "unsupported"
	// The ways a provider invoke fails closed (see invokeStatusOf).
	CodeNoBinding        = "no_binding"
	CodeAmbiguousBinding = "ambiguous_binding"
	CodeOpNotAllowed     = "op_not_allowed"
	CodeNotLoaded        = "not_loaded"
	// CodeInProgress: an invoke with the same correlation id is still running; ask
	// again for its answer.
	CodeInProgress = "in_progress"
	CodeInternal   = "internal"
	// CodeNotFound answers a path the dispatcher does not serve.
	CodeNotFound = "not_found"
	// CodeMethodNotAllowed answers a path served with another method (see Allow).
	CodeMethodNotAllowed = "method_not_allowed"
	// CodeNotReady answers /readyz while the replica is starting.
	CodeNotReady = "not_ready"
)

type errorBody struct {
	Error errorDetail `json:"error"`
}

// errorDetail says what went wrong: in an error body, or in one provider type's
// identify outcome.
type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	var b errorBody
	b.Error.Code, b.Error.Message = code, msg
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(b)
}

// writeRuntimeError answers with the status and code of a runtime error.
func writeRuntimeError(w http.ResponseWriter, err error) {
	status, code := statusOf(err)
	writeError(w, status, code, err.Error())
}

// statusOf maps a runtime error to an HTTP status and code.
func statusOf(err error) (int, string) {
	switch {
	case errors.Is(err, runtime.ErrInvalidActivity):
		return http.StatusBadRequest, CodeInvalidActivity
	case errors.Is(err, runtime.ErrNoSuchFlow):
		return http.StatusNotFound, CodeNoSuchFlow
	case errors.Is(err, runtime.ErrAmbiguousFlow):
		return http.StatusConflict, CodeAmbiguousFlow
	case errors.Is(err, runtime.ErrOverloaded):
		return http.StatusTooManyRequests, CodeOverloaded
	case errors.Is(err, runtime.ErrStateUnavailable):
		return http.StatusServiceUnavailable, CodeStateUnavailable
	case errors.Is(err, runtime.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, CodeTimeout
	case errors.Is(err, runtime.ErrResourceLimit):
		return http.StatusBadGateway, CodeResourceLimit
	case errors.Is(err, runtime.ErrTrap), errors.Is(err, runtime.ErrInvalidOutput):
		return http.StatusBadGateway, CodeGuestTrap
	case errors.Is(err, runtime.ErrNotLoaded):
		return http.StatusServiceUnavailable, CodeNoReadyRevision
	case errors.Is(err, runtime.ErrConflict):
		return http.StatusConflict, CodeConflict
	case errors.Is(err, runtime.ErrStateFull):
		return http.StatusInsufficientStorage, CodeStateFull
	case errors.Is(err, runtime.ErrUnsupported), errors.Is(err, runtime.ErrAmbiguous), errors.Is(err, runtime.ErrOpNotAllowed):
		return http.StatusUnprocessableEntity, CodeUnsupported
	}
	return http.StatusInternalServerError, CodeInternal
}
