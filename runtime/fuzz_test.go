package runtime_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/packhost/packhost/runtime"
)

// FuzzParseActivity: any bytes are either refused with ErrInvalidActivity or parse to an
// activity that survives a round trip unchanged.
func FuzzParseActivity(f *testing.F) {
	f.Add(activity1KiB())
	f.Add([]byte(`{"kind":"custom","action":"x","payload":[1,{"a":null}]}`))
	f.Add([]byte(`{"kind":"message","payload":"\u0000"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := runtime.ParseActivity(data)
		if err != nil {
			if !errors.Is(err, runtime.ErrInvalidActivity) {
				t.Fatalf("error does not wrap ErrInvalidActivity: %v", err)
			}
			return
		}
		if err := a.Validate(); err != nil {
			t.Fatalf("parsed activity fails Validate: %v", err)
		}
		again, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		b, err := runtime.ParseActivity(again)
		if err != nil {
			t.Fatalf("round trip refused: %v\n%s", err, again)
		}
		if runtime.SessionKey("e", "t", a) != runtime.SessionKey("e", "t", b) || a.Kind != b.Kind || a.Action != b.Action {
			t.Fatalf("round trip changed the activity: %+v vs %+v", a, b)
		}
	})
}

// FuzzHostBounds hands every host function arbitrary pointers and lengths, as a hostile
// guest would, in an activity that already made its host hold some bytes: the host never
// panics, a range outside guest memory is refused with a negative code and no output,
// and the activity's host bytes never pass its budget without the call being ended with
// ErrResourceLimit.
func FuzzHostBounds(f *testing.F) {
	e := newEngine(f)
	rev := load(f, e, []revOpt{func(c *runtime.RevisionConfig) { c.Limits.MaxHostBytes = 64 << 10 }}, "counter")
	names := []string{"output", "log", "state_get", "state_set", "state_delete", "session_wait", "secret_get"}
	f.Add(uint8(0), uint32(0), uint32(0), uint32(0), uint32(0), uint32(0))
	f.Add(uint8(0), uint32(0), uint32(0), uint32(0xFFFFFF00), uint32(200), uint32(0))
	f.Add(uint8(2), uint32(0xFFFFFFFF), uint32(1), uint32(0), uint32(16), uint32(0))
	f.Add(uint8(3), uint32(1024), uint32(8), uint32(1<<30), uint32(1<<31), uint32(0))
	f.Add(uint8(3), uint32(1024), uint32(8), uint32(2048), uint32(4096), uint32(62<<10))
	f.Add(uint8(5), uint32(1024), uint32(8000), uint32(0), uint32(0), uint32(60<<10))
	f.Fuzz(func(t *testing.T, fn uint8, a, b, c, d, used uint32) {
		name := names[int(fn)%len(names)]
		budget := rev.MaxHostBytes()
		res, err := rev.HostCall(context.Background(), name, []uint64{uint64(a), uint64(b), uint64(c), uint64(d)}, int(used)%budget)
		if err != nil {
			t.Fatal(err)
		}
		if res.Stopped != nil {
			if !errors.Is(res.Stopped, runtime.ErrResourceLimit) || res.HostBytes <= budget {
				t.Fatalf("%s stopped with %v at %d of %d host bytes", name, res.Stopped, res.HostBytes, budget)
			}
			return
		}
		if res.HostBytes > budget {
			t.Fatalf("%s left the activity holding %d host bytes, past its budget of %d", name, res.HostBytes, budget)
		}
		code, size, outputs := res.Code, res.MemSize, res.Outputs
		inRange := func(ptr, n uint32) bool { return n == 0 || uint64(ptr)+uint64(n) <= uint64(size) }
		switch name {
		case "output":
			if (!inRange(a, b) || !inRange(c, d)) && (code >= 0 || outputs != 0) {
				t.Fatalf("output(%#x,%d,%#x,%d) outside %d bytes: code %d, %d outputs", a, b, c, d, size, code, outputs)
			}
		case "state_set":
			if (!inRange(a, b) || !inRange(c, d)) && code >= 0 {
				t.Fatalf("state_set(%#x,%d,%#x,%d) outside %d bytes accepted", a, b, c, d, size)
			}
		case "state_get", "state_delete", "secret_get":
			if !inRange(a, b) && code >= 0 {
				t.Fatalf("%s key (%#x,%d) outside %d bytes accepted", name, a, b, size)
			}
		}
	})
}

// FuzzParseFastMatchesEncodingJSON: whenever the fast decoder accepts input, encoding/json
// accepts it too and decodes the same activity.
func FuzzParseFastMatchesEncodingJSON(f *testing.F) {
	f.Add(activity1KiB())
	f.Add([]byte(`{"kind":"message","user_id":"u","payload":{"a":[1,"x\"y"]}}`))
	f.Add([]byte(`{"kind":"message","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","trace_id":"x"}`))
	f.Add([]byte(` { "kind" : "custom" , "action":"go", "payload": 12.5e3 } `))
	f.Add([]byte(`{"kind":"message","payload":"str","payload":1}`))
	f.Add([]byte(`{"kind":"message","payload":null}`))
	f.Add([]byte(`{"kind":"message","payload":[}`))
	f.Add([]byte(`{}`))
	f.Add([]byte("{\"kind\":\"message-with-a-long-name\",\"user_id\":\"abcdefgh\x7fijklmnop\",\"payload\":\"abcdefghijklmn\\\"opq\"}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fast, ok := runtime.ParseFast(data)
		if !ok {
			return
		}
		ref := runtime.Activity{}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&ref); err != nil || dec.More() {
			t.Fatalf("fast accepted what encoding/json refuses (%v): %q", err, data)
		}
		fastJSON, _ := json.Marshal(fast)
		refJSON, _ := json.Marshal(ref)
		if !bytes.Equal(fastJSON, refJSON) || !bytes.Equal(fast.Payload, ref.Payload) {
			t.Fatalf("decoders differ on %q:\nfast %s\nref  %s", data, fastJSON, refJSON)
		}
	})
}
