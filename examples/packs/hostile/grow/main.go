//go:build wasip1

// Command grow is a hostile test pack: its handler allocates without end unless the
// payload is {"ok":true}.
package main

import (
	"bytes"

	"github.com/packhost/packhost/sdk/go/packhost"
)

var hoard [][]byte

func init() {
	packhost.Handle(func(a *packhost.Activity) error {
		if bytes.Equal(a.Payload, []byte(`{"ok":true}`)) {
			return packhost.Reply(a.Payload)
		}
		for {
			hoard = append(hoard, make([]byte, 1<<20))
		}
	})
}

func main() {}
