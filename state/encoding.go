package state

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/packhost/packhost/runtime"
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
	// entryWait is the one-wait form a session's waits had before entryWaits.
	entryWait byte = 2
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

// waitKey is the binaryData key of a session's waits and its shard.
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

// A session's waits are one entry, so that which flows a session has parked is one
// read of a transaction, and two activities that park or resume flows of one session
// serialize on it: entryWaits, the session, the number of waits, then for each its
// pack, flow, expiry (Unix nanoseconds, big-endian) and data. packhost kept one wait per
// session before (entryWait: session, pack, flow, expiry, then the data to the end);
// such an entry is still read, as a session with that one wait parked, and the
// session's next turn writes its waits back in the new form.
const entryWaits byte = 5

func encodeWaits(session string, ws []runtime.Wait) []byte {
	n := 16 + len(session)
	for _, w := range ws {
		n += 24 + len(w.Pack) + len(w.Flow) + len(w.Data)
	}
	b := make([]byte, 0, n)
	b = append(b, entryWaits)
	b = appendString(b, session)
	b = binary.AppendUvarint(b, uint64(len(ws)))
	for _, w := range ws {
		b = appendString(b, w.Pack)
		b = appendString(b, w.Flow)
		b = binary.BigEndian.AppendUint64(b, uint64(w.Expires.UnixNano()))
		b = appendString(b, string(w.Data))
	}
	return b
}

// decodeWaits returns the session of a waits entry and its waits, whose data shares
// blob's bytes.
func decodeWaits(blob []byte) (string, []runtime.Wait, error) {
	session, fields, ok := splitWaits(blob)
	if !ok {
		return "", nil, fmt.Errorf("%w: not a waits entry", errCorrupt)
	}
	ws := make([]runtime.Wait, len(fields))
	for i, f := range fields {
		ws[i] = runtime.Wait{Pack: string(f.pack), Flow: string(f.flow), Data: f.data, Expires: f.expires}
	}
	return string(session), ws, nil
}

// waitFields are one wait's parts, sharing the entry's bytes.
type waitFields struct {
	pack, flow []byte
	expires    time.Time
	data       []byte
}

// splitWaits cuts a waits entry, of either form, into its session and waits without
// copying them.
func splitWaits(blob []byte) (session []byte, ws []waitFields, ok bool) {
	if len(blob) == 0 || (blob[0] != entryWaits && blob[0] != entryWait) {
		return nil, nil, false
	}
	session, rest, ok := readField(blob[1:])
	if !ok {
		return nil, nil, false
	}
	if blob[0] == entryWait {
		var f waitFields
		if f.pack, rest, ok = readField(rest); !ok {
			return nil, nil, false
		}
		if f.flow, rest, ok = readField(rest); !ok || len(rest) < 8 {
			return nil, nil, false
		}
		f.expires, f.data = time.Unix(0, int64(binary.BigEndian.Uint64(rest))), rest[8:]
		return session, []waitFields{f}, true
	}
	n, k := binary.Uvarint(rest)
	if k <= 0 {
		return nil, nil, false
	}
	rest = rest[k:]
	for ; n > 0; n-- { // each wait takes bytes, so a false count ends with them
		var f waitFields
		if f.pack, rest, ok = readField(rest); !ok {
			return nil, nil, false
		}
		if f.flow, rest, ok = readField(rest); !ok || len(rest) < 8 {
			return nil, nil, false
		}
		f.expires = time.Unix(0, int64(binary.BigEndian.Uint64(rest)))
		if f.data, rest, ok = readField(rest[8:]); !ok {
			return nil, nil, false
		}
		ws = append(ws, f)
	}
	return session, ws, len(rest) == 0
}

// Cross-shard transactions (see Commits in the package doc) keep two more kinds of
// entries: an intent ("x.<txn>") on every shard but the primary, and a record
// ("t.<txn>") on the primary, which decides the transaction.
const (
	intentPrefix = "x."
	recordPrefix = "t."

	entryIntent byte = 3
	entryRecord byte = 4
)

// txnStatus is what a cross-shard transaction's record says.
type txnStatus byte

const (
	pending   txnStatus = 0 // no record: not decided yet
	committed txnStatus = 1
	aborted   txnStatus = 2
)

// intent is one cross-shard transaction's share of a secondary shard: the entries it
// read there (locked against writers) and the writes it will apply there once its
// record on the primary says committed. A nil write deletes the entry.
type intent struct {
	id      string
	primary int
	created time.Time
	reads   map[string]bool
	writes  map[string][]byte
}

