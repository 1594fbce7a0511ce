//go:build wasip1

package packhost

import "time"

//go:wasmimport packhost state_get
func hostStateGet(keyPtr, keyLen, bufPtr, bufCap uint32) int32

//go:wasmimport packhost state_set
func hostStateSet(keyPtr, keyLen, valPtr, valLen uint32) int32

//go:wasmimport packhost state_delete
func hostStateDelete(keyPtr, keyLen uint32) int32

//go:wasmimport packhost session_wait
func hostSessionWait(dataPtr, dataLen uint32, ttlMs int32) int32

var getbuf = make([]byte, 256)

// StateGet reads key from the revision's state (needs capabilities.state.read). The
// returned slice is valid until the next StateGet.
func StateGet(key string) ([]byte, bool, error) {
	return readInto(&getbuf, func(buf []byte) int32 {
		return hostStateGet(sptr(key), uint32(len(key)), ptr(buf), uint32(len(buf)))
	})
}

// readInto runs a host call of the buffer protocol (runtime/ABI.md): a result larger
// than the buffer asks for a larger one and another call.
func readInto(buf *[]byte, call func([]byte) int32) ([]byte, bool, error) {
	for {
		n := call(*buf)
		switch {
		case n == codeNotFound:
			return nil, false, nil
		case n < 0:
			return nil, false, codeErr(n)
		case int(n) > len(*buf):
			*buf = make([]byte, n)
		default:
			return (*buf)[:n], true, nil
		}
	}
}

// StateSet writes key (needs capabilities.state.write). It is committed only if the
// activity succeeds.
func StateSet(key string, value []byte) error {
	if code := hostStateSet(sptr(key), uint32(len(key)), ptr(value), uint32(len(value))); code != 0 {
		return codeErr(code)
	}
	return nil
}

// StateDelete deletes key (needs capabilities.state.write).
func StateDelete(key string) error {
	if code := hostStateDelete(sptr(key), uint32(len(key))); code != 0 {
		return codeErr(code)
	}
	return nil
}

// Wait parks this flow for the session (needs capabilities.session): the session's next
// activity for this flow resumes it with Resumed set and WaitData = data; the session's
// other flows keep their own waits. ttl 0 takes the host default. It fails when the
// session already has 16 other flows parked or data would take the session's parked
// data past 256 KiB.
func Wait(data []byte, ttl time.Duration) error {
	if code := hostSessionWait(ptr(data), uint32(len(data)), int32(ttl/time.Millisecond)); code != 0 {
		return codeErr(code)
	}
	return nil
}
