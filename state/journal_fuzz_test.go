package state

import (
	"bytes"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// FuzzJournal: a journal ConfigMap can be edited by anyone allowed to, so its bytes are
// untrusted. Parsing its records and decoding each must never panic; records it reads
// (a journal that does not parse reads as one unreadable record, never as fewer
// records) survive packing and parsing again unchanged, and changes it decodes survive
// encoding and decoding again.
func FuzzJournal(f *testing.F) {
	k, _ := valueKey("p", "k", 1)
	one := encodeChange("c1", map[string][]byte{k: encodeValue("p", "k", []byte("v"))})
	two := encodeChange("c2", map[string][]byte{k: nil})
	f.Add(encodeRecords([]journalRecord{{seq: 1, blob: one}, {seq: 2, blob: two}}))
	f.Add(encodeRecords([]journalRecord{{seq: 7, blob: []byte("garbage")}}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0})
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add(one)
	f.Fuzz(func(t *testing.T, data []byte) {
		j := &corev1.ConfigMap{BinaryData: map[string][]byte{journalData: data}}
		records := journalRecords(j)
		for _, r := range records {
			if r.seq == unreadable {
				continue
			}
			id, writes, err := decodeChange(r.blob)
			if err != nil {
				continue
			}
			id2, writes2, err := decodeChange(encodeChange(id, writes))
			if err != nil || id2 != id || len(writes2) != len(writes) {
				t.Fatalf("record %d decoded as %q %v, which round-trips as %q %v, %v", r.seq, id, writes, id2, writes2, err)
			}
			for k, v := range writes {
				if w, ok := writes2[k]; !ok || (v == nil) != (w == nil) || !bytes.Equal(v, w) {
					t.Fatalf("record %d: write %q is %q, round-trips as %q", r.seq, k, v, w)
				}
			}
		}
		if len(records) > 0 && records[len(records)-1].seq == unreadable {
			return
		}
		again := journalRecords(&corev1.ConfigMap{BinaryData: map[string][]byte{journalData: encodeRecords(records)}})
		if len(again) != len(records) {
			t.Fatalf("%d records pack and parse again as %d", len(records), len(again))
		}
		for i := range again {
			if again[i].seq != records[i].seq || !bytes.Equal(again[i].blob, records[i].blob) {
				t.Fatalf("record %d: %d %q round-trips as %d %q", i, records[i].seq, records[i].blob, again[i].seq, again[i].blob)
			}
		}
	})
}