func encodeIntent(in *intent) []byte {
	b := []byte{entryIntent}
	b = appendString(b, in.id)
	b = binary.AppendUvarint(b, uint64(in.primary))
	b = binary.BigEndian.AppendUint64(b, uint64(in.created.UnixNano()))
	b = binary.AppendUvarint(b, uint64(len(in.reads)))
	for k := range in.reads {
		b = appendString(b, k)
	}
	return appendWrites(b, in.writes)
}

// appendWrites encodes a set of writes (a nil value deletes its entry), as intents and
// journal records carry them.
func appendWrites(b []byte, writes map[string][]byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(writes)))
	for k, v := range writes {
		b = appendString(b, k)
		if v == nil {
			b = append(b, 0)
			continue
		}
		b = append(b, 1)
		b = appendString(b, string(v))
	}
	return b
}

// readWrites decodes what appendWrites wrote, which must end rest.
func readWrites(rest []byte) (map[string][]byte, bool) {
	count, n := binary.Uvarint(rest)
	if n <= 0 || count > uint64(len(rest)) {
		return nil, false
	}
	rest = rest[n:]
	writes := make(map[string][]byte, count)
	for range count {
		k, r, ok := readField(rest)
		if !ok || len(r) == 0 {
			return nil, false
		}
		del := r[0] == 0
		rest = r[1:]
		if del {
			writes[string(k)] = nil
			continue
		}
		var v []byte
		if v, rest, ok = readField(rest); !ok {
			return nil, false
		}
		writes[string(k)] = append([]byte{}, v...)
	}
	return writes, len(rest) == 0
}

func decodeIntent(blob []byte) (*intent, error) {
	bad := fmt.Errorf("%w: not an intent entry", errCorrupt)
	if len(blob) == 0 || blob[0] != entryIntent {
		return nil, bad
	}
	id, rest, ok := readField(blob[1:])
	if !ok {
		return nil, bad
	}
	primary, n := binary.Uvarint(rest)
	if n <= 0 || len(rest[n:]) < 8 {
		return nil, bad
	}
	rest = rest[n:]
	in := &intent{id: string(id), primary: int(primary), created: time.Unix(0, int64(binary.BigEndian.Uint64(rest))),
		reads: map[string]bool{}}
	rest = rest[8:]
	count, n := binary.Uvarint(rest)
	if n <= 0 || count > uint64(len(rest)) {
		return nil, bad
	}
	rest = rest[n:]
	for range count {
		var k []byte
		if k, rest, ok = readField(rest); !ok {
			return nil, bad
		}
		in.reads[string(k)] = true
	}
	if in.writes, ok = readWrites(rest); !ok {
		return nil, bad
	}
	return in, nil
}

// record is a cross-shard transaction's decision, kept on its primary shard.
type record struct {
	id          string
	status      txnStatus
	created     time.Time
	secondaries []int
}

func encodeRecord(r record) []byte {
	b := []byte{entryRecord}
	b = appendString(b, r.id)
	b = append(b, byte(r.status))
	b = binary.BigEndian.AppendUint64(b, uint64(r.created.UnixNano()))
	b = binary.AppendUvarint(b, uint64(len(r.secondaries)))
	for _, s := range r.secondaries {
		b = binary.AppendUvarint(b, uint64(s))
	}
	return b
}

func decodeRecord(blob []byte) (record, error) {
	bad := fmt.Errorf("%w: not a transaction record", errCorrupt)
	if len(blob) == 0 || blob[0] != entryRecord {
		return record{}, bad
	}
	id, rest, ok := readField(blob[1:])
	if !ok || len(rest) < 9 {
		return record{}, bad
	}
	r := record{id: string(id), status: txnStatus(rest[0]), created: time.Unix(0, int64(binary.BigEndian.Uint64(rest[1:9])))}
	if r.status != committed && r.status != aborted {
		return record{}, bad
	}
	rest = rest[9:]
	count, n := binary.Uvarint(rest)
	if n <= 0 || count > uint64(len(rest)) {
		return record{}, bad
	}
	rest = rest[n:]
	for range count {
		s, n := binary.Uvarint(rest)
		if n <= 0 {
			return record{}, bad
		}
		r.secondaries = append(r.secondaries, int(s))
		rest = rest[n:]
	}
	return r, nil
}

