package source

import (
	"cmp"
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// Retries of network sources (url and image) share this one path.
const (
	// fetchAttempts is how often a fetch is tried, when a failure may pass on another try
	// (connection failed, HTTP 5xx or 429), before Fetch reports it.
	fetchAttempts = 3
	// fetchBackoff is the wait before the second try; it doubles after each, ±20%.
	fetchBackoff = 500 * time.Millisecond
	// holdBase is how long a source whose fetch failed unreachable is held back: Fetch
	// answers with the same error, without network I/O, until the hold ends. It doubles
	// with each failure in a row, ±20%, up to holdMax, so a dead source costs a request
	// every few minutes per replica rather than one per requeue of every Revision that
	// names it.
	holdBase = 10 * time.Second
	// holdMax caps the hold.
	holdMax = 5 * time.Minute
	// maxHolds is how many sources are remembered before the ended holds are forgotten.
	maxHolds = 1024
)

// jitter spreads d over ±20%, so replicas and revisions do not retry in step.
func jitter(d time.Duration) time.Duration {
	return d*4/5 + rand.N(d*2/5+1)
}

// holds remembers, per source, the failures in a row and until when it is held back.
type holds struct {
	mu sync.Mutex
	m  map[string]*hold
}

type hold struct {
	failures int
	until    time.Time
	err      *Error
}

// check returns the error of a source held back at now, or nil.
func (h *holds) check(key string, now time.Time) *Error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.m[key]; s != nil && now.Before(s.until) {
		return s.err
	}
	return nil
}

func (h *holds) fail(key string, err *Error, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil {
		h.m = map[string]*hold{}
	}
	if len(h.m) >= maxHolds {
		// Sources named once and never again would pile up: forget the holds that ended.
		for k, s := range h.m {
			if !now.Before(s.until) {
				delete(h.m, k)
			}
		}
	}
	s := h.m[key]
	if s == nil {
		s = &hold{}
		h.m[key] = s
	}
	s.failures++
	d := holdMax
	if s.failures < 16 {
		d = min(holdBase<<(s.failures-1), holdMax)
	}
	s.until, s.err = now.Add(jitter(d)), err
}

func (h *holds) clear(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.m, key)
}

// try runs once for a network source named src (e.g. "url https://…") under the one
// retry path: a source held back answers at once with its last error; otherwise up to
// fetchAttempts tries of at most tryTimeout each, with a jittered, doubling wait between
// tries that may pass on another go. A fetch that ends unreachable holds the source back.
// key scopes the hold (namespace and source), since credentials differ per namespace.
func (f *Fetcher) try(ctx context.Context, key, src string, blobs bool, once func(ctx context.Context) error) error {
	if e := f.holds.check(key, f.now()); e != nil {
		return e
	}
	backoff := fetchBackoff
	var last *Error
	for attempt := range fetchAttempts {
		if attempt > 0 {
			select {
			case <-time.After(jitter(backoff)):
			case <-ctx.Done():
				return &Error{Source: src, Detail: "canceled", Class: ErrSourceUnreachable}
			}
			backoff *= 2
		}
		t := &tryState{blobs: blobs}
		timeout := cmp.Or(f.tryTimeout, tryTimeout)
		tctx, cancel := context.WithTimeout(withTry(ctx, t), timeout)
		err := once(tctx)
		if err == nil {
			cancel()
			f.holds.clear(key)
			return nil
		}
		e := *classify(tctx, t, err, timeout)
		cancel()
		e.Source = src
		last = &e
		if !e.retry {
			break
		}
	}
	if last.Class == ErrSourceUnreachable && ctx.Err() == nil {
		f.holds.fail(key, last, f.now())
	}
	return last
}

func (f *Fetcher) now() time.Time {
	if f.Clock != nil {
		return f.Clock()
	}
	return time.Now()
}
