package dispatcher

import (
	"errors"
	"fmt"
	"io"
	"net/http"
)

// preallocBody is the largest declared body read into a buffer allocated before its
// bytes arrive; larger ones grow as they come, so a slow sender cannot make the
// dispatcher hold memory it has not sent.
const preallocBody = 64 << 10

// readBody reads at most limit bytes; past it the response is 413. A body whose length
// is declared and small is read into one buffer of that size.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	if limit <= 0 {
		limit = 1 << 20
	}
	tooLarge := func() ([]byte, bool) {
		writeError(w, http.StatusRequestEntityTooLarge, CodeTooLarge, fmt.Sprintf("the body is larger than the tenant's %d-byte limit", limit))
		return nil, false
	}
	if r.ContentLength > limit {
		return tooLarge()
	}
	var body []byte
	var err error
	if r.ContentLength >= 0 && r.ContentLength <= preallocBody {
		// net/http's body reader ends at the declared length and fails a shorter body.
		body = make([]byte, r.ContentLength)
		_, err = io.ReadFull(r.Body, body)
	} else {
		body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return tooLarge()
		}
		writeError(w, http.StatusBadRequest, CodeInvalidActivity, "read body: "+err.Error())
		return nil, false
	}
	return body, true
}
