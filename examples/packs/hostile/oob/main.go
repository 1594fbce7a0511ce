//go:build wasip1

// Command oob is a hostile test pack: it hands the host pointers outside its memory.
// The payload picks the attack: {"attack":"output"}, "state-key", "state-value",
// "huge-length"; {"ok":true} replies normally.
package main

import (
	"bytes"

	"github.com/packhost/packhost/sdk/go/packhost"
)

//go:wasmimport packhost output
func output(actionPtr, actionLen, payloadPtr, payloadLen uint32) int32

//go:wasmimport packhost state_set
func stateSet(keyPtr, keyLen, valPtr, valLen uint32) int32

//go:wasmimport packhost state_get
func stateGet(keyPtr, keyLen, bufPtr, bufCap uint32) int32

const far = 0xFFFF_FF00

func init() {
	packhost.Handle(func(a *packhost.Activity) error {
		switch {
		case bytes.Contains(a.Payload, []byte(`"output"`)):
			output(0, 0, far, 200)
		case bytes.Contains(a.Payload, []byte(`"state-key"`)):
			stateSet(far, 10, 0, 0)
		case bytes.Contains(a.Payload, []byte(`"state-value"`)):
			k := []byte("k")
			stateSet(uint32(uintptrOf(k)), 1, far, 100)
		case bytes.Contains(a.Payload, []byte(`"state-buffer"`)):
			k := []byte("k")
			stateSet(uint32(uintptrOf(k)), 1, uint32(uintptrOf(k)), 1)
			stateGet(uint32(uintptrOf(k)), 1, far, 1<<20)
		case bytes.Contains(a.Payload, []byte(`"huge-length"`)):
			output(0, 0, 0, 0xFFFF_FFFF)
		default:
			return packhost.Reply(a.Payload)
		}
		return nil
	})
}

func main() {}
