package runtime

import (
	"fmt"
	"slices"
)

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
