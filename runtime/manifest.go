package runtime

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
)

// ABIVersion is the guest ABI this host implements; a manifest's "abi" must equal it.
const ABIVersion = 1

// ManifestSection is the name of the custom section that carries a pack's manifest.
const ManifestSection = "packhost.manifest"

// TagInternal marks a flow that is never entered from outside.
const TagInternal = "internal"

// Manifest is what a pack says about itself, read from its packhost.manifest section.
type Manifest struct {
	// ABI is the guest ABI version the pack was built for.
	ABI int `json:"abi"`
	// PackID names the pack; unique within a revision.
	PackID string `json:"pack_id"`
	// Version of the pack, free-form (semver recommended).
	Version string `json:"version"`
	// Flows the pack implements.
	Flows []Flow `json:"flows"`
	// Providers the pack binds, for identify and provider invoke.
	Providers []Provider `json:"providers,omitempty"`
	// Capabilities the pack asks for; it gets those the tenant's policy also allows.
	Capabilities Capabilities `json:"capabilities"`
}

// Flow is one conversation graph of a pack.
type Flow struct {
	ID    string   `json:"id"`
	Type  string   `json:"type,omitempty"`
	Entry bool     `json:"entry,omitempty"`
	Tags  []string `json:"tags,omitempty"`
}

// Internal reports whether the flow is never entered from outside.
func (f Flow) Internal() bool { return slices.Contains(f.Tags, TagInternal) }

// Provider is a provider type a pack binds.
type Provider struct {
	Type string   `json:"type"`
	Ops  []string `json:"ops,omitempty"`
	// Identify is what the pack's identify function reads of an inbound request; nil
	// means it may read every header.
	Identify *IdentifyHint `json:"identify,omitempty"`
}

// IdentifyHint names the request headers and JSON pointers an identify call reads.
type IdentifyHint struct {
	Headers      []string `json:"headers,omitempty"`
	JSONPointers []string `json:"json_pointers,omitempty"`
}

// Capabilities a pack asks for.
type Capabilities struct {
	State   StateCapability `json:"state,omitempty"`
	Secrets []string        `json:"secrets,omitempty"`
	Session bool            `json:"session,omitempty"`
	WASI    WASICapability  `json:"wasi,omitempty"`
}

// StateCapability asks for state reads and writes.
type StateCapability struct {
	Read  bool `json:"read,omitempty"`
	Write bool `json:"write,omitempty"`
}

// WASICapability asks for WASI facilities.
type WASICapability struct {
	Env    []string `json:"env,omitempty"`
	Clock  bool     `json:"clock,omitempty"`
	Random bool     `json:"random,omitempty"`
}

var idPattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$`)

// ValidProviderType reports whether s can name a provider type in a manifest: a
// request that asks about any other name asks about nothing a pack can bind.
func ValidProviderType(s string) bool { return idPattern.MatchString(s) }

// ParseManifest decodes and checks a manifest. Unknown fields are refused so that a typo
// in a capability does not silently drop it.
func ParseManifest(data []byte) (*Manifest, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("decode manifest: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("decode manifest: trailing data after the JSON object")
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

func (m *Manifest) validate() error {
	if m.ABI != ABIVersion {
		return fmt.Errorf("manifest abi %d is not supported: this host implements abi %d", m.ABI, ABIVersion)
	}
	if !idPattern.MatchString(m.PackID) {
		return fmt.Errorf("manifest pack_id %q must be 1-128 letters, digits, '.', '_' or '-'", m.PackID)
	}
	if len(m.Flows) == 0 {
		return fmt.Errorf("manifest declares no flows")
	}
	seen := map[string]bool{}
	for _, f := range m.Flows {
		if !idPattern.MatchString(f.ID) {
			return fmt.Errorf("flow id %q must be 1-128 letters, digits, '.', '_' or '-'", f.ID)
		}
		if seen[f.ID] {
			return fmt.Errorf("flow id %q is declared twice", f.ID)
		}
		seen[f.ID] = true
	}
	types := map[string]bool{}
	for _, p := range m.Providers {
		if !idPattern.MatchString(p.Type) {
			return fmt.Errorf("provider type %q must be 1-128 letters, digits, '.', '_' or '-'", p.Type)
		}
		if types[p.Type] {
			return fmt.Errorf("provider type %q is declared twice", p.Type)
		}
		types[p.Type] = true
	}
	if m.Capabilities.State.Write && !m.Capabilities.State.Read {
		return fmt.Errorf("capabilities.state.write needs capabilities.state.read")
	}
	return nil
}

// firstEntryFlow is the first flow an outside activity may enter, in manifest order.
func (m *Manifest) firstEntryFlow() (Flow, bool) {
	for _, f := range m.Flows {
		if f.Entry && !f.Internal() {
			return f, true
		}
	}
	return Flow{}, false
}
