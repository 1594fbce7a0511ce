package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/packhost/packhost/runtime"
)

// Each runtime error, however wrapped, answers with its documented status and code.
func TestStatusOf(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		code   string
	}{
		{runtime.ErrInvalidActivity, http.StatusBadRequest, CodeInvalidActivity},
		{runtime.ErrNoSuchFlow, http.StatusNotFound, CodeNoSuchFlow},
		{runtime.ErrOverloaded, http.StatusTooManyRequests, CodeOverloaded},
		{runtime.ErrTimeout, http.StatusGatewayTimeout, CodeTimeout},
		{context.DeadlineExceeded, http.StatusGatewayTimeout, CodeTimeout},
		{runtime.ErrTrap, http.StatusBadGateway, CodeGuestTrap},
		{runtime.ErrInvalidOutput, http.StatusBadGateway, CodeGuestTrap},
		{runtime.ErrResourceLimit, http.StatusBadGateway, CodeResourceLimit},
		{runtime.ErrNotLoaded, http.StatusServiceUnavailable, CodeNoReadyRevision},
		{runtime.ErrConflict, http.StatusConflict, CodeConflict},
		{runtime.ErrStateFull, http.StatusInsufficientStorage, CodeStateFull},
		{runtime.ErrUnsupported, http.StatusUnprocessableEntity, CodeUnsupported},
		{runtime.ErrAmbiguous, http.StatusUnprocessableEntity, CodeUnsupported},
		{runtime.ErrOpNotAllowed, http.StatusUnprocessableEntity, CodeUnsupported},
		{errors.New("something else"), http.StatusInternalServerError, CodeInternal},
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			err := fmt.Errorf("handle activity: %w", tc.err)
			if status, code := statusOf(err); status != tc.status || code != tc.code {
				t.Fatalf("statusOf(%v) = %d %s, want %d %s", err, status, code, tc.status, tc.code)
			}
		})
	}
}

func TestInvokeStatusOf(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		code   string
	}{
		{runtime.ErrUnsupported, http.StatusUnprocessableEntity, CodeNoBinding},
		{runtime.ErrAmbiguous, http.StatusUnprocessableEntity, CodeAmbiguousBinding},
		{runtime.ErrOpNotAllowed, http.StatusUnprocessableEntity, CodeOpNotAllowed},
		{runtime.ErrNotLoaded, http.StatusServiceUnavailable, CodeNotLoaded},
		{runtime.ErrInProgress, http.StatusConflict, CodeInProgress},
		{runtime.ErrTimeout, http.StatusGatewayTimeout, CodeTimeout},
	} {
		if status, code := invokeStatusOf(fmt.Errorf("wrapped: %w", tc.err)); status != tc.status || code != tc.code {
			t.Errorf("%v: got %d %s, want %d %s", tc.err, status, code, tc.status, tc.code)
		}
	}
}
