package runtime

import (
	"context"
	"time"

	"github.com/go-logr/logr"
)

// SecretSource gives a revision the tenant's allowlisted secrets by name.
type SecretSource interface {
	Secret(ctx context.Context, name string) ([]byte, bool, error)
}

// Policy is what the tenant allows its packs.
type Policy struct {
	StateRead  bool
	StateWrite bool
	// Secrets are the secret names the tenant allowlists; nil grants none.
	Secrets []string
	// Env are the environment variable names a pack may see; values come from Config.
	Env    []string
	Clocks bool
	Random bool
}

// Limits bound one revision on this replica.
type Limits struct {
	// MemoryPages caps each instance's memory, in 64 KiB pages.
	MemoryPages uint32
	// Timeout is each activity's deadline.
	Timeout time.Duration
	// MaxConcurrency is how many activities run at once (one instance each).
	MaxConcurrency int
	// MaxQueue is how many activities may wait for an instance before ErrOverloaded.
	MaxQueue int
	// MaxOutputBytes bounds the payload bytes one activity may output.
	MaxOutputBytes int
	// MaxHostBytes bounds the host memory one activity's host calls may hold: state
	// values and keys written and read, the parked wait, secrets read. Past it the
	// activity fails with ErrResourceLimit and nothing of it is kept.
	MaxHostBytes int
	// IdleTimeout is how long an idle instance is kept; an idle revision keeps none.
	IdleTimeout time.Duration
	// MaxReruns bounds how often an activity is run again after a state conflict; the
	// activity's deadline bounds the re-runs too.
	MaxReruns int
}

// DefaultMaxHostBytes is Limits.MaxHostBytes unless set: 32 state values of the
// largest size, far more than a revision's whole state namespace needs at its default
// shard count.
const DefaultMaxHostBytes = 8 << 20

func (l *Limits) defaults() {
	if l.MemoryPages == 0 {
		l.MemoryPages = 1024
	}
	if l.Timeout == 0 {
		l.Timeout = 10 * time.Second
	}
	if l.MaxConcurrency == 0 {
		l.MaxConcurrency = 16
	}
	if l.MaxQueue == 0 {
		l.MaxQueue = 4 * l.MaxConcurrency
	}
	if l.MaxOutputBytes == 0 {
		l.MaxOutputBytes = 1 << 20
	}
	if l.MaxHostBytes == 0 {
		l.MaxHostBytes = DefaultMaxHostBytes
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = 30 * time.Second
	}
	if l.MaxReruns == 0 {
		l.MaxReruns = 128 // the deadline bounds them too
	}
}

// RevisionConfig is everything a revision runtime needs; the host fills it, never a guest.
type RevisionConfig struct {
	// Name identifies the revision in errors and logs (namespace/name).
	Name string
	// Env and Tenant scope session keys.
	Env    string
	Tenant string
	// Packs are the main pack then the overlays; the revision takes over their references
	// and releases them on Close (or when NewRevision fails).
	Packs []*Pack
	// Config is the revision's non-secret configuration, handed to every activity.
	Config  map[string]string
	Policy  Policy
	Limits  Limits
	Store   Store
	Secrets SecretSource
	Logger  logr.Logger
	// Clock tells the time for wait expiry; nil uses time.Now.
	Clock func() time.Time
}
