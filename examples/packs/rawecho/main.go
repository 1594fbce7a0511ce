//go:build wasip1

// Command rawecho is the echo pack written against the ABI directly, without the SDK:
// the baseline that shows what the SDK itself costs.
package main

import (
	"encoding/binary"
	"unsafe"
)

//go:wasmimport packhost output
func output(actionPtr, actionLen, payloadPtr, payloadLen uint32) int32

var inbuf []byte

//go:wasmexport packhost_alloc
func alloc(size uint32) uint32 {
	if uint32(cap(inbuf)) < size {
		inbuf = make([]byte, size)
	}
	return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(inbuf))))
}

// payloadField is the index of the payload in the input record's field table.
const payloadField = 12

//go:wasmexport packhost_handle
func handle(p, n uint32) int32 {
	in := unsafe.Slice((*byte)(unsafe.Pointer(uintptr(p))), n)
	off := binary.LittleEndian.Uint32(in[12+8*payloadField:])
	l := binary.LittleEndian.Uint32(in[16+8*payloadField:])
	return output(0, 0, p+off, l)
}

func main() {}
