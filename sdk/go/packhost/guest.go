//go:build wasip1

package packhost

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"
)

//go:wasmimport packhost output
func hostOutput(actionPtr, actionLen, payloadPtr, payloadLen uint32) int32

//go:wasmimport packhost log
func hostLog(level int32, ptr, n uint32)

// Result codes of host functions (runtime/ABI.md).
const (
	codeNotFound = -1
	codeDenied   = -2
	codeFault    = -3
	codeTooLarge = -4
	codeInvalid  = -5
	codeFailed   = -6
)

// Errors host calls return.
var (
	ErrDenied   = errors.New("packhost: capability not granted")
	ErrTooLarge = errors.New("packhost: past a host limit")
	ErrInvalid  = errors.New("packhost: invalid arguments")
	ErrFailed   = errors.New("packhost: host store failed")
)

func codeErr(code int32) error {
	switch code {
	case codeDenied:
		return ErrDenied
	case codeTooLarge:
		return ErrTooLarge
	case codeInvalid, codeFault:
		return ErrInvalid
	case codeFailed:
		return ErrFailed
	}
	return fmt.Errorf("packhost: host error %d", code)
}

func ptr(b []byte) uint32 {
	if len(b) == 0 {
		return 0
	}
	return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}

func sptr(s string) uint32 {
	if len(s) == 0 {
		return 0
	}
	return uint32(uintptr(unsafe.Pointer(unsafe.StringData(s))))
}

var (
	handlers    = map[string]Handler{}
	defaultFunc Handler
	inbuf       []byte
	current     Activity
)

// Handle registers h for every flow without a handler of its own.
func Handle(h Handler) { defaultFunc = h }

// HandleFlow registers h for one flow id.
func HandleFlow(flowID string, h Handler) { handlers[flowID] = h }

// Reply sends a response activity with payload (raw JSON; empty for none).
func Reply(payload []byte) error { return Output("response", payload) }

// Output sends a custom activity with action and payload (raw JSON; empty for none).
func Output(action string, payload []byte) error {
	if code := hostOutput(sptr(action), uint32(len(action)), ptr(payload), uint32(len(payload))); code != 0 {
		return codeErr(code)
	}
	return nil
}

// Log writes a line to the host's log (rate limited).
func Log(msg string) { hostLog(0, sptr(msg), uint32(len(msg))) }

//go:wasmexport packhost_alloc
func alloc(size uint32) uint32 {
	if uint32(cap(inbuf)) < size {
		inbuf = make([]byte, size)
	}
	inbuf = inbuf[:size]
	return ptr(inbuf)
}

//go:wasmexport packhost_handle
func handle(p, n uint32) int32 {
	in := unsafe.Slice((*byte)(unsafe.Pointer(uintptr(p))), n)
	if !decode(in, &current) {
		Log("packhost sdk: malformed input record")
		return 2
	}
	h := handlers[current.FlowID]
	if h == nil {
		h = defaultFunc
	}
	if h == nil {
		Log("packhost sdk: no handler for flow " + current.FlowID)
		return 3
	}
	if err := h(&current); err != nil {
		Log("handler error: " + err.Error())
		return 1
	}
	return 0
}

// numFields is how many input fields the SDK needs; fieldTraceID, added later, is read
// when the host sends it.
const (
	numFields    = 15
	fieldTraceID = 15
)

func decode(in []byte, a *Activity) bool {
	if len(in) < 12 || binary.LittleEndian.Uint32(in) != 1 {
		return false
	}
	flags := binary.LittleEndian.Uint32(in[4:])
	n := binary.LittleEndian.Uint32(in[8:])
	if n < numFields || uint64(len(in)) < 12+8*uint64(n) {
		return false
	}
	var f [fieldTraceID + 1][]byte
	for i := range min(int(n), len(f)) {
		off := binary.LittleEndian.Uint32(in[12+8*i:])
		l := binary.LittleEndian.Uint32(in[16+8*i:])
		if uint64(off)+uint64(l) > uint64(len(in)) {
			return false
		}
		f[i] = in[off : off+l]
	}
	str := func(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
	*a = Activity{
		Kind: str(f[0]), Action: str(f[1]), FlowID: str(f[2]), FlowType: str(f[3]),
		SessionKey: str(f[4]), PackID: str(f[5]), ProviderID: str(f[6]), EndpointID: str(f[7]),
		UserID: str(f[8]), ChannelID: str(f[9]), ConversationID: str(f[10]), SessionID: str(f[11]),
		Payload: f[12], Resumed: flags&1 != 0, WaitData: f[13], Config: f[14],
		TraceID: str(f[fieldTraceID]),
	}
	return true
}
