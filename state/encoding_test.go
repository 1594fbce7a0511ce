package state

import (
	"testing"
	"time"
)

// FuzzWaitEntry: state ConfigMaps can be edited by anyone allowed to, so entry bytes
// are untrusted. The sweep's quick expiry read must agree with the full decoder on
// every input, and what encodeWait writes must decode back.
func FuzzWaitEntry(f *testing.F) {
	f.Add(encodeWait(wait{session: "s", pack: "p", flow: "f", expires: time.Unix(1700000000, 5), data: []byte("d")}))
	f.Add([]byte{entryWait, 0, 0, 0})
	f.Add([]byte{entryWait, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{entryValue})
	f.Fuzz(func(t *testing.T, blob []byte) {
		expires, ok := waitExpiry(blob)
		w, err := decodeWait(blob)
		if ok != (err == nil) {
			t.Fatalf("waitExpiry ok=%v, decodeWait err=%v", ok, err)
		}
		if !ok {
			return
		}
		if !expires.Equal(w.expires) {
			t.Fatalf("waitExpiry %v, decodeWait %v", expires, w.expires)
		}
		again, err := decodeWait(encodeWait(w))
		if err != nil || again.session != w.session || again.pack != w.pack || again.flow != w.flow ||
			!again.expires.Equal(w.expires) || string(again.data) != string(w.data) {
			t.Fatalf("round trip of %+v: %+v, %v", w, again, err)
		}
	})
}
