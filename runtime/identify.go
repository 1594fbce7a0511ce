package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
)

// Identify outcomes, ordered: Identified > Errored > NoMatch > Unsupported. Errored
// ranks above NoMatch so that a pack that failed is never hidden behind another pack's
// "not mine": the caller learns the answer is unknown and may ask again.
const (
	Unsupported = iota
	NoMatch
	Errored
	Identified
)

// Output actions of the identify and describe exports (runtime/ABI.md).
const (
	actionIdentified = "identified"
	actionNoMatch    = "no_match"
	actionHint       = "hint"
)

// maxHintBytes bounds what one pack's describe-identify may answer (the payloads of its
// hint outputs together). The answer is kept for the revision's life, so a hostile pack
// must not make the host keep much: 64 KiB holds a thousand header names.
const maxHintBytes = 64 << 10

// Header is one request header as the caller sent it.
type Header struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// IdentifyRequest is an inbound webhook to attribute to provider instances.
type IdentifyRequest struct {
	// ProviderTypes are the provider types to identify the request for; a pack is asked
	// about those its manifest binds. The empty type asks every pack that exports
	// identify, whatever it binds, with no provider type (the single-type form without a
	// type).
	ProviderTypes []string
	// Headers are the request headers in the order sent, repeated names kept.
	Headers []Header
	// Body is the request body when it is JSON.
	Body json.RawMessage
}

// Identity is what identify found for one provider type.
type Identity struct {
	// Outcome is Identified, Errored, NoMatch or Unsupported.
	Outcome      int    `json:"-"`
	Pack         string `json:"pack,omitempty"`
	ProviderType string `json:"provider_type,omitempty"`
	ProviderID   string `json:"provider_id,omitempty"`
	EndpointID   string `json:"endpoint_id,omitempty"`
	// Err is why Pack could not answer when the outcome is Errored.
	Err error `json:"-"`
}

// OutcomeName is the outcome's name: Identified, Error, NoMatch or Unsupported.
func (i Identity) OutcomeName() string {
	return [...]string{"Unsupported", "NoMatch", "Error", "Identified"}[i.Outcome]
}

// Hint is what one provider type's identify reads of a request.
type Hint struct {
	ProviderType string   `json:"provider_type"`
	Headers      []string `json:"headers"`
	JSONPointers []string `json:"json_pointers,omitempty"`
	// Pack is the pack the hint is from.
	Pack string `json:"pack,omitempty"`
}

// packHint is a resolved hint with its header names lower-cased for matching.
type packHint struct {
	Hint
	names map[string]bool
}

// identifyInput is what a pack's identify export reads (runtime/ABI.md): the headers
// as a map for simple packs, and as sent for packs that care about order or repeats.
type identifyInput struct {
	ProviderType string            `json:"provider_type,omitempty"`
	Headers      map[string]string `json:"headers"`
	HeaderList   []Header          `json:"header_list"`
	Body         json.RawMessage   `json:"body,omitempty"`
}

