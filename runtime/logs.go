package runtime

import (
	"context"
	"io"

	"github.com/packhost/packhost/internal/tracing"
)

// guestLog writes a guest's log line, rate limited per revision. A line written during
// a traced request carries its trace id (ctx is the guest call's).
func (r *Revision) guestLog(ctx context.Context, pack string, level int, msg []byte) {
	if !r.logs.Allow() {
		return
	}
	log := r.log.V(max(0, level))
	if id := tracing.TraceID(ctx); id != "" {
		log = log.WithValues("trace_id", id)
	}
	log.Info("Guest log", "revision", r.name, "pack", pack, "message", string(msg))
}

// guestWriter captures a guest's stdout or stderr into the log.
type guestWriter struct {
	r      *Revision
	pack   string
	stderr bool
}

func (w *guestWriter) Write(p []byte) (int, error) {
	level := 1
	if w.stderr {
		level = 0
	}
	if len(p) > maxLogLineBytes {
		p = p[:maxLogLineBytes]
	}
	w.r.guestLog(context.Background(), w.pack, level, p) // outside a call: no trace
	return len(p), nil
}

var _ io.Writer = (*guestWriter)(nil)
