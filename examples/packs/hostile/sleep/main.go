//go:build wasip1

// Command sleep is a hostile test pack: its handler sleeps for an hour in WASI
// (poll_oneoff on a clock) unless the payload is {"ok":true}.
package main

import (
	"bytes"
	"time"

	"github.com/packhost/packhost/sdk/go/packhost"
)

func init() {
	packhost.Handle(func(a *packhost.Activity) error {
		if !bytes.Equal(a.Payload, []byte(`{"ok":true}`)) {
			time.Sleep(time.Hour)
		}
		return packhost.Reply(a.Payload)
	})
}

func main() {}
