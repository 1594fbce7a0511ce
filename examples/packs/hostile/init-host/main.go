//go:build wasip1

// Command init-host is a hostile test pack: its start function (Go's package init) reads
// a secret many times over, as a careless pack loads its key before any activity does.
// Nothing is in scope while an instance starts, so the host must refuse the reads and
// keep nothing for them. Its handler replies what the start function got:
// {"secret_reads":<n>,"last":"<value, or the error>"}.
package main

import (
	"encoding/json"

	"github.com/packhost/packhost/sdk/go/packhost"
)

// reads is how often the start function reads the secret.
const reads = 64

var (
	got  int
	last string
)

func init() {
	for range reads {
		v, ok, err := packhost.Secret("signing-key")
		switch {
		case err != nil:
			last = err.Error()
		case ok:
			got++
			last = string(v)
		}
	}
	packhost.Handle(func(*packhost.Activity) error {
		out, _ := json.Marshal(map[string]any{"secret_reads": got, "last": last})
		return packhost.Reply(out)
	})
}

func main() {}
