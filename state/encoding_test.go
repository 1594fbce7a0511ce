package state

import (
	"testing"
	"time"
)

// FuzzWaitEntry: state ConfigMaps can be edited by anyone allowed to, so entry bytes
// are untrusted. Decoding must never panic, and a wait it accepts must survive encoding
// and decoding again unchanged (non-minimal length prefixes decode, so the bytes may
// differ).
func FuzzWaitEntry(f *testing.F) {
	f.Add(encodeWait(wait{session: "s", pack: "p", flow: "f", expires: time.Unix(1700000000, 5), data: []byte("d")}))
	f.Add([]byte{entryWait, 0, 0, 0})
	f.Add([]byte{entryWait, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{entryValue})
	f.Fuzz(func(t *testing.T, blob []byte) {
		w, err := decodeWait(blob)
		if err != nil {
			return
		}
		again, err := decodeWait(encodeWait(w))
		if err != nil || again.session != w.session || again.pack != w.pack || again.flow != w.flow ||
			!again.expires.Equal(w.expires) || string(again.data) != string(w.data) {
			t.Fatalf("%q decoded as %+v, which round-trips as %+v, %v", blob, w, again, err)
		}
	})
}