// A shard's entries travel packed into pages: binaryData key "p.<nn>" holds every entry
// whose hash starts in page nn, as (key, entry) pairs. The API server then tracks a
// few fields per ConfigMap whatever the number of entries (its managed-fields work grew
// with every binaryData key), and a commit re-encodes only the pages it changed. In
// memory, a shard is kept unpacked (binaryData holding the entries by key), so only
// reading from and writing to the API server deal with pages. Entries kept one per key,
// as packhost wrote them before, are read as well, and packed by the next commit.
const (
	pagePrefix = "p."
	pages      = 16
	// pageVersion marks a page; a journalled shard (see journal.go) writes
	// journalPageVersion instead, which a packhost that knows no journal cannot decode:
	// it then refuses to read or write the shard rather than ignore its journal.
	pageVersion        byte = 1
	journalPageVersion byte = 2
)

// pageOf is the page key an entry key is packed into, or "" for a key that is not an
// entry's (kept as it is). The page is the second hex digit of the entry's hash (or
// transaction id), so entries spread evenly. It runs for every entry on every commit,
// so it does not allocate.
func pageOf(key string) string {
	if len(key) < 4 || key[1] != '.' {
		return ""
	}
	switch key[0] {
	case valuePrefix[0], waitPrefix[0], intentPrefix[0], recordPrefix[0]:
	default:
		return ""
	}
	if _, ok := unhex(key[2]); !ok {
		return ""
	}
	lo, ok := unhex(key[3])
	if !ok {
		return ""
	}
	return pageNames[int(lo)%pages]
}

var pageNames = func() (names [pages]string) {
	for i := range names {
		names[i] = fmt.Sprintf("%s%02d", pagePrefix, i)
	}
	return names
}()

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func encodePage(version byte, keys []string, entries map[string][]byte) []byte {
	n := 1
	for _, k := range keys {
		n += len(k) + len(entries[k]) + 6
	}
	b := make([]byte, 0, n)
	b = append(b, version)
	for _, k := range keys {
		b = appendString(b, k)
		b = appendString(b, string(entries[k]))
	}
	return b
}

// decodePage adds a page's entries to into, or reports that it is not a page.
func decodePage(page string, blob []byte, into map[string][]byte) bool {
	if len(blob) == 0 || (blob[0] != pageVersion && blob[0] != journalPageVersion) {
		return false
	}
	got := map[string][]byte{}
	for rest := blob[1:]; len(rest) > 0; {
		k, r, ok := readField(rest)
		if !ok {
			return false
		}
		v, r, ok := readField(r)
		if !ok || pageOf(string(k)) != page {
			return false
		}
		got[string(k)] = v
		rest = r
	}
	for k, v := range got {
		into[k] = v
	}
	return true
}

// unpack turns a shard as stored (pages) into the form kept in memory (entries by
// key). A page that does not decode is kept under its own key, so it is reported and
// its entries read as corrupt rather than missing.
func unpack(cm *corev1.ConfigMap) {
	if cm == nil {
		return
	}
	packed := false
	for k := range cm.BinaryData {
		if strings.HasPrefix(k, pagePrefix) {
			packed = true
			break
		}
	}
	if !packed {
		return
	}
	out := make(map[string][]byte, len(cm.BinaryData))
	for k, v := range cm.BinaryData {
		if !strings.HasPrefix(k, pagePrefix) || !decodePage(k, v, out) {
			out[k] = v
		}
	}
	cm.BinaryData = out
}

// pack returns a copy of cm, kept unpacked, as it is stored: entries in pages, other
// keys (foreign ones, pages that did not decode) as they are.
func pack(cm *corev1.ConfigMap) *corev1.ConfigMap {
	out := &corev1.ConfigMap{TypeMeta: cm.TypeMeta, Immutable: cm.Immutable}
	cm.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	// Not sent back: the API server keeps a ConfigMap's managed fields when an update
	// carries none, and need not decode and compare them again.
	out.ManagedFields = nil
	version := pageVersion
	if _, journalled := foldedThrough(cm); journalled {
		version = journalPageVersion
	}
	byPage := map[string][]string{}
	bin := make(map[string][]byte, pages)
	for k, v := range cm.BinaryData {
		page := pageOf(k)
		if page == "" {
			bin[k] = v
			continue
		}
		byPage[page] = append(byPage[page], k)
	}
	for page, keys := range byPage {
		slices.Sort(keys)
		bin[page] = encodePage(version, keys, cm.BinaryData)
	}
	out.BinaryData = bin
	return out
}
