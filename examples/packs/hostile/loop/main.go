//go:build wasip1

// Command loop is a hostile test pack: its handler never returns unless the payload is
// {"ok":true}.
package main

import (
	"bytes"

	"github.com/packhost/packhost/sdk/go/packhost"
)

var sink int

func init() {
	packhost.Handle(func(a *packhost.Activity) error {
		if bytes.Equal(a.Payload, []byte(`{"ok":true}`)) {
			return packhost.Reply(a.Payload)
		}
		for i := 0; ; i++ {
			sink += i
		}
	})
}

func main() {}
