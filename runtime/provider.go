package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"time"
)

// InvokeRequest is a provider operation to run.
type InvokeRequest struct {
	ProviderType string `json:"provider_type"`
	Op           string `json:"op"`
	// CorrelationID identifies the call; it is passed to the pack as the idempotency key.
	CorrelationID string `json:"correlation_id,omitempty"`
	// TraceID is the caller's trace id, handed to the pack as it is, next to the
	// correlation id.
	TraceID string          `json:"trace_id,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// Invoke runs a provider op on the one pack that binds the provider type. It fails
// closed: no pack, several packs, an op outside the pack's allowlist, or an unloaded
// revision are refused with typed errors. With a correlation id, the op runs at most
// once per (revision, correlation id) within IdempotencyWindow (see invokeOnceFor);
// the id alone is the key, whatever the op and payload of a repeat.
func (r *Revision) Invoke(ctx context.Context, req InvokeRequest) (json.RawMessage, error) {
	if r.closed.Load() {
		return nil, fmt.Errorf("%w: %s", ErrNotLoaded, r.name)
	}
	var bound []*packRuntime
	for _, p := range r.packs {
		if p.provider(req.ProviderType) != nil {
			bound = append(bound, p)
		}
	}
	switch len(bound) {
	case 0:
		return nil, fmt.Errorf("%w: no pack of %s binds provider type %q", ErrUnsupported, r.name, req.ProviderType)
	case 1:
	default:
		ids := make([]string, len(bound))
		for i, p := range bound {
			ids[i] = p.id
		}
		return nil, fmt.Errorf("%w: packs %s all bind provider type %q", ErrAmbiguous, strings.Join(ids, ", "), req.ProviderType)
	}
	p := bound[0]
	if !slices.Contains(p.provider(req.ProviderType).Ops, req.Op) {
		return nil, fmt.Errorf("%w: op %q of provider type %q is not in pack %s's allowlist", ErrOpNotAllowed, req.Op, req.ProviderType, p.id)
	}
	if !p.pack.hasInvoke {
		return nil, fmt.Errorf("%w: pack %s has no %s export", ErrUnsupported, p.id, ExportInvoke)
	}
	payload, err := json.Marshal(struct {
		InvokeRequest
		IdempotencyKey string `json:"idempotency_key,omitempty"`
	}{req, req.CorrelationID})
	if err != nil {
		return nil, fmt.Errorf("encode invoke request: %w", err)
	}
	// As for activities, the deadline covers every run and the state commit.
	ctx, cancel := context.WithTimeout(ctx, r.limits.Timeout)
	defer cancel()
	if req.CorrelationID == "" {
		var out json.RawMessage
		err := r.runWithRetry(ctx, func(ctx context.Context) error {
			var err error
			out, err = r.invokeOnce(ctx, p, payload, "", "")
			return err
		})
		return out, err
	}
	return r.invokeOnceFor(ctx, p, payload, req.CorrelationID)
}

// IdempotencyWindow is how long Invoke remembers a correlation id's answer: a repeat
// within it gets that answer and the op does not run again.
const IdempotencyWindow = 24 * time.Hour

// invokeSessionPrefix starts the session keys under which Invoke keeps its records in
// the revision's state, as waits (so the store sweeps them once they expire). No
// SessionKey starts with it (they are path-escaped), and a Store does not count them
// as sessions (see IsInvokeSession).
const invokeSessionPrefix = "\x00invoke/"

// IsInvokeSession reports whether a session key in a Store is Invoke's record of a
// correlation id rather than a session: a Store must not pin sessions by it.
func IsInvokeSession(session string) bool { return strings.HasPrefix(session, invokeSessionPrefix) }

// An invoke record's Flow says what it is; its Data is the claim's id, or the answer.
const (
	invokeRunning = "running"
	invokeDone    = "done"
	// invokePack is the record's Pack: not a pack id a manifest can declare.
	invokePack = "\x00invoke"
)

// invokeOnceFor runs a provider op at most once per correlation id within
// IdempotencyWindow, across replicas: a committed record in the revision's state holds
// the first call's answer, which a repeat gets without running the op. A call first
// claims the id with a short-lived record (the revision's deadline plus a grace, so a
// crashed caller's claim lapses); a concurrent call with the same id waits for the
// answer until its deadline, then gets ErrInProgress. The op's state writes and its
// answer commit in one transaction with the record, so they apply once, however often
// the claiming call re-runs the op after conflicts; an op that fails drops the claim,
// and nothing of it is kept, so a retry runs it again.
func (r *Revision) invokeOnceFor(ctx context.Context, p *packRuntime, payload []byte, corrID string) (json.RawMessage, error) {
	session := invokeSessionPrefix + corrID
	claim := fmt.Sprintf("%x", mrand.Uint64())
	if answer, done, err := r.claimInvoke(ctx, session, claim); err != nil || done {
		return answer, err
	}
	var out json.RawMessage
	err := r.runWithRetry(ctx, func(ctx context.Context) error {
		var err error
		out, err = r.invokeOnce(ctx, p, payload, session, claim)
		return err
	})
	if err != nil && !errors.Is(err, ErrOutcomeUnknown) {
		r.releaseInvoke(session, claim)
	}
	return out, err
}

// claimInvoke claims a correlation id for this call (nil, false, nil), or returns the
// answer a call already recorded (answer, true, nil), waiting while another call holds
// the claim.
func (r *Revision) claimInvoke(ctx context.Context, session, claim string) (json.RawMessage, bool, error) {
	var answer json.RawMessage
	done := false
	err := r.runWithRetry(ctx, func(ctx context.Context) error {
		for {
			txn, err := r.store.Begin(ctx)
			if err != nil {
				return fmt.Errorf("begin state transaction: %w", err)
			}
			w, err := invokeRecord(txn, session)
			if err != nil {
				txn.Discard()
				return fmt.Errorf("read invoke record: %w", err)
			}
			now := r.now()
			if w != nil && now.Before(w.Expires) {
				txn.Discard()
				if w.Flow == invokeDone {
					answer, done = w.Data, true
					if len(answer) == 0 {
						answer = nil
					}
					return nil
				}
				select {
				case <-time.After(20 * time.Millisecond):
					continue
				case <-ctx.Done():
					return fmt.Errorf("%w: %s: correlation id is being invoked by another call", ErrInProgress, r.name)
				}
			}
			txn.SetWaits(session, []Wait{{Pack: invokePack, Flow: invokeRunning, Data: []byte(claim), Expires: now.Add(r.limits.Timeout + invokeClaimGrace)}})
			return txn.Commit(ctx)
		}
	})
	return answer, done, err
}

// invokeClaimGrace is how long past the revision's deadline a claim lasts: past the
// longest a claiming call can still commit.
const invokeClaimGrace = 10 * time.Second

// invokeOnce runs the op once in a state transaction and commits it; with a session,
// the transaction also checks the call still holds its claim and records the answer.
func (r *Revision) invokeOnce(ctx context.Context, p *packRuntime, payload []byte, session, claim string) (json.RawMessage, error) {
	txn, err := r.store.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin state transaction: %w", err)
	}
	if session != "" {
		w, err := invokeRecord(txn, session)
		if err != nil {
			txn.Discard()
			return nil, fmt.Errorf("read invoke record: %w", err)
		}
		if w == nil || w.Flow != invokeRunning || string(w.Data) != claim {
			txn.Discard()
			return nil, fmt.Errorf("%w: %s: the claim on the correlation id lapsed before the op committed", ErrInProgress, r.name)
		}
	}
	outs, err := r.callExport(ctx, p, ExportInvoke, payload, txn)
	if err != nil {
		txn.Discard()
		return nil, err
	}
	var answer json.RawMessage
	if len(outs) > 0 {
		answer = outs[0].Payload
	}
	if session != "" {
		txn.SetWaits(session, []Wait{{Pack: invokePack, Flow: invokeDone, Data: append([]byte{}, answer...), Expires: r.now().Add(IdempotencyWindow)}})
	}
	if err := txn.Commit(ctx); err != nil {
		return nil, err
	}
	return answer, nil
}

// releaseInvoke drops this call's claim after the op failed, so a retry may run it.
// It is best effort: a claim left behind lapses after the deadline and its grace.
func (r *Revision) releaseInvoke(session, claim string) {
	ctx, cancel := context.WithTimeout(context.Background(), invokeClaimGrace)
	defer cancel()
	txn, err := r.store.Begin(ctx)
	if err != nil {
		return
	}
	if w, err := invokeRecord(txn, session); err != nil || w == nil || string(w.Data) != claim || w.Flow != invokeRunning {
		txn.Discard()
		return
	}
	txn.SetWaits(session, nil)
	_ = txn.Commit(ctx)
}

// invokeRecord reads what Invoke keeps of a correlation id: the one wait of its
// session key, or nil.
func invokeRecord(txn Txn, session string) (*Wait, error) {
	ws, err := txn.Waits(session)
	if err != nil || len(ws) == 0 {
		return nil, err
	}
	return &ws[0], nil
}

func (p *packRuntime) provider(providerType string) *Provider {
	for i := range p.pack.Manifest.Providers {
		if p.pack.Manifest.Providers[i].Type == providerType {
			return &p.pack.Manifest.Providers[i]
		}
	}
	return nil
}

// callExport runs one of the JSON exports (identify, describe, invoke) under the
// revision's deadline and one of its slots. txn is nil for exports that may not touch
// state.
func (r *Revision) callExport(ctx context.Context, p *packRuntime, export string, payload []byte, txn Txn) ([]Activity, error) {
	var outs []Activity
	err := r.guestCalls(ctx, func(ctx context.Context) error {
		var err error
		outs, err = r.runExport(ctx, p, export, payload, txn)
		return err
	})
	return outs, err
}

// guestCalls runs f, which makes one or more guest calls, as an activity runs: under
// one deadline of the revision's timeout and holding one of its slots. A probe of
// several packs therefore costs the tenant what one activity does, however many packs
// and provider types it asks.
func (r *Revision) guestCalls(ctx context.Context, f func(ctx context.Context) error) error {
	if r.closed.Load() {
		return fmt.Errorf("%w: %s", ErrNotLoaded, r.name)
	}
	ctx, cancel := context.WithTimeout(ctx, r.limits.Timeout)
	defer cancel()
	if err := r.acquire(ctx); err != nil {
		return err
	}
	defer r.release()
	return f(ctx)
}

// runExport calls one JSON export on a pooled instance of p; the caller holds a slot.
// payload is nil for an export without input (describe-identify). The call takes the
// tenant's processor token and sleeps as an activity's handler does.
func (r *Revision) runExport(ctx context.Context, p *packRuntime, export string, payload []byte, txn Txn) ([]Activity, error) {
	inst, err := p.get(ctx, r)
	if err != nil {
		return nil, err
	}
	c := &call{rev: r, pack: p, txn: txn}
	defer c.releaseHost()
	res, err := r.invoke(ctx, inst, c, inst.mod.ExportedFunction(export), payload)
	if err != nil {
		p.discard(inst)
		return nil, err
	}
	p.put(inst, r.now())
	if err := c.outcome(res, export+" of pack "+p.id); err != nil {
		return nil, err
	}
	return c.outputs, nil
}