// Identify asks the packs, main first then overlays, which provider instance req
// addresses, for each of its provider types. Per type the best outcome wins
// (Identified > Errored > NoMatch > Unsupported, the first pack of the best rank kept),
// and a type drops out of the probe once a pack Identified it. A pack without an
// identify export, or whose identify outputs nothing, is Unsupported. A pack that
// traps, runs past the deadline or answers garbage is Errored for the types it was
// asked, and the probe goes on with the other packs; only what ends the whole probe
// (an unloaded or overloaded revision, the caller gone) is returned as an error.
//
// The whole probe runs as one activity: one slot, one deadline. With scoped set, a
// pack sees only the headers its hint for the type names (hintsOf), and a pack without
// a hint for it sees them all.
func (r *Revision) Identify(ctx context.Context, req IdentifyRequest, scoped bool) (map[string]Identity, error) {
	types := make([]string, 0, len(req.ProviderTypes))
	best := make(map[string]Identity, len(req.ProviderTypes))
	for _, t := range req.ProviderTypes {
		if _, dup := best[t]; !dup {
			types = append(types, t)
			best[t] = Identity{Outcome: Unsupported}
		}
	}
	if len(req.Body) > 0 && !validJSON(req.Body) {
		return nil, fmt.Errorf("%w: identify request body is not JSON", ErrInvalidActivity)
	}
	lower := make([]string, len(req.Headers))
	for i, h := range req.Headers {
		lower[i] = strings.ToLower(h.Name)
	}
	parent := ctx
	err := r.guestCalls(ctx, func(ctx context.Context) error {
		for _, p := range r.packs {
			if !p.pack.hasIdentify {
				continue
			}
			var hints map[string]*packHint
			var hintErr error
			for _, t := range types {
				if best[t].Outcome == Identified || (t != "" && p.provider(t) == nil) {
					continue
				}
				if scoped && hints == nil && hintErr == nil {
					hints, hintErr = r.hintsOf(ctx, p)
				}
				var id Identity
				err := hintErr
				if err == nil {
					id, err = r.identifyOnce(ctx, p, t, req, lower, scoped, hints)
				}
				if err != nil {
					if abortsProbe(parent, err) {
						return err
					}
					id = Identity{Outcome: Errored, Pack: p.id, ProviderType: t, Err: err}
				}
				if id.Outcome > best[t].Outcome {
					best[t] = id
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return best, nil
}

// abortsProbe reports whether err ends a whole identify probe rather than one pack's
// answer: the revision is unloading or overloaded, or the caller went away.
func abortsProbe(parent context.Context, err error) bool {
	return errors.Is(err, ErrNotLoaded) || errors.Is(err, ErrOverloaded) || parent.Err() != nil
}

// identifyOnce asks pack p's identify export about provider type t.
func (r *Revision) identifyOnce(ctx context.Context, p *packRuntime, t string, req IdentifyRequest, lower []string, scoped bool, hints map[string]*packHint) (Identity, error) {
	if err := ctx.Err(); err != nil {
		return Identity{}, fmt.Errorf("%w: %s: the probe's deadline passed before pack %s was asked", ErrTimeout, r.name, p.id)
	}
	in := identifyInput{ProviderType: t, HeaderList: req.Headers, Body: req.Body}
	if scoped {
		if names, all := p.scope(t, hints); !all {
			in.HeaderList = nil
			for i, h := range req.Headers {
				if names[lower[i]] {
					in.HeaderList = append(in.HeaderList, h)
				}
			}
		}
	}
	if in.HeaderList == nil {
		in.HeaderList = []Header{}
	}
	in.Headers = combineHeaders(in.HeaderList)
	payload, err := json.Marshal(in)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: encode identify request: %v", ErrInvalidActivity, err)
	}
	outs, err := r.runExport(ctx, p, ExportIdentify, payload, nil)
	if err != nil {
		return Identity{}, err
	}
	got := Identity{Outcome: Unsupported}
	for _, o := range outs {
		var id Identity
		if len(o.Payload) > 0 {
			if err := json.Unmarshal(o.Payload, &id); err != nil {
				return Identity{}, fmt.Errorf("%w: identify of pack %s: %v", ErrInvalidOutput, p.id, err)
			}
		}
		id.Pack, id.Err = p.id, nil
		if t != "" {
			id.ProviderType = t // the type asked, whatever the pack claims
		}
		switch o.Action {
		case actionIdentified:
			id.Outcome = Identified
			return id, nil
		case actionNoMatch:
			id.Outcome = NoMatch
			if got.Outcome < NoMatch {
				got = id
			}
		default:
			return Identity{}, fmt.Errorf("%w: identify of pack %s output action %q", ErrInvalidOutput, p.id, o.Action)
		}
	}
	return got, nil
}

// combineHeaders maps the lower-cased names of headers to their values, a repeated
// header's values joined with ", " as HTTP combines them (RFC 9110, 5.3). Each name's
// values are joined once: appending to the joined value at each repeat would copy it
// again each time, the square of a caller's repeats of one name.
func combineHeaders(headers []Header) map[string]string {
	values := map[string][]string{}
	for _, h := range headers {
		name := strings.ToLower(h.Name)
		values[name] = append(values[name], h.Value)
	}
	out := make(map[string]string, len(values))
	for name, vs := range values {
		out[name] = strings.Join(vs, ", ")
	}
	return out
}

// scope is the set of lower-cased header names pack p's identify may see for provider
// type t, or all=true when it may see every header: t has no hint. The empty type takes
// the union of the hints of every type the pack binds (all of them when one has none,
// or when it binds none: a pack without any hint is unhinted).
func (p *packRuntime) scope(t string, hints map[string]*packHint) (names map[string]bool, all bool) {
	if t != "" {
		h := hints[t]
		if h == nil {
			return nil, true
		}
		return h.names, false
	}
	if len(p.pack.Manifest.Providers) == 0 {
		return nil, true
	}
	names = map[string]bool{}
	for _, prov := range p.pack.Manifest.Providers {
		h := hints[prov.Type]
		if h == nil {
			return nil, true
		}
		for n := range h.names {
			names[n] = true
		}
	}
	return names, false
}

// IdentifyHints returns, per provider type, the hint of the first pack (main first)
// that binds the type and has a hint for it: from its describe-identify export when
// that names the type, else from its manifest. With types nil it answers every type a
// pack binds; types no pack has a hint for are left out. It runs as one activity.
func (r *Revision) IdentifyHints(ctx context.Context, types []string) ([]Hint, error) {
	var out []Hint
	err := r.guestCalls(ctx, func(ctx context.Context) error {
		seen := map[string]bool{}
		for _, p := range r.packs {
			var hints map[string]*packHint
			for _, prov := range p.pack.Manifest.Providers {
				t := prov.Type
				if seen[t] || (types != nil && !slices.Contains(types, t)) {
					continue
				}
				if hints == nil {
					var err error
					if hints, err = r.hintsOf(ctx, p); err != nil {
						return err
					}
				}
				if h := hints[t]; h != nil {
					seen[t] = true
					out = append(out, h.Hint)
				}
			}
		}
		return nil
	})
	return out, err
}

// hintCache keeps a pack's resolved identify hints for the life of its revision: a
// revision never changes, so its describe-identify export is asked once. Only an
// answer is kept; a describe that failed is asked again by the next request that needs
// it (each try costs that request's deadline, as any guest call does). What the hints
// keep is charged to the tenant's account until the revision is closed: a tenant's
// packs answer what they like, up to maxHintBytes each, in as many revisions as it has.
type hintCache struct {
	// lock is held (a value in it) while describe-identify runs, so that concurrent
	// first requests wait for one answer instead of each running the export.
	lock     chan struct{}
	resolved atomic.Pointer[map[string]*packHint] // set once, under lock and packRuntime.mu
	// held is what the resolved hints are charged (under packRuntime.mu, with unloaded).
	held int64
}

// hintsOf returns pack p's hints by provider type, resolving them the first time: the
// describe-identify export's hint for a type the manifest binds, else the manifest's.
// A type without either is absent: its identify sees every header.
func (r *Revision) hintsOf(ctx context.Context, p *packRuntime) (map[string]*packHint, error) {
	if h := p.hints.resolved.Load(); h != nil {
		return *h, nil
	}
	select {
	case p.hints.lock <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %s: waiting for the describe-identify of pack %s", ErrTimeout, r.name, p.id)
	}
	defer func() { <-p.hints.lock }()
	if h := p.hints.resolved.Load(); h != nil {
		return *h, nil // resolved while this call waited
	}
	hints := map[string]*packHint{}
	for _, prov := range p.pack.Manifest.Providers {
		if prov.Identify != nil {
			hints[prov.Type] = newPackHint(Hint{ProviderType: prov.Type, Headers: prov.Identify.Headers, JSONPointers: prov.Identify.JSONPointers, Pack: p.id})
		}
	}
	if p.pack.hasDescribe && len(p.pack.Manifest.Providers) > 0 { // else it may hint nothing
		described, err := r.describe(ctx, p)
		if err != nil {
			return nil, err
		}
		for t, h := range described {
			hints[t] = h
		}
	}
	var n int64
	for _, h := range hints {
		n += h.bytes()
	}
	if !r.engine.reserve(r.memory, memHost, n) {
		return nil, fmt.Errorf("%w: %w", ErrOverloaded, r.engine.budgetError(r.memory, "the identify hints of pack "+p.id, n))
	}
	p.mu.Lock()
	unloaded := p.unloaded
	if !unloaded { // kept and charged together, so dropHints finds both or neither
		p.hints.held = n
		p.hints.resolved.Store(&hints)
	}
	p.mu.Unlock()
	if unloaded {
		// Close gave back what the pack held already: answer, but keep nothing.
		r.engine.release(r.memory, memHost, n)
	}
	return hints, nil
}

// dropHints forgets pack p's resolved hints and gives back what they were charged; the
// revision is unloaded (p.unloaded is set, so none are kept again).
func (p *packRuntime) dropHints() {
	p.mu.Lock()
	held := p.hints.held
	p.hints.held = 0
	p.hints.resolved.Store(nil)
	p.mu.Unlock()
	p.pack.engine.release(p.memory, memHost, held)
}

// describe runs pack p's describe-identify export and checks its answer: one hint per
// provider type at most, each for a type the manifest binds, maxHintBytes in all.
func (r *Revision) describe(ctx context.Context, p *packRuntime) (map[string]*packHint, error) {
	outs, err := r.runExport(ctx, p, ExportDescribe, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("describe-identify of pack %s: %w", p.id, err)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: describe-identify of pack %s: %s", ErrInvalidOutput, p.id, fmt.Sprintf(format, args...))
	}
	size := 0
	hints := map[string]*packHint{}
	for _, o := range outs {
		if size += len(o.Payload); size > maxHintBytes {
			return nil, bad("its hints take more than %d bytes", maxHintBytes)
		}
		var h Hint
		if o.Action != actionHint {
			return nil, bad("output action %q, want %q", o.Action, actionHint)
		}
		if err := json.Unmarshal(o.Payload, &h); err != nil {
			return nil, bad("hint is not {\"provider_type\",\"headers\",\"json_pointers\"}: %v", err)
		}
		if p.provider(h.ProviderType) == nil {
			return nil, bad("hint for provider type %q, which the manifest does not bind", h.ProviderType)
		}
		if hints[h.ProviderType] != nil {
			return nil, bad("two hints for provider type %q", h.ProviderType)
		}
		h.Pack = p.id
		hints[h.ProviderType] = newPackHint(h)
	}
	return hints, nil
}

// bytes estimates what hint h keeps on the host: each header name in its list and in
// the lower-cased set, about 64 bytes of slice and map entry besides the text (9,400
// names in 61 KiB of JSON keep 627 KiB), and each JSON pointer.
func (h *packHint) bytes() int64 {
	n := int64(256)
	for _, name := range h.Headers {
		n += 2*int64(len(name)) + 64
	}
	for _, ptr := range h.JSONPointers {
		n += int64(len(ptr)) + 16
	}
	return n
}

func newPackHint(h Hint) *packHint {
	if h.Headers == nil {
		h.Headers = []string{}
	}
	names := make(map[string]bool, len(h.Headers))
	for _, n := range h.Headers {
		names[strings.ToLower(n)] = true
	}
	return &packHint{Hint: h, names: names}
}
