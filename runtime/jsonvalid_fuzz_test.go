package runtime_test

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/packhost/packhost/runtime"
)

// strictJSON is the reference the host's validator follows: one JSON value
// (encoding/json.Valid) whose bytes are valid UTF-8 (utf8.Valid), so a strict JSON
// client can parse whatever the host accepted or sends on.
func strictJSON(data []byte) bool { return json.Valid(data) && utf8.Valid(data) }

// FuzzValidJSONMatchesStrictReference: the host's validator agrees with
// encoding/json.Valid plus utf8.Valid on any bytes.
func FuzzValidJSONMatchesStrictReference(f *testing.F) {
	for _, s := range []string{`{}`, `[]`, `{"a":[1,2.5e-3,-0,true,false,null,"x\u00e9\n"]}`, `[1,]`, `{"a"}`, `01`, `-`, `1.`, `1e`,
		`"\u12"`, `"\x"`, "\"a\tb\"", ` [ { } , [ ] ] `, `{"a":1,}`, `[[[[]]]]`, `"abc`, `tru`, `nul`, `{"a":1 "b":2}`,
		// Escaped lone surrogates are JSON (RFC 8259) and ASCII: accepted.
		`"\ud800"`, `"\udc00\ud800"`,
		// Raw bytes that are not UTF-8: a lone continuation byte, a truncated sequence,
		// an overlong encoding, an encoded surrogate (U+D800), past U+10FFFF, in keys too.
		"\"\x80\"", "\"\xc3\"", "\"\xc0\x80\"", "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"", "{\"\xff\":1}",
		"\"\xe2\x82\xac\xf0\x9f\x98\x80\"", "[\"abcdefgh\xc3\xa9ijklmnopq\xed\xa0\x80rstuvwxy\"]"} {
		f.Add([]byte(s))
	}
	// Long strings reach the eight-bytes-at-a-time scan, with what stops it at odd places.
	f.Add([]byte("[\"abcdefghijklmno\\\"pqrstuvw\x01xyz\", \"abcdefg\x7f\xff\xc3\xa9hijklmnopq\"]"))
	f.Add([]byte(`{"kind":"message","user_id":"` + strings.Repeat("é", 40) + `","payload":{"text":"` + strings.Repeat("x", 900) + `"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if got, want := runtime.ValidJSON(data), strictJSON(data); got != want {
			t.Fatalf("validJSON(%q) = %v, json.Valid && utf8.Valid says %v", data, got, want)
		}
	})
}

// The validator refuses every kind of byte sequence that is not UTF-8, wherever it sits.
func TestValidJSONRefusesInvalidUTF8(t *testing.T) {
	for _, tc := range []struct {
		name, data string
		valid      bool
	}{
		{"two-byte", "\"caf\xc3\xa9\"", true},
		{"four-byte", "\"\xf0\x9f\x98\x80\"", true},
		{"escaped lone surrogate", `"\ud800"`, true},
		{"DEL", "\"\x7f\"", true},
		{"lone continuation byte", "\"\x80\"", false},
		{"truncated sequence", "\"\xe2\x82\"", false},
		{"overlong NUL", "\"\xc0\x80\"", false},
		{"encoded surrogate", "\"\xed\xa0\x80\"", false},
		{"past U+10FFFF", "\"\xf4\x90\x80\x80\"", false},
		{"0xff", "\"\xff\"", false},
		{"in a key", "{\"\xff\":1}", false},
		{"after the fast scan", "\"" + strings.Repeat("a", 17) + "\xff" + strings.Repeat("b", 17) + "\"", false},
		{"at the end of a long string", "\"" + strings.Repeat("a", 16) + "\xc3\"", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := runtime.ValidJSON([]byte(tc.data)); got != tc.valid || got != strictJSON([]byte(tc.data)) {
				t.Fatalf("validJSON(%q) = %v, want %v", tc.data, got, tc.valid)
			}
		})
	}
}

func TestValidJSONDepthLimit(t *testing.T) {
	for _, depth := range []int{9999, 10000, 10001, 10002} {
		data := []byte(strings.Repeat("[", depth) + strings.Repeat("]", depth))
		if got, want := runtime.ValidJSON(data), json.Valid(data); got != want {
			t.Errorf("depth %d: validJSON %v, encoding/json %v", depth, got, want)
		}
		obj := []byte(strings.Repeat(`{"a":`, depth) + "1" + strings.Repeat("}", depth))
		if got, want := runtime.ValidJSON(obj), json.Valid(obj); got != want {
			t.Errorf("object depth %d: validJSON %v, encoding/json %v", depth, got, want)
		}
	}
}
