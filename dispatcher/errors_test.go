package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/packhost/packhost/runtime"
)

// Each runtime error, however wrapped, answers with its documented status and code: as
// an activity's (statusOf) and as an invoke's (invokeStatusOf), which tells the ways an
// invoke fails closed apart.
func TestStatusOf(t *testing.T) {
	type mapping struct {
		err    error
		status int
		code   string
	}
	for _, m := range []struct {
		name string
		of   func(error) (int, string)
		want []mapping
	}{
		{"activity", statusOf, []mapping{
			{runtime.ErrInvalidActivity, http.StatusBadRequest, CodeInvalidActivity},
			{runtime.ErrNoSuchFlow, http.StatusNotFound, CodeNoSuchFlow},
			{&runtime.AmbiguousFlowError{Parked: []runtime.Pin{{Pack: "p", Flow: "a"}, {Pack: "p", Flow: "b"}}}, http.StatusConflict, CodeAmbiguousFlow},
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
		}},
		{"invoke", invokeStatusOf, []mapping{
			{runtime.ErrUnsupported, http.StatusUnprocessableEntity, CodeNoBinding},
			{runtime.ErrAmbiguous, http.StatusUnprocessableEntity, CodeAmbiguousBinding},
			{runtime.ErrOpNotAllowed, http.StatusUnprocessableEntity, CodeOpNotAllowed},
			{runtime.ErrNotLoaded, http.StatusServiceUnavailable, CodeNotLoaded},
			{runtime.ErrInProgress, http.StatusConflict, CodeInProgress},
			{runtime.ErrTimeout, http.StatusGatewayTimeout, CodeTimeout},
		}},
	} {
		for _, tc := range m.want {
			t.Run(m.name+"/"+tc.err.Error(), func(t *testing.T) {
				err := fmt.Errorf("handle: %w", tc.err)
				if status, code := m.of(err); status != tc.status || code != tc.code {
					t.Fatalf("%s(%v) = %d %s, want %d %s", m.name, err, status, code, tc.status, tc.code)
				}
			})
		}
	}
}
