package runtime

import (
	"io"
)

// guestLog writes a guest's log line, rate limited per revision.
func (r *Revision) guestLog(pack string, level int, msg []byte) {
	if !r.logs.Allow() {
		return
	}
	r.log.V(max(0, level)).Info("Guest log", "revision", r.name, "pack", pack, "message", string(msg))
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
	w.r.guestLog(w.pack, level, p)
	return len(p), nil
}

var _ io.Writer = (*guestWriter)(nil)
