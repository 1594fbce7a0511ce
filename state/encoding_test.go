package state

import (
	"testing"
	"time"

	"github.com/packhost/packhost/runtime"
)

// FuzzWaitsEntry: state ConfigMaps can be edited by anyone allowed to, so entry bytes
// are untrusted. Decoding must never panic, and waits it accepts (in either form) must
// survive encoding and decoding again unchanged (non-minimal length prefixes decode, so
// the bytes may differ).
func FuzzWaitsEntry(f *testing.F) {
	at := time.Unix(1700000000, 5)
	f.Add(encodeWaits("s", []runtime.Wait{{Pack: "p", Flow: "f", Expires: at, Data: []byte("d")}, {Pack: "q", Flow: "g", Expires: at}}))
	f.Add(encodeLegacyWait("s", runtime.Wait{Pack: "p", Flow: "f", Expires: at, Data: []byte("d")}))
	f.Add([]byte{entryWaits, 1, 's', 0})
	f.Add([]byte{entryWaits, 1, 's', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{entryWait, 0, 0, 0})
	f.Add([]byte{entryWait, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{entryValue})
	f.Fuzz(func(t *testing.T, blob []byte) {
		session, ws, err := decodeWaits(blob)
		if err != nil {
			return
		}
		again, ws2, err := decodeWaits(encodeWaits(session, ws))
		if err != nil || again != session || len(ws2) != len(ws) {
			t.Fatalf("%q decoded as %q %+v, which round-trips as %q %+v, %v", blob, session, ws, again, ws2, err)
		}
		for i := range ws {
			a, b := ws[i], ws2[i]
			if a.Pack != b.Pack || a.Flow != b.Flow || !a.Expires.Equal(b.Expires) || string(a.Data) != string(b.Data) {
				t.Fatalf("%q: wait %d decoded as %+v, which round-trips as %+v", blob, i, a, b)
			}
		}
	})
}

// An entry of the one-wait form packhost wrote before a session could park several
// flows reads as that one wait.
func TestLegacyWaitEntryReadsAsOneWait(t *testing.T) {
	w := runtime.Wait{Pack: "survey", Flow: "survey", Expires: time.Unix(1800000000, 7), Data: []byte("Ann\n")}
	session, ws, err := decodeWaits(encodeLegacyWait("prod/acme/ann", w))
	if err != nil || session != "prod/acme/ann" || len(ws) != 1 {
		t.Fatalf("legacy entry: %q %+v %v", session, ws, err)
	}
	if got := ws[0]; got.Pack != w.Pack || got.Flow != w.Flow || !got.Expires.Equal(w.Expires) || string(got.Data) != string(w.Data) {
		t.Fatalf("legacy entry decoded as %+v, want %+v", got, w)
	}
}
