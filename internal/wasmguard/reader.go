package wasmguard

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// reader decodes the binary format. The first error sticks: every later read returns
// zero values, so a caller checks err once after a run of reads.
type reader struct {
	b   []byte
	off int
	err error
}

var errTruncated = errors.New("unexpected end")

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("at byte %d: %s", r.off, fmt.Sprintf(format, args...))
	}
}

func (r *reader) done() bool { return r.err != nil || r.off >= len(r.b) }

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if r.off >= len(r.b) {
		r.fail("%v", errTruncated)
		return 0
	}
	c := r.b[r.off]
	r.off++
	return c
}

func (r *reader) bytes(n uint32) []byte {
	if r.err != nil {
		return nil
	}
	if uint64(n) > uint64(len(r.b)-r.off) {
		r.fail("%v: %d bytes wanted, %d left", errTruncated, n, len(r.b)-r.off)
		return nil
	}
	s := r.b[r.off : r.off+int(n)]
	r.off += int(n)
	return s
}

// u32 reads an unsigned LEB128 of at most 5 bytes.
func (r *reader) u32() uint32 {
	var v uint64
	for i := 0; ; i++ {
		c := r.byte()
		if r.err != nil {
			return 0
		}
		if i == 4 && c > 0x0f {
			r.fail("u32 too large")
			return 0
		}
		v |= uint64(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			return uint32(v)
		}
	}
}

// signed reads a signed LEB128 of at most bits bits and returns its value.
func (r *reader) signed(bits int) int64 {
	var v int64
	shift := 0
	maxBytes := (bits + 6) / 7
	for i := 0; ; i++ {
		c := r.byte()
		if r.err != nil {
			return 0
		}
		if i == maxBytes-1 {
			// The last byte holds the remaining bits; the rest must extend the sign.
			used := bits - 7*i
			rest := int8(c<<1) >> uint(used+1) // the unused bits, sign-extended
			if c&0x80 != 0 || (rest != 0 && rest != -1) {
				r.fail("s%d too large", bits)
				return 0
			}
		}
		v |= int64(c&0x7f) << shift
		shift += 7
		if c&0x80 == 0 {
			if shift < 64 && c&0x40 != 0 {
				v |= -1 << shift
			}
			return v
		}
	}
}

// count reads a vector's length, which cannot exceed the bytes left (each element takes
// at least one): a decoder that allocates by the declared count would otherwise let a
// tiny module ask for gigabytes (wazero v1.12 allocates 5 GiB for a 15-byte data section).
func (r *reader) count() uint32 {
	n := r.u32()
	if r.err == nil && uint64(n) > uint64(len(r.b)-r.off) {
		r.fail("a vector of %d elements in %d bytes", n, len(r.b)-r.off)
		return 0
	}
	return n
}

func (r *reader) name() string {
	n := r.u32()
	return string(r.bytes(n))
}

// limits reads a table or memory's limits.
func (r *reader) limits() (min uint32, max uint32, hasMax bool) {
	switch flag := r.byte(); flag {
	case 0x00:
		return r.u32(), 0, false
	case 0x01:
		return r.u32(), r.u32(), true
	default:
		r.fail("limits flag %#x (shared or 64-bit memories) is not supported", flag)
		return 0, 0, false
	}
}

func appendU32(b []byte, v uint32) []byte { return binary.AppendUvarint(b, uint64(v)) }

func appendName(b []byte, s string) []byte {
	b = appendU32(b, uint32(len(s)))
	return append(b, s...)
}

// appendPaddedI32 appends a non-negative i32 as a 5-byte signed LEB128, so it can be
// patched in place once its value is known (the binary format allows padded encodings).
func appendPaddedI32(b []byte, v int32) []byte {
	return putPaddedI32(append(b, 0, 0, 0, 0, 0), len(b), v)
}

func putPaddedI32(b []byte, at int, v int32) []byte {
	u := uint32(v)
	for i := range 4 {
		b[at+i] = byte(u>>(7*i))&0x7f | 0x80
	}
	b[at+4] = byte(u>>28) & 0x07
	return b
}
