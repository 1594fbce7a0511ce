//go:build wasip1

// Command trap is a hostile test pack: its handler panics, unless the payload is
// {"ok":true}, so a test can see the revision keep serving after a trap.
package main

import (
	"bytes"

	"github.com/packhost/packhost/sdk/go/packhost"
)

func init() {
	packhost.Handle(func(a *packhost.Activity) error {
		if bytes.Equal(a.Payload, []byte(`{"ok":true}`)) {
			return packhost.Reply(a.Payload)
		}
		panic("trap pack: deliberate panic")
	})
}

func main() {}
