//go:build wasip1

package packhost

import (
	"encoding/json"
	"unsafe"
)

//go:wasmimport packhost secret_get
func hostSecretGet(namePtr, nameLen, bufPtr, bufCap uint32) int32

// IdentifyRequest is an inbound webhook the host asks the pack to attribute, for one
// provider type the manifest binds. In a scoped identify it holds only the headers the
// pack's hint for that type names (see HandleDescribeIdentify).
type IdentifyRequest struct {
	ProviderType string `json:"provider_type"`
	// Headers maps lower-cased names to values; a repeated header's values are joined
	// with ", ", as HTTP combines them.
	Headers map[string]string `json:"headers"`
	// HeaderList is the headers as the caller sent them: names as spelled, in order,
	// repeated names kept.
	HeaderList []Header        `json:"header_list"`
	Body       json.RawMessage `json:"body"`
}

// Header is one request header as the caller sent it.
type Header struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Hint says what the pack's identify reads of a request for one provider type: the
// host's scoped identify passes it only these headers.
type Hint struct {
	ProviderType string   `json:"provider_type"`
	Headers      []string `json:"headers"`
	JSONPointers []string `json:"json_pointers,omitempty"`
}

// Identity names the provider instance a request addresses.
type Identity struct {
	ProviderType string `json:"provider_type,omitempty"`
	ProviderID   string `json:"provider_id,omitempty"`
	EndpointID   string `json:"endpoint_id,omitempty"`
}

// InvokeRequest is a provider operation the host asks the pack to run.
type InvokeRequest struct {
	ProviderType string `json:"provider_type"`
	Op           string `json:"op"`
	// IdempotencyKey is the caller's correlation id: running the same key twice must
	// have the effect of running it once.
	IdempotencyKey string `json:"idempotency_key"`
	// TraceID is the caller's trace id, as the caller sent it (empty when none): pass it
	// on to what the op calls, so one trace follows the op across systems.
	TraceID string          `json:"trace_id,omitempty"`
	Payload json.RawMessage `json:"payload"`
}

var (
	identifyFunc func(*IdentifyRequest) (*Identity, error)
	describeFunc func() []Hint
	invokeFunc   func(*InvokeRequest) ([]byte, error)
)

// HandleDescribeIdentify registers the function that tells the host the pack's identify
// hints, for when they depend on what the manifest cannot know (the revision's config,
// say). The host asks once per revision and keeps the answer; a type f leaves out keeps
// the manifest's hint, and a type with neither receives every header. Hints may only
// name provider types the manifest binds, one hint per type, 64 KiB in all.
func HandleDescribeIdentify(f func() []Hint) { describeFunc = f }

// HandleIdentify registers the pack's identify function. Return nil for "not mine"
// (NoMatch); without a registered function the pack answers Unsupported.
func HandleIdentify(f func(*IdentifyRequest) (*Identity, error)) { identifyFunc = f }

// HandleInvoke registers the pack's provider-invoke function; its result (JSON) is the
// op's response. The host only calls it for ops in the manifest's allowlist.
func HandleInvoke(f func(*InvokeRequest) ([]byte, error)) { invokeFunc = f }

func input(p, n uint32) []byte { return unsafe.Slice((*byte)(unsafe.Pointer(uintptr(p))), n) }

//go:wasmexport packhost_identify
func identify(p, n uint32) int32 {
	if identifyFunc == nil {
		return 0 // no output: Unsupported
	}
	var req IdentifyRequest
	if err := json.Unmarshal(input(p, n), &req); err != nil {
		Log("identify: bad request: " + err.Error())
		return 2
	}
	id, err := identifyFunc(&req)
	if err != nil {
		Log("identify: " + err.Error())
		return 1
	}
	action := "no_match"
	if id != nil {
		action = "identified"
	} else {
		id = &Identity{ProviderType: req.ProviderType}
	}
	out, _ := json.Marshal(id)
	if Output(action, out) != nil {
		return 1
	}
	return 0
}

//go:wasmexport packhost_describe_identify
func describeIdentify() int32 {
	if describeFunc == nil {
		return 0 // no output: the manifest's hints
	}
	for _, h := range describeFunc() {
		if h.Headers == nil {
			h.Headers = []string{}
		}
		out, _ := json.Marshal(h)
		if Output("hint", out) != nil {
			return 1
		}
	}
	return 0
}

//go:wasmexport packhost_invoke
func invoke(p, n uint32) int32 {
	if invokeFunc == nil {
		Log("invoke: the pack registered no HandleInvoke")
		return 3
	}
	var req InvokeRequest
	if err := json.Unmarshal(input(p, n), &req); err != nil {
		Log("invoke: bad request: " + err.Error())
		return 2
	}
	out, err := invokeFunc(&req)
	if err != nil {
		Log("invoke: " + err.Error())
		return 1
	}
	if Reply(out) != nil {
		return 1
	}
	return 0
}

// Secret reads a secret by name (needs it in capabilities.secrets and the tenant's
// allowlist). ok is false when the secret has no such key.
func Secret(name string) ([]byte, bool, error) {
	buf := make([]byte, 256)
	return readInto(&buf, func(buf []byte) int32 {
		return hostSecretGet(sptr(name), uint32(len(name)), ptr(buf), uint32(len(buf)))
	})
}
