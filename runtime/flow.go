package runtime

import (
	"fmt"
	"slices"
)

// chooseFlow picks the pack and flow an activity runs and the session's parked wait it
// resumes (a copy), if any, among the session's live waits on this revision, parked:
//   - an activity that names its flow (flow_id, or flow_type) enters that flow as
//     selectFlow chooses it, and resumes the wait parked in it if there is one, whatever
//     other flows of the session are parked;
//   - one that does not resumes the session's one parked wait (of the pack its pack_id
//     names, when it names one); with several parked it fails with an
//     AmbiguousFlowError that names them, rather than guess which conversation a reply
//     continues; with none it enters the flow selectFlow chooses.
func (r *Revision) chooseFlow(a *Activity, parked []Wait) (*packRuntime, Flow, *Wait, error) {
	if a.FlowID == "" && a.FlowType == "" {
		var match []Pin
		var resume Wait
		for _, w := range parked {
			if a.PackID == "" || w.Pack == a.PackID {
				match = append(match, Pin{Revision: r.name, Pack: w.Pack, Flow: w.Flow, Expires: w.Expires})
				resume = w
			}
		}
		switch {
		case len(match) == 1:
			p := r.byID[resume.Pack]
			return p, p.flow(resume.Flow), &resume, nil
		case len(match) > 1:
			return nil, Flow{}, nil, &AmbiguousFlowError{Parked: match}
		}
	}
	idx, f, err := selectFlow(r.packs, a)
	if err != nil {
		return nil, Flow{}, nil, err
	}
	p := r.packs[idx]
	for _, w := range parked {
		if w.Pack == p.id && w.Flow == f.ID {
			return p, f, &w, nil
		}
	}
	return p, f, nil, nil
}

// SelectFlow says which pack and flow an activity that names its flow (flow_id or
// flow_type, narrowed by pack_id) enters on this revision, or why none: the dispatcher
// matches it against the flows a session has parked (see Pin).
func (r *Revision) SelectFlow(a *Activity) (pack, flow string, err error) {
	idx, f, err := selectFlow(r.packs, a)
	if err != nil {
		return "", "", err
	}
	return r.packs[idx].id, f.ID, nil
}

// flow returns the pack's flow of that id; a wait parked in a flow its manifest no
// longer declares resumes with the id alone.
func (p *packRuntime) flow(id string) Flow {
	for _, f := range p.pack.Manifest.Flows {
		if f.ID == id {
			return f
		}
	}
	return Flow{ID: id}
}

// selectFlow picks the flow an activity enters: its explicit flow id, else the unique
// entry flow of its flow type, else the main pack's first entry flow. Flows tagged
// internal are never entered from outside. A pack_id hint narrows the search.
func selectFlow(packs []*packRuntime, a *Activity) (int, Flow, error) {
	candidates := func(yield func(int, Flow) bool) {
		for i, p := range packs {
			if a.PackID != "" && p.id != a.PackID {
				continue
			}
			for _, f := range p.pack.Manifest.Flows {
				if !f.Internal() && !yield(i, f) {
					return
				}
			}
		}
	}
	switch {
	case a.FlowID != "":
		for i, f := range candidates {
			if f.ID == a.FlowID {
				return i, f, nil
			}
		}
		return 0, Flow{}, fmt.Errorf("%w: no flow %q that can be entered from outside", ErrNoSuchFlow, a.FlowID)
	case a.FlowType != "":
		found, idx, n := Flow{}, 0, 0
		for i, f := range candidates {
			if f.Entry && f.Type == a.FlowType {
				found, idx, n = f, i, n+1
			}
		}
		switch n {
		case 1:
			return idx, found, nil
		case 0:
			return 0, Flow{}, fmt.Errorf("%w: no entry flow of type %q", ErrNoSuchFlow, a.FlowType)
		default:
			return 0, Flow{}, fmt.Errorf("%w: %d entry flows of type %q; name one with flow_id", ErrNoSuchFlow, n, a.FlowType)
		}
	}
	main := 0
	if a.PackID != "" {
		main = slices.IndexFunc(packs, func(p *packRuntime) bool { return p.id == a.PackID })
		if main < 0 {
			return 0, Flow{}, fmt.Errorf("%w: no pack %q", ErrNoSuchFlow, a.PackID)
		}
	}
	if f, ok := packs[main].pack.Manifest.firstEntryFlow(); ok {
		return main, f, nil
	}
	return 0, Flow{}, fmt.Errorf("%w: pack %s has no entry flow", ErrNoSuchFlow, packs[main].id)
}
