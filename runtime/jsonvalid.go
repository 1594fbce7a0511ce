package runtime

import (
	"encoding/binary"
	"unicode/utf8"
)

// maxJSONDepth is encoding/json's nesting limit, kept so that both agree.
const maxJSONDepth = 10000

// validJSON reports whether data is one JSON value whose bytes are valid UTF-8: exactly
// encoding/json.Valid(data) && utf8.Valid(data) (FuzzValidJSONMatchesStrictReference),
// in one pass without encoding/json's per-byte state functions. The host validates
// every activity payload and every guest output with it, so what it passes on is JSON
// that a strict client can parse.
//
// Bytes that are not UTF-8 (a stray continuation byte, a truncated or overlong
// sequence, an encoded surrogate such as ED A0 80, a code point past U+10FFFF) are
// refused; they can only sit inside strings, since JSON outside strings is ASCII. An
// escaped lone surrogate such as "\ud800" is accepted: it is valid JSON (RFC 8259 §7)
// and ASCII on the wire, and decoders that meet it substitute U+FFFD (encoding/json,
// and so the host's own activity parser) or keep the code unit.
func validJSON(data []byte) bool {
	i := valueEnd(data, skipSpace(data, 0))
	return i >= 0 && skipSpace(data, i) == len(data)
}

// valueEnd returns the index after the valid JSON value that starts at i, or -1 when
// there is none.
func valueEnd(data []byte, i int) int {
	var stack []byte // open containers: '{' or '['
	for {
		// A value.
		if i >= len(data) {
			return -1
		}
		switch c := data[i]; {
		case c == '{' || c == '[':
			if len(stack) >= maxJSONDepth {
				return -1
			}
			stack = append(stack, c)
			i = skipSpace(data, i+1)
			if i < len(data) && data[i] == c+2 { // '}' is '{'+2, ']' is '['+2
				stack = stack[:len(stack)-1]
				i++
				break
			}
			if c == '{' {
				if i = objectKey(data, i); i < 0 {
					return -1
				}
			}
			continue
		case c == '"':
			if i = stringEnd(data, i); i < 0 {
				return -1
			}
		case c == '-' || (c >= '0' && c <= '9'):
			if i = numberEnd(data, i); i < 0 {
				return -1
			}
		case c == 't':
			if i = literal(data, i, "true"); i < 0 {
				return -1
			}
		case c == 'f':
			if i = literal(data, i, "false"); i < 0 {
				return -1
			}
		case c == 'n':
			if i = literal(data, i, "null"); i < 0 {
				return -1
			}
		default:
			return -1
		}
		// After a value: close containers or move to the next element.
		for {
			if len(stack) == 0 {
				return i
			}
			if i = skipSpace(data, i); i >= len(data) {
				return -1
			}
			top := stack[len(stack)-1]
			switch data[i] {
			case top + 2:
				stack = stack[:len(stack)-1]
				i++
				continue
			case ',':
				i = skipSpace(data, i+1)
				if top == '{' {
					if i = objectKey(data, i); i < 0 {
						return -1
					}
				}
			default:
				return -1
			}
			break
		}
	}
}

// objectKey reads `"key" :` at i and returns the index of the value after it.
func objectKey(data []byte, i int) int {
	if i >= len(data) || data[i] != '"' {
		return -1
	}
	if i = stringEnd(data, i); i < 0 {
		return -1
	}
	i = skipSpace(data, i)
	if i >= len(data) || data[i] != ':' {
		return -1
	}
	return skipSpace(data, i+1)
}

// stringEnd returns the index after the JSON string at i, or -1, also when the string's
// bytes are not valid UTF-8.
func stringEnd(data []byte, i int) int {
	start := i + 1
	for i++; i < len(data); i++ {
		i = plainRun(data, i)
		if i >= len(data) {
			break
		}
		switch c := data[i]; {
		case c == '"':
			// Escapes are ASCII, so the raw bytes between the quotes are what must be
			// UTF-8; utf8.Valid goes eight bytes at a time over ASCII.
			if !utf8.Valid(data[start:i]) {
				return -1
			}
			return i + 1
		case c < 0x20:
			return -1
		case c == '\\':
			i++
			if i >= len(data) {
				return -1
			}
			switch data[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(data) {
					return -1
				}
				for _, h := range data[i+1 : i+5] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return -1
					}
				}
				i += 4
			default:
				return -1
			}
		}
	}
	return -1
}

// Bytes repeated in every lane of a uint64, for scanning eight bytes at a time.
const (
	lanes1    = 0x0101010101010101
	lanesHigh = 0x8080808080808080
)

// plainRun skips, eight bytes at a time, bytes that need no attention inside a JSON
// string (anything but '"', '\\' and control characters) and returns the index of the
// first group of eight that holds one, or of the last few bytes: the caller goes on
// byte by byte from there.
func plainRun(data []byte, i int) int { return wordRun(data, i, 0) }

// asciiRun is plainRun that also stops at bytes 0x7f and above.
func asciiRun(data []byte, i int) int { return wordRun(data, i, lanesHigh) }

// wordRun is plainRun, and asciiRun when nonASCII is lanesHigh.
func wordRun(data []byte, i int, nonASCII uint64) int {
	for ; i+8 <= len(data); i += 8 {
		x := binary.LittleEndian.Uint64(data[i:])
		q, b := x^(lanes1*'"'), x^(lanes1*'\\')
		// (v - 0x01..) &^ v has a lane's high bit set where v's lane is zero, and
		// (x - 0x20..) &^ x where x's lane is below 0x20; a borrow can flag lanes above
		// a real match, never a group without one, which is all this needs. (x + 0x01..)
		// | x has it set where x's lane is 0x7f or above.
		if ((x-lanes1*0x20)&^x|(q-lanes1)&^q|(b-lanes1)&^b|((x+lanes1)|x)&nonASCII)&lanesHigh != 0 {
			return i
		}
	}
	return i
}

func digits(data []byte, i int) int {
	for i < len(data) && data[i] >= '0' && data[i] <= '9' {
		i++
	}
	return i
}

// numberEnd returns the index after the JSON number at i, or -1.
func numberEnd(data []byte, i int) int {
	if data[i] == '-' {
		i++
	}
	switch {
	case i < len(data) && data[i] == '0':
		i++
	case i < len(data) && data[i] >= '1' && data[i] <= '9':
		i = digits(data, i+1)
	default:
		return -1
	}
	if i < len(data) && data[i] == '.' {
		j := digits(data, i+1)
		if j == i+1 {
			return -1
		}
		i = j
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		j := digits(data, i)
		if j == i {
			return -1
		}
		i = j
	}
	return i
}

func literal(data []byte, i int, word string) int {
	if len(data)-i < len(word) || string(data[i:i+len(word)]) != word {
		return -1
	}
	return i + len(word)
}
