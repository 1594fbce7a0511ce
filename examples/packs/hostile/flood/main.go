//go:build wasip1

// Command flood is a hostile test pack: in one activity it writes 800 distinct keys of
// 256 KiB each (200 MiB the host would hold until the commit), unless the payload is
// {"ok":true}.
package main

import (
	"bytes"
	"strconv"

	"github.com/packhost/packhost/sdk/go/packhost"
)

func init() {
	value := bytes.Repeat([]byte("x"), 256<<10)
	packhost.Handle(func(a *packhost.Activity) error {
		if bytes.Equal(a.Payload, []byte(`{"ok":true}`)) {
			return packhost.Reply(a.Payload)
		}
		for i := range 800 {
			if err := packhost.StateSet("k"+strconv.Itoa(i), value); err != nil {
				return err
			}
		}
		return packhost.Reply(a.Payload)
	})
}

func main() {}
