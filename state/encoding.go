package state

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// Entry keys in a shard's binaryData are derived from a hash of what they name, so any
// guest key (up to 512 arbitrary bytes) fits ConfigMap key rules; the entry's value
// carries the original name, so it round-trips exactly and a hash collision or a foreign
// entry is detected rather than trusted.
const (
	valuePrefix = "v."
	waitPrefix  = "w."
	hashChars   = 40 // 160 bits of SHA-256, hex

	entryValue byte = 1
	entryWait  byte = 2
)

// errCorrupt marks an entry whose bytes are not what packhost writes.
var errCorrupt = errors.New("corrupt state entry")

func digest(parts ...string) ([32]byte, string) {
	h := sha256.New()
	for _, p := range parts {
		var n [binary.MaxVarintLen64]byte
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(p)))])
		h.Write([]byte(p))
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum, hex.EncodeToString(sum[:])[:hashChars]
}

// valueKey is the binaryData key of a state value and the shard it lives in.
func valueKey(pack, name string, shards int) (string, int) {
	sum, h := digest(pack, name)
	return valuePrefix + h, shardOf(sum, shards)
}

// waitKey is the binaryData key of a session's wait and its shard.
func waitKey(session string, shards int) (string, int) {
	sum, h := digest(session)
	return waitPrefix + h, shardOf(sum, shards)
}

func shardOf(sum [32]byte, shards int) int {
	return int(binary.BigEndian.Uint32(sum[:4]) % uint32(shards))
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// readField reads what appendString wrote: the field, sharing b's bytes, and the rest.
func readField(b []byte) (field, rest []byte, ok bool) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, nil, false
	}
	return b[k : k+int(n)], b[k+int(n):], true
}

func encodeValue(pack, name string, value []byte) []byte {
	b := make([]byte, 0, 1+len(pack)+len(name)+len(value)+6)
	b = append(b, entryValue)
	b = appendString(b, pack)
	b = appendString(b, name)
	return append(b, value...)
}

// decodeValue checks that blob is the value of (pack, name) and returns it.
func decodeValue(blob []byte, pack, name string) ([]byte, error) {
	if len(blob) == 0 || blob[0] != entryValue {
		return nil, fmt.Errorf("%w: not a value entry", errCorrupt)
	}
	p, rest, ok := readField(blob[1:])
	n, rest, ok2 := readField(rest)
	if !ok || !ok2 {
		return nil, errCorrupt
	}
	if string(p) != pack || string(n) != name {
		return nil, fmt.Errorf("%w: entry holds key %q of pack %q, not %q of %q", errCorrupt, n, p, name, pack)
	}
	return rest, nil
}

type wait struct {
	session string
	pack    string
	flow    string
	expires time.Time
	data    []byte
}

func encodeWait(w wait) []byte {
	b := make([]byte, 0, 32+len(w.session)+len(w.pack)+len(w.flow)+len(w.data))
	b = append(b, entryWait)
	b = appendString(b, w.session)
	b = appendString(b, w.pack)
	b = appendString(b, w.flow)
	b = binary.BigEndian.AppendUint64(b, uint64(w.expires.UnixNano()))
	return append(b, w.data...)
}

func decodeWait(blob []byte) (wait, error) {
	f, ok := splitWait(blob)
	if !ok {
		return wait{}, fmt.Errorf("%w: not a wait entry", errCorrupt)
	}
	return wait{session: string(f.session), pack: string(f.pack), flow: string(f.flow), expires: f.expires, data: f.data}, nil
}

// waitFields are a wait entry's parts, sharing the entry's bytes.
type waitFields struct {
	session, pack, flow []byte
	expires             time.Time
	data                []byte
}

// splitWait cuts a wait entry into its fields without copying them.
func splitWait(blob []byte) (waitFields, bool) {
	var f waitFields
	if len(blob) == 0 || blob[0] != entryWait {
		return f, false
	}
	rest := blob[1:]
	for _, field := range []*[]byte{&f.session, &f.pack, &f.flow} {
		var ok bool
		if *field, rest, ok = readField(rest); !ok {
			return f, false
		}
	}
	if len(rest) < 8 {
		return f, false
	}
	f.expires = time.Unix(0, int64(binary.BigEndian.Uint64(rest)))
	f.data = rest[8:]
	return f, true
}
